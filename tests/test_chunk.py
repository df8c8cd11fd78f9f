"""Windows: at most 30 s, tiling the file, cut in the VAD's pauses, none dropped unless confidently silent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import FIXTURES
from steadyscribe import SAMPLE_RATE
from steadyscribe.records import InputFile
from steadyscribe.tasks import chunk
from steadyscribe.tasks.chunk import plan_windows, skipped_seconds
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.vad import FRAME_S


@pytest.fixture
def speech_at(monkeypatch):
    """Make the VAD report speech (probability 0.9) exactly over the given spans, to test the cutting alone."""

    def install(spans: list[tuple[float, float]]):
        def probabilities(samples):
            times = (np.arange(-(-len(samples) // 512)) + 0.5) * FRAME_S
            return np.where(np.any([(times >= s) & (times < e) for s, e in spans], axis=0), 0.9, 0.0)

        monkeypatch.setattr(chunk, "speech_probabilities", probabilities)

    return install


def audible(duration: float) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.1, int(duration * SAMPLE_RATE)).astype(np.float32)


def test_a_short_file_is_one_window(speech_at):
    speech_at([(1.0, 5.0)])
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
    assert windows[0].end == pytest.approx(27.25, abs=FRAME_S)  # the 0.5 s pause, not the 2 s one at 12 s


def test_a_window_does_not_open_with_the_rest_of_a_long_pause(speech_at):
    # Speech until 26 s, a 10 s pause that runs past the first window's 30 s, speech from 36 s.
    # Cut at 29.7 s, the next window would open with 6 s of pause: Whisper starts a window's text
    # in its first second, and base at beam 5 then left the sentence at 36 s out. The pause is a
    # window of its own instead, decoded all the same (the VAD calls whispered speech silent).
    speech = [(s, s + 2.0) for s in np.arange(0.0, 25.0, 2.2)] + [(s, s + 2.0) for s in np.arange(36.0, 58.0, 2.2)]
    speech_at(speech)
    windows = plan_windows(audible(60.0), "f")
    assert [bound for w in windows[:2] for bound in (w.start, w.end)] == pytest.approx([0.0, 29.7, 29.7, 35.7], abs=FRAME_S)
    assert windows[2].start == pytest.approx(36.0 - chunk.CUT_LEAD_S, abs=FRAME_S) and windows[-1].end == 60.0
    assert skipped_seconds(60.0, windows) == 0.0


def test_a_long_pause_that_may_hold_speech_stays_with_the_speech_after_it(monkeypatch):
    # Doubtful frames (0.3: not speech, not surely silent) in the pause: no short window of its own.
    def probabilities(samples):
        times = (np.arange(-(-len(samples) // 512)) + 0.5) * FRAME_S
        return np.where((times < 25.0) | (times >= 36.0), 0.9, 0.3)

    monkeypatch.setattr(chunk, "speech_probabilities", probabilities)
    windows = plan_windows(audible(59.0), "f")
    assert [bound for w in windows for bound in (w.start, w.end)] == pytest.approx([0.0, 29.7, 29.7, 59.0], abs=FRAME_S)


def test_a_file_that_opens_with_a_pause_keeps_it_in_its_first_window(speech_at):
    # As every peer's first window does: only pauses left by our own cuts are split off.
    speech_at([(3.0, 20.0)])
    assert [(w.start, w.end) for w in plan_windows(audible(20.0), "f")] == [(0.0, 20.0)]


def test_without_real_pauses_the_longest_short_gap_is_used(speech_at):
    speech_at([(0.0, 15.0), (15.2, 25.0), (25.1, 40.0)])
    windows = plan_windows(audible(40.0), "f")
    assert windows[0].end == pytest.approx(15.1, abs=FRAME_S)


def test_continuous_speech_is_cut_at_its_quietest_stretch_near_the_end(speech_at):
    speech_at([(0.0, 65.0)])
    samples = audible(65.0)
    for dip_s in (24.0, 50.0):  # a breath between words, quieter than the speech around it
        samples[int(dip_s * SAMPLE_RATE) : int((dip_s + 0.1) * SAMPLE_RATE)] *= 0.05
    windows = plan_windows(samples, "f")
    assert [w.end for w in windows[:-1]] == pytest.approx([24.05, 50.05], abs=2 * FRAME_S)
    assert windows[-1].end == 65.0 and [w.index for w in windows] == [0, 1, 2]


def test_the_profile_sets_the_shortest_pause_to_cut_in(speech_at):
    speech_at([(0.0, 15.0), (15.6, 27.0), (27.4, 40.0)])
    assert plan_windows(audible(40.0), "f")[0].end == pytest.approx(27.2, abs=FRAME_S)
    assert plan_windows(audible(40.0), "f", min_pause_s=0.5)[0].end == pytest.approx(15.3, abs=FRAME_S)


def test_only_confidently_silent_windows_are_dropped(speech_at):
    speech_at([(41.0, 41.3)])  # one short word in the second window
    windows = plan_windows(audible(70.0), "f")
    assert len(windows) == 1 and windows[0].start < 41.0 and 41.3 < windows[0].end
    assert skipped_seconds(70.0, windows) == pytest.approx(70.0 - (windows[0].end - windows[0].start))


def test_a_window_of_doubtful_speech_is_kept(monkeypatch):
    # Probabilities between silence_threshold and threshold: not speech, but not surely silent either.
    monkeypatch.setattr(chunk, "speech_probabilities", lambda samples: np.full(-(-len(samples) // 512), 0.3))
    assert len(plan_windows(audible(10.0), "f")) == 1


def test_silence_and_steady_noise_are_skipped_by_the_real_model():
    assert plan_windows(np.zeros(10 * SAMPLE_RATE, dtype=np.float32), "f") == []
    assert plan_windows(audible(10.0), "f") == []  # white noise


def test_real_speech_is_never_cut_inside_a_word(tmp_path):
    truth = json.loads((FIXTURES / "straddle_40s.json").read_text())
    decoded = decode_input(InputFile(str(FIXTURES / "straddle_40s.flac")), tmp_path)
    windows = plan_windows(load_pcm(decoded.pcm_path), decoded.file_id)
    assert len(windows) == 2 and windows[0].end <= 30.0
    cut = windows[0].end
    assert not any(w["start"] < cut < w["end"] for w in truth["words"])
