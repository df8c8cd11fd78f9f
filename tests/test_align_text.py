"""Known-text alignment, the parts without a model: the text split across windows, the judgement of the result."""

from __future__ import annotations

import numpy as np
import pytest

from steadyscribe.metrics import align_words, align_words_literally
from steadyscribe.records import DecodedAudio, Segment, Transcript, Window, Word
from steadyscribe.tasks.align import (
    AlignOptions,
    candidate_windows,
    judge_alignment,
    merge_candidates,
    read_texts,
    sentence_segments,
    text_source,
    window_spans,
)
from steadyscribe.vad import FRAME_S


def test_matched_words_take_the_window_they_were_heard_in():
    heard = [("the", 0), ("cat", 0), ("sat", 0), ("on", 1), ("the", 1), ("mat", 1)]
    assert candidate_windows("The cat sat on the mat.".split(), heard, 2) == [(0, 0)] * 3 + [(1, 1)] * 3


def test_unmatched_words_at_a_window_edge_may_lie_in_either_window():
    # The transcription lost the words around the cut between windows 0 and 2 (1 was silent).
    text = "one two three four five six seven".split()
    heard = [("one", 0), ("too", 0), ("fork", 2), ("seven", 2)]
    assert candidate_windows(text, heard, 3) == [(0, 0)] + [(0, 2)] * 5 + [(2, 2)]


def test_words_before_the_first_and_after_the_last_match_may_lie_in_any_window_before_and_after():
    text = "um so the plan works you know".split()
    heard = [("the", 1), ("plan", 1), ("works", 2)]
    assert candidate_windows(text, heard, 4) == [(0, 1)] * 2 + [(1, 1)] * 2 + [(2, 2)] + [(2, 3)] * 2


def test_a_text_that_matches_nothing_heard_is_not_placed():
    assert candidate_windows("completely different words".split(), [("hello", 0), ("there", 0)], 1) == [None] * 3
    assert candidate_windows("anything".split(), [], 1) == [None]


def test_each_window_aligns_the_span_of_words_that_may_lie_in_it():
    windows = [Window("f", 0, 0.0, 30.0), Window("f", 2, 40.0, 60.0), Window("f", 3, 60.0, 80.0)]
    heard = Transcript("f", "en", [Segment(0, 60, "", [Word("hello", 1, 2, 0.9), Word("world", 45, 46, 0.9)])])
    assert window_spans("hello big bad world", windows, heard) == [(0, 3), (1, 4), (0, 0)]  # nothing after "world"
    assert window_spans("one window takes all", windows[:1], None) == [(0, 4)]


def test_merge_keeps_each_word_from_the_window_that_is_surest_of_it_in_order():
    text = "I think so. Yes".split()
    first = [Word("I", 1.0, 1.2, 0.9), Word("think", 1.2, 1.5, 0.8), Word("so.", 29.0, 29.9, 0.1)]
    second = [Word("so.", 30.0, 30.4, 0.7), Word("Yes", 31.0, 31.3, 0.9)]
    merged = merge_candidates(text, [((0, 3), first), ((2, 4), second)])
    assert [(w.word, w.start) for w in merged] == [("I", 1.0), ("think", 1.2), ("so.", 30.0), ("Yes", 31.0)]
    assert [s.text for s in sentence_segments(merged)] == ["I think so.", "Yes"]


def test_text_files_sit_beside_their_audio(tmp_path):
    assert text_source("s3://bucket/calls/a.b.flac", ".txt") == "s3://bucket/calls/a.b.txt"
    assert text_source("/data/x.wav", ".ref.txt") == "/data/x.ref.txt"
    (tmp_path / "has.txt").write_text("  Some\nwords  here \n")
    (tmp_path / "empty.txt").write_text(" \n")
    decoded = [
        DecodedAudio(str(tmp_path / name), "ok", file_id=name) for name in ("has.flac", "empty.flac", "missing.flac")
    ]
    assert read_texts(decoded, ".txt") == {"has.flac": "Some words here"}
    assert [d.status for d in decoded] == ["ok", "failed", "failed"]
    assert "is empty" in decoded[1].error
    assert "missing.txt does not exist" in decoded[2].error


def _transcript(words: list[Word]) -> Transcript:
    return Transcript("f", "en", [Segment(words[0].start, words[-1].end, "", words)])


def test_judge_keeps_confident_words_and_reports_the_rest():
    probabilities = np.full(int(10 / FRAME_S), 0.9, dtype=np.float32)
    probabilities[int(6 / FRAME_S) :] = 0.0  # confident silence from 6 s on
    words = [Word(f"w{i}", 0.5 * i, 0.5 * i + 0.4, 0.9) for i in range(10)]
    words[3].probability = 0.01  # one surprising word amid words the model hears: kept
    words += [Word("unsure", 7.0, 7.4, 0.3), Word("sure", 8.0, 8.4, 0.95)]  # on VAD silence
    judged, error = judge_alignment(_transcript(words), 13, probabilities)
    assert error is None
    assert [w.word for w in judged.words] == [f"w{i}" for i in range(10)] + ["sure"]
    assert judged.stabilization.words_aligned == 11 and judged.stabilization.text_words == 13
    assert "2 of 13 words of the text were not aligned" in judged.warnings[0] and "'unsure'" in judged.warnings[0]
    assert "1 aligned words lie where the VAD hears no speech" in judged.warnings[1] and "'sure'" in judged.warnings[1]


def test_judge_fails_a_text_that_does_not_match():
    probabilities = np.full(int(10 / FRAME_S), 0.9, dtype=np.float32)
    # The first five words are heard; from there on the text says something else.
    words = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.4, 0.9 if i < 5 else 0.02) for i in range(16)]
    judged, error = judge_alignment(_transcript(words), 16, probabilities)
    assert judged.stabilization.words_aligned == 5
    assert error is not None and "does not match" in error and "5 of its 16 words (31%)" in error


def test_a_window_takes_as_much_text_as_the_decoder_holds_in_whole_words():
    ctranslate2_engine = pytest.importorskip("steadyscribe.engines.ctranslate2_engine")
    from whisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(multilingual=False)
    tokens, left = ctranslate2_engine.fit_text("Call me Ishmael.", tokenizer)
    assert tokenizer.decode(tokens) == " Call me Ishmael." and left == []
    long_text = " ".join(f"word{i}" for i in range(400))  # ~2 tokens a word: over the 448-token context
    tokens, left = ctranslate2_engine.fit_text(long_text, tokenizer)
    assert len(tokens) <= ctranslate2_engine.MAX_LENGTH - len(tokenizer.sot_sequence) - 2
    assert (tokenizer.decode(tokens).split() + left) == long_text.split()


def test_identical_audio_with_two_different_texts_fails_the_second(tmp_path):
    (tmp_path / "a.txt").write_text("one text")
    (tmp_path / "b.txt").write_text("another text")
    (tmp_path / "c.txt").write_text("one text")
    decoded = [DecodedAudio(str(tmp_path / f"{name}.flac"), "ok", file_id="same") for name in "abc"]
    assert read_texts(decoded, ".txt") == {"same": "one text"}
    assert [d.status for d in decoded] == ["ok", "failed", "ok"]
    assert "the same audio as" in decoded[1].error and "a.flac" in decoded[1].error


def test_literal_matching_counts_fillers_as_words():
    reference = [{"word": w} for w in ["Um,", "I'm", "here", "uh", "now"]]
    hypothesis = [{"word": w} for w in ["um", "i'm", "there", "uh", "now."]]
    assert align_words_literally(reference, hypothesis) == [(0, 0), (1, 1), (3, 3), (4, 4)]
    assert align_words(reference, hypothesis) == [(1, 1), (4, 4)]  # the normalizer drops fillers
