"""Windows: at most 30 s, tiling the file, cut in pauses, none over pure silence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES
from steadyscribe import SAMPLE_RATE
from steadyscribe.records import InputFile
from steadyscribe.tasks import chunk
from steadyscribe.tasks.chunk import HOP_S, plan_windows
from steadyscribe.tasks.decode import decode_input, load_pcm


@pytest.fixture
def speech_at(monkeypatch):
    """Make the speech detector report exactly the given spans, to test the cutting alone."""

    def install(spans: list[tuple[float, float]]):
        def mask(loudness, hop_s):
            times = np.arange(len(loudness)) * HOP_S
            return np.any([(times >= s) & (times < e) for s, e in spans], axis=0)

        monkeypatch.setattr(chunk, "mask_from_loudness", mask)

    return install


def audible(duration: float) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.1, int(duration * SAMPLE_RATE)).astype(np.float32)


def test_a_short_file_is_one_window():
    assert [(w.start, w.end) for w in plan_windows(audible(6.0), "f")] == [(0.0, 6.0)]


def test_long_audio_is_cut_in_a_pause_of_each_window_tail(speech_at):
    # Utterances with gaps too short to cut in, and one long pause at 22–24 s.
    spans = [(s, s + 2.0) for s in np.arange(0.0, 22.0, 2.2)] + [(s, s + 2.0) for s in np.arange(24.0, 70.0, 2.2)]
    speech_at(spans)
    windows = plan_windows(audible(70.0), "f")
    assert all(w.end - w.start <= 30.0 + 1e-9 for w in windows)
    assert windows[0].start == 0.0 and windows[-1].end == 70.0
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert 23.5 <= windows[0].end < 24.0  # near the speech after the pause
    for w in windows[:-1]:
        assert not any(start < w.end < end for start, end in spans)


def test_the_latest_real_pause_wins_over_a_longer_earlier_one(speech_at):
    # Every window is a full encoder pass: ending late in the 30 s keeps windows few.
    speech_at([(0.0, 12.0), (14.0, 27.0), (27.5, 29.8), (30.0, 50.0)])
    windows = plan_windows(audible(50.0), "f")
    assert windows[0].end == pytest.approx(27.25, abs=HOP_S)  # the 0.5 s pause, not the 2 s one at 12 s


def test_without_real_pauses_the_longest_short_gap_is_used(speech_at):
    speech_at([(0.0, 15.0), (15.2, 25.0), (25.1, 40.0)])
    windows = plan_windows(audible(40.0), "f")
    assert windows[0].end == pytest.approx(15.1, abs=HOP_S)


def test_continuous_speech_is_cut_at_its_quietest_stretch_near_the_end(speech_at):
    speech_at([(0.0, 65.0)])
    samples = audible(65.0)
    for dip_s in (24.0, 50.0):  # a breath between words, quieter than the speech around it
        samples[int(dip_s * SAMPLE_RATE) : int((dip_s + 0.1) * SAMPLE_RATE)] *= 0.05
    windows = plan_windows(samples, "f")
    assert [w.end for w in windows[:-1]] == pytest.approx([24.05, 50.05], abs=2 * HOP_S)
    assert windows[-1].end == 65.0 and [w.index for w in windows] == [0, 1, 2]


def test_the_profile_sets_the_shortest_pause_to_cut_in(speech_at):
    speech_at([(0.0, 15.0), (15.6, 27.0), (27.4, 40.0)])
    assert plan_windows(audible(40.0), "f")[0].end == pytest.approx(27.2, abs=HOP_S)
    assert plan_windows(audible(40.0), "f", min_pause_s=0.5)[0].end == pytest.approx(15.3, abs=HOP_S)


def test_only_silent_windows_are_dropped():
    assert plan_windows(np.zeros(10 * SAMPLE_RATE, dtype=np.float32), "f") == []
    # A steady hum is no speech by loudness, but it is decoded: nothing audible is thrown away.
    hum = 0.3 * np.sin(2 * np.pi * 220 * np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    assert len(plan_windows(hum, "f")) == 1


def test_real_speech_is_never_cut_inside_a_word(tmp_path):
    truth = json.loads((FIXTURES / "straddle_40s.json").read_text())
    decoded = decode_input(InputFile(str(FIXTURES / "straddle_40s.flac")), tmp_path)
    windows = plan_windows(load_pcm(decoded.pcm_path), decoded.file_id)
    assert len(windows) == 2 and windows[0].end <= 30.0
    cut = windows[0].end
    assert not any(w["start"] < cut < w["end"] for w in truth["words"])
