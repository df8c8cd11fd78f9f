"""How the pipeline reads a word's text: where a sentence ends, and when two spellings are one word."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

# openai-whisper's sentence-end marks: full stop, exclamation and question mark, Latin and CJK.
SENTENCE_END_MARKS = ".。!！?？"


def ends_sentence(word: str) -> bool:
    """Whether `word` ends with a sentence-end mark (trailing white space aside)."""
    return word.rstrip().endswith(tuple(SENTENCE_END_MARKS))


def letters(word: str) -> str:
    """A word's lower-cased letters, digits and apostrophes: what two spellings of one word share."""
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def matching_words(first: Sequence[str], second: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs (index in `first`, index in `second`) of words with the same letters, matched in
    order by difflib's SequenceMatcher."""
    matcher = SequenceMatcher(None, [letters(w) for w in first], [letters(w) for w in second], autojunk=False)
    return [(block.a + k, block.b + k) for block in matcher.get_matching_blocks() for k in range(block.size)]
