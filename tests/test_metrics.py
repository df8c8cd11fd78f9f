"""Metric math on hand-made examples, and consistency of the committed fixtures with their truth."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from steadyscribe.metrics import (
    align_words,
    boundary_errors,
    corpus_wer,
    normalize_text,
    word_error_rate,
)

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def timed(*items: tuple[str, float, float]) -> list[dict]:
    return [{"word": w, "start": s, "end": e} for w, s, e in items]


@dataclass
class WordObject:
    word: str
    start: float
    end: float


# --- normalization and WER ---------------------------------------------------


def test_normalize_text_ignores_case_punctuation_and_spelling():
    assert normalize_text("Hello, World!") == "hello world"
    assert normalize_text("The colour grey.") == normalize_text("the color gray")


def test_wer_exact_match_is_zero():
    assert word_error_rate("The cat sat on the mat.", "the cat sat on the mat") == 0.0


def test_wer_counts_one_substitution():
    assert word_error_rate("the cat sat on the mat", "the dog sat on the mat") == pytest.approx(1 / 6)


def test_wer_counts_deletions():
    assert word_error_rate("the cat sat on the mat", "the cat on mat") == pytest.approx(2 / 6)


def test_wer_counts_insertions_and_can_exceed_one():
    assert word_error_rate("yes", "yes yes yes") == pytest.approx(2.0)


def test_wer_mixed_edits():
    # one substitution (b->x), one deletion (d), one insertion (z) over 5 reference words
    assert word_error_rate("a b c d e", "a x c e z") == pytest.approx(3 / 5)


def test_wer_empty_reference():
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "thank you") == math.inf


def test_wer_all_deleted_is_one():
    assert word_error_rate("one two three", "") == 1.0


def test_corpus_wer_weights_by_reference_length():
    # 1 edit of 1 word and 0 edits of 9 words: 1/10, not the mean of per-pair rates (0.5)
    pairs = [("hello", "goodbye"), ("a b c d e f g h i", "a b c d e f g h i")]
    assert corpus_wer(pairs) == pytest.approx(0.1)


# --- word alignment ----------------------------------------------------------


def test_align_words_exact():
    words = timed(("the", 0, 1), ("cat", 1, 2), ("sat", 2, 3))
    assert align_words(words, words) == [(0, 0), (1, 1), (2, 2)]


def test_align_words_skips_substitution_deletion_and_insertion():
    reference = timed(("the", 0, 1), ("cat", 1, 2), ("sat", 2, 3), ("down", 3, 4))
    hypothesis = timed(("the", 0, 1), ("dog", 1, 2), ("down", 3, 4), ("again", 4, 5))
    # cat->dog substituted, sat deleted, again inserted
    assert align_words(reference, hypothesis) == [(0, 0), (3, 2)]


def test_align_words_normalizes_each_word():
    reference = timed(("Hello,", 0, 1), ("WORLD", 1, 2))
    hypothesis = [WordObject(" hello", 0, 1), WordObject("world.", 1, 2)]
    assert align_words(reference, hypothesis) == [(0, 0), (1, 1)]


def test_align_words_drops_words_that_normalize_to_nothing():
    reference = timed(("go", 0, 1), ("home", 1, 2))
    hypothesis = timed(("go", 0, 1), ("um", 1, 1.2), ("home", 1.2, 2))
    assert align_words(reference, hypothesis) == [(0, 0), (1, 2)]


def test_align_words_pairs_a_word_that_normalizes_to_several_tokens_once():
    # "don't" normalizes to "do not"; the split hypothesis pairs its first word and leaves "not" unmatched
    reference = timed(("I", 0, 1), ("don't", 1, 2), ("know", 2, 3))
    hypothesis = timed(("I", 0, 1), ("do", 1, 1.5), ("not", 1.5, 2), ("know", 2, 3))
    assert align_words(reference, hypothesis) == [(0, 0), (1, 1), (2, 3)]


# --- boundary errors ---------------------------------------------------------


def test_boundary_errors_exact_times():
    words = timed(("a", 0.0, 0.5), ("b", 0.6, 1.0))
    stats = boundary_errors(words, words)
    assert stats.matched == 2 and stats.reference_count == 2
    assert stats.within_tolerance_rate == 1.0
    assert stats.mean_abs_error == 0.0
    assert stats.errors.shape == (2, 2)


def test_boundary_errors_shifted_times():
    reference = timed(("one", 1.0, 1.5), ("two", 2.0, 2.5), ("three", 3.0, 3.5))
    hypothesis = timed(("one", 1.1, 1.6), ("two", 2.0, 2.9), ("three", 2.7, 3.5))
    stats = boundary_errors(reference, hypothesis, tolerance=0.2)
    np.testing.assert_allclose(stats.errors, [[0.1, 0.1], [0.0, 0.4], [-0.3, 0.0]], atol=1e-12)
    # only "one" has both errors within 0.2 s
    assert stats.within_tolerance_rate == pytest.approx(1 / 3)
    assert stats.mean_abs_error == pytest.approx((0.1 + 0.1 + 0.0 + 0.4 + 0.3 + 0.0) / 6)


def test_boundary_errors_tolerance_is_inclusive():
    stats = boundary_errors(timed(("a", 1.0, 2.0)), timed(("a", 1.2, 1.8)), tolerance=0.2)
    assert stats.within_tolerance_rate == 1.0


def test_boundary_errors_unmatched_reference_words_are_misses():
    reference = timed(("red", 0, 1), ("green", 1, 2), ("blue", 2, 3), ("black", 3, 4))
    hypothesis = timed(("red", 0, 1), ("blue", 2, 3))
    stats = boundary_errors(reference, hypothesis)
    assert stats.matched == 2 and stats.reference_count == 4
    assert stats.within_tolerance_rate == 0.5
    assert stats.mean_abs_error == 0.0


def test_boundary_errors_with_no_matches():
    stats = boundary_errors(timed(("yes", 0, 1)), timed(("no", 0, 1)))
    assert stats.matched == 0 and stats.within_tolerance_rate == 0.0
    assert math.isnan(stats.mean_abs_error) and stats.errors.shape == (0, 2)


# --- fixtures ----------------------------------------------------------------


def decode_fixture(name: str) -> tuple[np.ndarray, int]:
    with av.open(str(FIXTURES / f"{name}.flac")) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "flac" and stream.channels == 1
        frames = [frame.to_ndarray()[0] for frame in container.decode(stream)]
        return np.concatenate(frames).astype(np.float64) / 32768, stream.rate


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def test_fixture_set_is_complete():
    expected = {"clean_us_slow", "clean_gb", "fast_speaker", "noisy", "long_pauses", "no_speech", "straddle_40s"}
    assert expected <= set(FIXTURE_NAMES)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_truth_matches_audio(name: str):
    truth = json.loads((FIXTURES / f"{name}.json").read_text())
    audio, rate = decode_fixture(name)
    assert rate == truth["sample_rate"] == 16000
    assert len(audio) / rate == pytest.approx(truth["duration"], abs=1 / rate)

    words = truth["words"]
    if name == "no_speech":
        assert words == [] and truth["text"] == ""
        return
    assert [w["word"] for w in words] == [w.strip(".,!?;:\"") for w in truth["text"].split()]
    for previous, word in zip([None, *words], words):
        assert 0 <= word["start"] < word["end"] <= truth["duration"]
        if previous is not None:
            assert previous["end"] < word["start"]  # sorted, with a real gap between words

    inside = np.zeros(len(audio), dtype=bool)
    for word in words:
        inside[round(word["start"] * rate) : round(word["end"] * rate)] = True
    # Speech is much louder than the gaps as a whole (12 dB SNR for `noisy`, silence or a faint floor elsewhere).
    assert rms(audio[inside]) > 3 * max(rms(audio[~inside]), 1e-4)
    # Every single word stands out from the gap level too, so no word boundary sits in silence.
    for word in words:
        span = audio[round(word["start"] * rate) : round(word["end"] * rate)]
        assert rms(span) > 2 * rms(audio[~inside]), word


def test_straddle_fixture_has_a_word_across_30_seconds():
    truth = json.loads((FIXTURES / "straddle_40s.json").read_text())
    assert 40 <= truth["duration"] <= 45
    assert any(w["start"] < 30.0 < w["end"] for w in truth["words"])


def test_wer_agrees_with_jiwer_on_random_edits():
    jiwer = pytest.importorskip("jiwer")
    rng = np.random.default_rng(0)
    vocabulary = "red green blue cat dog sat ran home park tree".split()
    for _ in range(200):
        reference = " ".join(rng.choice(vocabulary, size=rng.integers(1, 12)))
        hypothesis = " ".join(rng.choice(vocabulary, size=rng.integers(0, 12)))
        expected = jiwer.wer(reference, hypothesis) if hypothesis else 1.0
        assert word_error_rate(reference, hypothesis) == pytest.approx(expected)
