"""Stabilization rules on hand-made transcripts over synthetic audio, and the targets on the fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steadyscribe.records import Segment, Transcript, Window, Word
from steadyscribe.tasks.stabilize import StabilizeOptions, stabilize

SR = 16000


def _voice(duration_s: float, seed: int) -> np.ndarray:
    """A word-like sound: a buzz with formant-band harmonics and a syllable-rate envelope."""
    t = np.arange(round(duration_s * SR)) / SR
    f0 = 120 + 10 * seed
    buzz = sum(np.sin(2 * np.pi * f0 * k * t + k) / (1 + abs(k * f0 - 800) / 400) for k in range(1, 25))
    envelope = 0.5 + 0.5 * np.abs(np.sin(np.pi * 3 * t / duration_s))
    ramp = np.minimum(1.0, np.minimum(t, duration_s - t) / 0.01)  # no clicks at the edges
    return (buzz * envelope * ramp).astype(np.float32)


def _audio(spans: list[tuple[float, float]], duration_s: float, noise: float = 0.0) -> np.ndarray:
    """Words at known spans (seconds) over digital silence, or over white noise of RMS `noise`."""
    audio = np.random.default_rng(0).normal(0, noise, round(duration_s * SR)).astype(np.float32)
    for i, (start, end) in enumerate(spans):
        sound = _voice(end - start, i)
        audio[round(start * SR) : round(start * SR) + len(sound)] += 0.3 * sound / np.abs(sound).max()
    return audio


def _transcript(*segments: list[tuple[str, float, float]], no_speech_prob: float = 0.1) -> Transcript:
    built = []
    for words in segments:
        word_records = [Word(text, start, end, 0.9) for text, start, end in words]
        built.append(
            Segment(
                start=word_records[0].start,
                end=word_records[-1].end,
                text=" ".join(w.word for w in word_records),
                words=word_records,
                no_speech_prob=no_speech_prob,
            )
        )
    return Transcript("file", "en", built)


def _times(transcript: Transcript) -> list[tuple[str, float, float]]:
    return [(w.word, round(w.start, 2), round(w.end, 2)) for w in transcript.words]


SPANS = [(1.0, 1.4), (1.5, 2.0), (2.1, 2.4)]  # three words, 100 ms pauses between them


def test_edges_in_silence_move_onto_the_speech():
    audio = _audio(SPANS, 4.0)
    # The engine lets the first word start 0.4 s early and the last end 0.5 s late.
    raw = _transcript([("one", 0.6, 1.45), ("two", 1.45, 2.05), ("three", 2.05, 2.9)])
    result = stabilize(raw, audio)
    for (word, start, end), (true_start, true_end) in zip(_times(result), SPANS):
        assert start == pytest.approx(true_start, abs=0.03), word
        assert end == pytest.approx(true_end, abs=0.03), word
    segment = result.segments[0]
    assert (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)
    assert result.stabilization["words_moved"] == 3


def test_late_boundaries_snap_into_the_pause_between_words():
    audio = _audio(SPANS, 4.0)
    # Boundaries 150 ms late: each lands inside the next word's speech.
    raw = _transcript([("one", 1.15, 1.6), ("two", 1.6, 2.2), ("three", 2.2, 2.55)])
    result = stabilize(raw, audio)
    for (word, start, end), (true_start, true_end) in zip(_times(result), SPANS):
        assert start == pytest.approx(true_start, abs=0.03), word
        assert end == pytest.approx(true_end, abs=0.03), word


def test_words_in_noise_are_placed_on_their_speech():
    audio = _audio(SPANS, 4.0, noise=0.01)
    raw = _transcript([("one", 0.8, 1.55), ("two", 1.55, 2.15), ("three", 2.15, 2.7)])
    result = stabilize(raw, audio)
    for (word, start, end), (true_start, true_end) in zip(_times(result), SPANS):
        assert abs(start - true_start) <= 0.05 and abs(end - true_end) <= 0.05, word


def test_times_stay_ordered_with_a_minimum_duration():
    audio = _audio(SPANS, 4.0)
    # Stacked and overlapping engine times, as Whisper produces for words it is unsure of.
    raw = _transcript([("one", 1.1, 1.1), ("two", 1.05, 1.1), ("three", 1.1, 1.1), ("four", 2.3, 2.3)])
    options = StabilizeOptions()
    result = stabilize(raw, audio, options)
    words = result.words
    assert len(words) == 4
    for word in words:
        assert word.end - word.start >= options.min_word_s - 1e-9
    for before, after in zip(words, words[1:]):
        assert after.start >= before.end


def test_hallucinated_segment_over_noise_is_dropped_and_speech_is_kept():
    audio = _audio(SPANS, 8.0, noise=0.005)
    raw = _transcript(
        [("one", 1.0, 1.4), ("two", 1.5, 2.0), ("three", 2.1, 2.4)],
        [("Thank", 5.0, 5.3), ("you.", 5.3, 5.8)],  # invented over the noise after the speech
        no_speech_prob=0.7,
    )
    result = stabilize(raw, audio)
    assert [w.word for w in result.words] == ["one", "two", "three"]
    assert result.stabilization["words_dropped"] == 2
    assert result.stabilization["segments_dropped"] == 1


def test_noise_only_audio_keeps_no_words():
    audio = np.random.default_rng(1).normal(0, 0.02, 10 * SR).astype(np.float32)
    raw = _transcript([("Thank", 2.0, 2.4), ("you.", 2.4, 3.0)], no_speech_prob=0.3)
    assert stabilize(raw, audio).words == []


def test_unsure_word_over_speech_is_never_dropped():
    audio = _audio(SPANS, 4.0)
    raw = _transcript([("one", 1.0, 1.4), ("two", 1.5, 2.0), ("three", 2.1, 2.4)], no_speech_prob=0.95)
    for word in raw.words:
        word.probability = 0.01
    assert [w.word for w in stabilize(raw, audio).words] == ["one", "two", "three"]


def test_words_never_leave_their_window():
    audio = _audio([(1.0, 1.4), (1.9, 2.4)], 4.0)
    windows = [Window("file", 0, 0.0, 2.0), Window("file", 1, 2.0, 4.0)]
    # The second word was decoded in the window that starts at 2.0 s; its speech starts at 1.9 s.
    raw = _transcript([("one", 1.1, 1.6)], [("two", 2.0, 2.6)])
    result = stabilize(raw, audio, windows=windows)
    one, two = result.words
    assert one.end <= 2.0
    assert 2.0 <= two.start < two.end <= 4.0
    assert two.end == pytest.approx(2.4, abs=0.03)


def test_segments_split_at_long_pauses():
    audio = _audio([(1.0, 1.4), (1.5, 1.9), (4.0, 4.4), (4.5, 4.9)], 6.0)
    raw = _transcript([("a", 1.0, 1.4), ("b", 1.5, 2.0), ("c", 3.9, 4.4), ("d", 4.5, 4.9)])
    result = stabilize(raw, audio, StabilizeOptions(split_pause_s=1.0))
    assert [s.text for s in result.segments] == ["a b", "c d"]
    assert result.stabilization["segments_split"] == 1
    for segment in result.segments:
        assert (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)


def test_input_is_not_modified_and_disabled_changes_nothing():
    audio = _audio(SPANS, 4.0)
    raw = _transcript([("one", 0.6, 1.45), ("two", 1.45, 2.05), ("three", 2.05, 2.9)])
    before = _times(raw)
    stabilize(raw, audio)
    assert _times(raw) == before
    untouched = stabilize(raw, audio, StabilizeOptions(enabled=False))
    assert _times(untouched) == before and untouched.stabilization == {}


# --- The acceptance targets, through the project's real decode, chunk and engine path -------------

FIXTURE_NAMES = ["clean_us_slow", "clean_gb", "fast_speaker", "noisy", "long_pauses", "straddle_40s", "no_speech"]


@pytest.fixture(scope="module")
def fixture_runs(fixtures_dir, tmp_path_factory):
    """Per fixture: (truth, raw transcript, stabilized transcript), with tiny.en through the batch-1 engine."""
    from steadyscribe.engines import load_engine
    from steadyscribe.records import InputFile, Plan
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.tasks.decode import decode_input, load_pcm
    from steadyscribe.tasks.infer import transcribe_files

    work_dir = tmp_path_factory.mktemp("stabilize")
    decoded = {}
    for name in FIXTURE_NAMES:
        item = decode_input(InputFile(str(fixtures_dir / f"{name}.flac")), work_dir)
        assert item.status == "ok", item.error
        decoded[name] = item
    windows = {name: plan_windows(load_pcm(item.pcm_path), item.file_id) for name, item in decoded.items()}
    engine = load_engine(Plan(engine="whisper", model="tiny.en", threads=2))
    results = transcribe_files(
        engine, {item.file_id: item for item in decoded.values()}, [w for ws in windows.values() for w in ws], work_dir
    )
    runs = {}
    for name, item in decoded.items():
        truth = json.loads((fixtures_dir / f"{name}.json").read_text())
        raw = Transcript.load(results[item.file_id].transcript_path)
        runs[name] = (truth, raw, stabilize(raw, load_pcm(item.pcm_path), windows=windows[name]))
    return runs


@pytest.mark.slow
def test_stabilized_word_times_meet_the_targets(fixture_runs):
    from steadyscribe.metrics import boundary_errors

    within = reference_count = 0
    errors = []
    for name, (truth, raw, stabilized) in fixture_runs.items():
        if not truth["words"]:
            continue
        before = boundary_errors(truth["words"], raw.words)
        after = boundary_errors(truth["words"], stabilized.words)
        print(
            f"{name}: within 200 ms {before.within_tolerance_rate:.3f} -> {after.within_tolerance_rate:.3f}, "
            f"mean error {before.mean_abs_error * 1000:.0f} -> {after.mean_abs_error * 1000:.0f} ms"
        )
        assert after.within_tolerance_rate >= before.within_tolerance_rate, name
        assert after.mean_abs_error <= 0.08, name
        within += round(after.within_tolerance_rate * after.reference_count)
        reference_count += after.reference_count
        errors.append(np.abs(after.errors).ravel())
    assert within / reference_count >= 0.85
    assert np.mean(np.concatenate(errors)) <= 0.08


@pytest.mark.slow
def test_stabilization_does_not_worsen_wer(fixture_runs):
    from steadyscribe.metrics import word_error_rate

    for name, (truth, raw, stabilized) in fixture_runs.items():
        if truth["words"]:
            raw_text = " ".join(w.word for w in raw.words)
            stabilized_text = " ".join(w.word for w in stabilized.words)
            assert word_error_rate(truth["text"], stabilized_text) <= word_error_rate(truth["text"], raw_text), name


@pytest.mark.slow
def test_no_speech_fixture_yields_no_words(fixture_runs):
    _, _, stabilized = fixture_runs["no_speech"]
    assert stabilized.words == []
