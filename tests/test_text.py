"""How a word's text is read: one rule for sentence ends and one for matching spellings, used by
word timing, stabilization, alignment and the metrics."""

from __future__ import annotations

from steadyscribe.text import ends_sentence, letters, matching_words


def test_sentence_ends_are_the_latin_and_cjk_full_stop_exclamation_and_question_marks():
    assert all(ends_sentence(w) for w in [" done.", "why? ", "Stop!", "終わり。", "何？", "すごい！"])
    assert not any(ends_sentence(w) for w in [" Mr", " well,", " 3.5s", " e.g", "", " —"])


def test_words_match_by_their_letters_digits_and_apostrophes_in_order():
    assert letters(" Don't!") == "don't" and letters("B-52s,") == "b52s"
    text = ["Hello,", "world!", "don't", "stop"]
    engine = [" hello", " there", " World.", " Don't", " go"]
    assert matching_words(text, engine) == [(0, 0), (1, 2), (2, 3)]
