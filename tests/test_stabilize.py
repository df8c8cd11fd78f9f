"""Stabilization rules on hand-made transcripts and given VAD probabilities, and the targets on the fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steadyscribe.records import Segment, StabilizationCounts, Transcript, Window, Word
from steadyscribe.tasks.stabilize import StabilizeOptions, stabilize

SR = 16000


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
LAG = StabilizeOptions().dtw_lag_s
FRAME = 512 / SR


def _vad(spans: list[tuple[float, float]], duration_s: float, inside: float = 0.9, outside: float = 0.01) -> np.ndarray:
    """VAD frame probabilities: `inside` over the spans, `outside` elsewhere (tests the rules alone)."""
    centres = (np.arange(int(np.ceil(duration_s / FRAME))) + 0.5) * FRAME
    return np.where([any(a <= t < b for a, b in spans) for t in centres], inside, outside).astype(np.float32)


def _run(raw: Transcript, spans, duration_s: float, options: StabilizeOptions | None = None, **kwargs) -> Transcript:
    probs = kwargs.pop("probabilities", None)
    return stabilize(raw, np.zeros(int(duration_s * SR), np.float32), options,
                     probabilities=_vad(spans, duration_s) if probs is None else probs, **kwargs)


def test_the_steady_dtw_lag_is_taken_out():
    # Continuous speech: no pause to snap to, so only the lag moves the words.
    raw = _transcript([(w, s + LAG, e + LAG) for w, (s, e) in zip(("one", "two", "three"), SPANS)])
    result = _run(raw, [(0.5, 3.0)], 4.0)
    assert _times(result) == [("one", 1.0, 1.4), ("two", 1.5, 2.0), ("three", 2.1, 2.4)]


def test_edges_in_pauses_move_onto_the_speech():
    # The engine lets the first word start 0.4 s early and the last end 0.5 s late, into silence.
    raw = _transcript([("one", 0.6 + LAG, 1.4 + LAG), ("two", 1.5 + LAG, 2.0 + LAG), ("three", 2.1 + LAG, 2.9 + LAG)])
    result = _run(raw, [(1.0, 2.4)], 4.0)
    one, _, three = result.words
    lead = StabilizeOptions().onset_lead_s
    assert one.start == pytest.approx(1.0 - lead, abs=FRAME)
    assert three.end == pytest.approx(2.4, abs=FRAME)


def test_a_pause_inside_a_word_leaves_it_its_larger_side():
    # "two" runs over a 0.5 s pause; most of it lies after the pause: the part before was the pause.
    raw = _transcript([("one", 1.0 + LAG, 1.4 + LAG), ("two", 1.45 + LAG, 2.6 + LAG)])
    result = _run(raw, [(1.0, 1.45), (1.95, 2.6)], 4.0)
    assert result.words[1].start == pytest.approx(1.95 - StabilizeOptions().onset_lead_s, abs=FRAME)
    assert result.words[1].end == pytest.approx(2.6, abs=FRAME)


def test_a_word_collapsed_after_a_pause_gets_the_speech_from_the_onset():
    # DTW squeezed "and", the first word after a 1.3 s pause, into an instant 0.5 s after the
    # speech resumed (measured on the stereo call fixture's customer channel).
    words = [("one", 1.0, 1.3), ("two", 1.3, 1.6), ("and", 3.4, 3.4), ("here", 3.4, 3.7), ("is", 3.7, 3.9)]
    raw = _transcript([(w, s + LAG, e + LAG) for w, s, e in words])
    result = _run(raw, [(0.9, 1.6), (2.9, 3.9)], 5.0)
    one, two, squeezed, here, _ = result.words
    lead = StabilizeOptions().onset_lead_s
    median = 0.3  # the window's uncollapsed words
    assert squeezed.start == pytest.approx(max(2.9 - lead, squeezed.end - 2 * median), abs=FRAME)
    assert squeezed.end <= here.start
    # A collapsed word inside speech, with no pause before it, keeps its place.
    assert two.start == pytest.approx(1.3, abs=FRAME)


def test_a_word_stretched_over_a_filler_at_a_sentence_boundary_is_cut_on_that_side():
    # Whisper writes no "uh": DTW gives its time to "one." before it and to "So" after it
    # (measured on the stereo call fixture's customer channel, speech without pauses).
    words = [("the", 1.0, 1.3), ("original", 1.3, 1.6), ("one.", 1.6, 2.5), ("So", 2.5, 3.4), ("this", 3.4, 3.7),
             ("is", 3.7, 4.0), ("slow", 4.0, 4.9)]
    raw = _transcript([(w, s + LAG, e + LAG) for w, s, e in words])
    _, _, one, so, _, _, slow = _run(raw, [(0.9, 5.0)], 5.0).words
    longest = 2 * 0.3  # twice the window's median word length
    assert (one.start, one.end) == pytest.approx((1.6, 1.6 + longest), abs=FRAME)
    assert (so.start, so.end) == pytest.approx((3.4 - longest, 3.4), abs=FRAME)
    # A long word inside a sentence keeps its time: it may be drawn out, or hold a filler on either side.
    assert (slow.start, slow.end) == pytest.approx((4.0, 4.9), abs=FRAME)


def test_times_stay_ordered_inside_the_window_with_a_minimum_duration():
    raw = _transcript([("a", 1.0, 1.0), ("b", 1.0, 1.0), ("c", 0.9, 1.2), ("d", 3.95, 4.3)])
    options = StabilizeOptions()
    result = _run(raw, [(0.9, 4.0)], 4.0, options)
    for before, after in zip(result.words, result.words[1:]):
        assert after.start >= before.end - 1e-9
    assert all(w.end - w.start >= options.min_word_s - 1e-9 and w.end <= 4.0 for w in result.words)


def test_words_stacked_on_the_window_end_keep_a_duration_inside_it():
    # Engines sometimes put the last words of a window on its very end, one on top of another.
    raw = _transcript([("a", 3.2, 3.6), ("b", 4.1, 4.1), ("c", 4.1, 4.1), ("d", 4.1, 4.1)])
    result = _run(raw, [(3.0, 4.0)], 4.0, windows=[Window("file", 0, 0.0, 4.0)])
    assert [w.word for w in result.words] == ["a", "b", "c", "d"]
    for before, after in zip(result.words, result.words[1:]):
        assert after.start >= before.end - 1e-9
    assert all(0.0 <= w.start < w.end <= 4.0 for w in result.words)


SPEECH_WORDS = [(f"w{i}", 0.5 + 0.4 * i, 0.8 + 0.4 * i) for i in range(20)]  # speech from 0.5 to 8.4 s
SPEECH_SPANS = [(0.45, 8.45)]


def test_a_hallucination_is_dropped_when_the_vad_and_the_model_agree():
    # Invented over silence after the speech, in a segment the model itself doubts.
    raw = _transcript(SPEECH_WORDS)
    raw.segments.append(_transcript([("Thank", 10.0, 10.3), ("you.", 10.3, 10.8)], no_speech_prob=0.7).segments[0])
    result = _run(raw, SPEECH_SPANS, 12.0)
    assert [w.word for w in result.words] == [w for w, _, _ in SPEECH_WORDS]
    assert result.stabilization.words_dropped == 2 and result.stabilization.segments_dropped == 1
    assert result.warnings == []


@pytest.mark.parametrize(
    "no_speech_prob, probability, vad_outside",
    [
        (0.1, 0.9, 0.01),  # the VAD hears nothing, but the model is sure: kept (whispered speech)
        (0.7, 0.9, 0.3),  # the model doubts, but the VAD is not sure there is no speech: kept
    ],
)
def test_one_signal_alone_never_drops_a_word(no_speech_prob, probability, vad_outside):
    raw = _transcript(SPEECH_WORDS)
    extra = _transcript([("Thank", 10.0, 10.3), ("you.", 10.3, 10.8)], no_speech_prob=no_speech_prob).segments[0]
    for word in extra.words:
        word.probability = probability
    raw.segments.append(extra)
    probs = _vad(SPEECH_SPANS, 12.0, outside=vad_outside)
    result = _run(raw, SPEECH_SPANS, 12.0, probabilities=probs)
    assert len(result.words) == 22 and result.stabilization.words_dropped == 0


def test_unsure_words_over_speech_are_never_dropped():
    raw = _transcript([("one", 1.0, 1.4), ("two", 1.5, 2.0), ("three", 2.1, 2.4)], no_speech_prob=0.95)
    for word in raw.words:
        word.probability = 0.01
    assert [w.word for w in _run(raw, SPANS, 4.0).words] == ["one", "two", "three"]


def test_the_filter_is_overruled_when_it_would_empty_much_of_a_file():
    # The VAD hears none of these words (say, whispered): it is the detector that is wrong.
    raw = _transcript([("one", 1.0, 1.4), ("two", 1.5, 2.0), ("three", 2.1, 2.4)], no_speech_prob=0.7)
    result = _run(raw, [], 4.0)
    assert [w.word for w in result.words] == ["one", "two", "three"]
    assert result.stabilization.words_dropped == 0
    assert len(result.warnings) == 1 and "kept 3 of 3 words" in result.warnings[0]


def test_a_segment_whose_words_the_alignment_stacked_on_one_instant_is_dropped():
    # Base at beam 5 went on past a real recording's last sentence and said it twice more; the
    # alignment found no audio for those words and stacked them on the window's end, over speech
    # the VAD heard (so the VAD filter alone would keep them).
    said = [("The", 0.5, 0.7), ("girl", 0.7, 1.0), ("sold", 1.0, 1.3), ("bonds.", 1.3, 1.8)]
    repeated = [("The", 1.8, 3.6)] + [(w, 3.64, 3.64) for w in ("girl", "sold", "bonds.", "The", "girl", "sold", "bonds.")]
    raw = _transcript(said, repeated)
    result = _run(raw, [(0.4, 3.7)], 3.7)
    assert [w.word for w in result.words] == ["The", "girl", "sold", "bonds."]
    assert result.stabilization.words_dropped == 8 and result.stabilization.segments_dropped == 1
    # Two stacked words of a real segment are DTW squeezing fast speech, not text without audio.
    squeezed = [("but", 0.5, 0.8), ("you", 0.8, 0.8), ("see", 0.8, 0.8), ("it", 0.8, 1.1), ("works", 1.1, 1.6)]
    assert len(_run(_transcript(squeezed), [(0.4, 1.7)], 2.0).words) == 5


def test_words_never_leave_their_window():
    windows = [Window("file", 0, 0.0, 2.0), Window("file", 1, 2.0, 4.0)]
    # The second word was decoded in the window that starts at 2.0 s; its speech starts at 1.9 s.
    raw = _transcript([("one", 1.1, 1.6)], [("two", 2.0, 2.6)])
    result = _run(raw, [(1.0, 1.4), (1.9, 2.4)], 4.0, windows=windows)
    one, two = result.words
    assert one.end <= 2.0
    assert 2.0 <= two.start < two.end <= 4.0
    assert two.end == pytest.approx(2.4, abs=FRAME)


def test_segments_split_at_long_pauses():
    raw = _transcript([("a", 1.0, 1.4), ("b", 1.5, 2.0), ("c", 3.9, 4.4), ("d", 4.5, 4.9)])
    result = _run(raw, [(1.0, 1.9), (4.0, 4.9)], 6.0, StabilizeOptions(split_pause_s=1.0))
    assert [s.text for s in result.segments] == ["a b", "c d"]
    assert result.stabilization.segments_split == 1
    for segment in result.segments:
        assert (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)


def test_input_is_not_modified_and_disabled_changes_nothing():
    raw = _transcript([("one", 0.6, 1.45), ("two", 1.45, 2.05), ("three", 2.05, 2.9)])
    before = _times(raw)
    _run(raw, SPANS, 4.0)
    assert _times(raw) == before
    untouched = _run(raw, SPANS, 4.0, StabilizeOptions(enabled=False))
    assert _times(untouched) == before and untouched.stabilization == StabilizationCounts()


# --- The acceptance targets, through the project's real decode, chunk and engine path -------------

FIXTURE_NAMES = ["clean_us_slow", "clean_gb", "fast_speaker", "noisy", "long_pauses", "straddle_40s", "no_speech"]


@pytest.fixture(scope="module")
def fixture_runs(fixtures_dir, tmp_path_factory):
    """Per fixture: (truth, raw transcript, stabilized transcript), with tiny.en through the batch-1 engine."""
    from steadyscribe.engines import load_engine
    from steadyscribe.records import InputFile, Plan
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input
    from steadyscribe.inference import transcribe_files

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
