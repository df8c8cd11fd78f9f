"""Known-text alignment, the parts without a model: the text split across windows, the judgement of the result."""

from __future__ import annotations

import numpy as np

from steadyscribe.records import DecodedAudio, Segment, Transcript, Window, Word
from steadyscribe.tasks.align import (
    AlignOptions,
    assign_words_to_windows,
    judge_alignment,
    read_texts,
    split_text,
    text_source,
)
from steadyscribe.vad import FRAME_S


def test_matched_words_take_the_window_they_were_heard_in():
    heard = [("the", 0), ("cat", 0), ("sat", 0), ("on", 1), ("the", 1), ("mat", 1)]
    assert assign_words_to_windows("The cat sat on the mat.".split(), heard) == [0, 0, 0, 1, 1, 1]


def test_unmatched_words_between_windows_are_shared_as_the_heard_words_are():
    # The transcription misheard the middle: two unmatched heard words in window 0, one in window 1.
    text = "one two three four five six seven".split()
    heard = [("one", 0), ("too", 0), ("tree", 0), ("fork", 1), ("seven", 1)]
    assert assign_words_to_windows(text, heard) == [0, 0, 0, 0, 1, 1, 1]


def test_a_gap_with_nothing_heard_is_split_between_the_two_windows():
    text = "alpha bravo charlie delta echo foxtrot".split()
    heard = [("alpha", 0), ("foxtrot", 2)]
    assert assign_words_to_windows(text, heard) == [0, 0, 0, 2, 2, 2]


def test_words_before_the_first_and_after_the_last_match_take_their_windows():
    text = "um so the plan works you know".split()
    heard = [("the", 1), ("plan", 1), ("works", 2)]
    assert assign_words_to_windows(text, heard) == [1, 1, 1, 1, 2, 2, 2]


def test_a_text_that_matches_nothing_heard_is_not_placed():
    assert assign_words_to_windows("completely different words".split(), [("hello", 0), ("there", 0)]) == [None] * 3
    assert assign_words_to_windows("anything".split(), []) == [None]


def test_split_text_uses_the_windows_own_indices_and_skips_what_cannot_be_placed():
    windows = [Window("f", 0, 0.0, 30.0), Window("f", 2, 40.0, 60.0)]  # window 1 was skipped as silent
    heard = Transcript("f", "en", [Segment(0, 60, "", [Word("hello", 1, 2, 0.9), Word("world", 45, 46, 0.9)])])
    assert split_text("hello big bad world", windows, heard) == {0: "hello big", 2: "bad world"}
    assert split_text("just one window", windows[:1], None) == {0: "just one window"}
    assert split_text("no speech anywhere", [], None) == {}


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


def _transcript(words: list[Word], text_words: int) -> Transcript:
    return Transcript("f", "en", [Segment(words[0].start, words[-1].end, "", words)], stabilization={"text_words": text_words})


def test_judge_keeps_confident_words_and_reports_the_rest():
    probabilities = np.full(int(10 / FRAME_S), 0.9, dtype=np.float32)
    probabilities[int(6 / FRAME_S) :] = 0.0  # confident silence from 6 s on
    words = [
        Word("said", 1.0, 1.4, 0.9),
        Word("clearly", 1.5, 2.0, 0.8),
        Word("unsure", 2.1, 2.5, 0.05),  # the model does not hear it
        Word("here", 3.0, 3.3, 0.9),
        Word("silence", 7.0, 7.5, 0.9),  # on silence: never emitted however sure the model is
    ]
    judged, error = judge_alignment(_transcript(words, 5), probabilities)
    assert error is None
    assert [w.word for w in judged.words] == ["said", "clearly", "here"]
    assert judged.stabilization["words_aligned"] == 3
    assert "2 of 5 words" in judged.warnings[-1] and "'unsure', 'silence'" in judged.warnings[-1]


def test_judge_fails_a_text_that_does_not_match():
    probabilities = np.full(int(10 / FRAME_S), 0.9, dtype=np.float32)
    words = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.4, 0.9 if i < 3 else 0.01) for i in range(10)]
    judged, error = judge_alignment(_transcript(words, 12), probabilities, options=AlignOptions(min_aligned_share=0.5))
    assert judged.stabilization["words_aligned"] == 3
    assert error is not None and "does not match" in error and "3 of its 12 words (25%)" in error
