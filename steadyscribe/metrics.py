"""Accuracy metrics for transcripts: word error rate and word-boundary errors.

Text is compared after Whisper's English normalization, so casing, punctuation,
spelling variants and spelled-out numbers do not count as errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np
from whisper.normalizers import EnglishTextNormalizer

from steadyscribe.text import matching_words

EditOp = Literal["match", "substitute", "delete", "insert"]


@cache
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize_text(text: str) -> str:
    """Whisper's English normalization (lower case, no punctuation, numbers as digits, US spelling)."""
    return _normalizer()(text)


def _edit_operations(reference: Sequence[str], hypothesis: Sequence[str]) -> list[tuple[EditOp, int, int]]:
    """A minimum-cost Levenshtein alignment as (operation, reference index, hypothesis index).

    Among alignments with the fewest edits it picks one with the most matches, so that
    "a b c" vs "a c d" pairs the two c's (a deletion and an insertion) rather than
    substituting twice. Indices are -1 on the side an operation does not consume.
    """
    # Each cell holds (edits, -matches) of the best alignment of the prefixes; tuples compare in that order.
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = [[(0, 0)] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = (i, 0)
    for j in range(cols):
        cost[0][j] = (j, 0)

    def diagonal(i: int, j: int) -> tuple[int, int]:
        edits, negative_matches = cost[i - 1][j - 1]
        same = reference[i - 1] == hypothesis[j - 1]
        return (edits + (not same), negative_matches - same)

    for i in range(1, rows):
        for j in range(1, cols):
            deletion = (cost[i - 1][j][0] + 1, cost[i - 1][j][1])
            insertion = (cost[i][j - 1][0] + 1, cost[i][j - 1][1])
            cost[i][j] = min(diagonal(i, j), deletion, insertion)

    operations: list[tuple[EditOp, int, int]] = []
    i, j = rows - 1, cols - 1
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == diagonal(i, j):
            op: EditOp = "match" if reference[i - 1] == hypothesis[j - 1] else "substitute"
            operations.append((op, i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == (cost[i - 1][j][0] + 1, cost[i - 1][j][1]):
            operations.append(("delete", i - 1, -1))
            i -= 1
        else:
            operations.append(("insert", -1, j - 1))
            j -= 1
    operations.reverse()
    return operations


def _word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference word count) after normalization."""
    reference_words = normalize_text(reference).split()
    hypothesis_words = normalize_text(hypothesis).split()
    operations = _edit_operations(reference_words, hypothesis_words)
    return sum(op != "match" for op, _, _ in operations), len(reference_words)


def _rate(edits: int, reference_count: int) -> float:
    # Against an empty reference any word is an error of unbounded rate; nothing at all is perfect.
    if reference_count == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / reference_count


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalized text.

    An empty reference gives 0.0 for an empty hypothesis and inf otherwise.
    """
    return _rate(*_word_edits(reference, hypothesis))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """WER over many (reference, hypothesis) pairs: total edits / total reference words."""
    total_edits = total_words = 0
    for reference, hypothesis in pairs:
        edits, words = _word_edits(reference, hypothesis)
        total_edits += edits
        total_words += words
    return _rate(total_edits, total_words)


def _field(word: Mapping[str, Any] | Any, name: str) -> Any:
    """A field of a word given as a dict or as an object with attributes."""
    return word[name] if isinstance(word, Mapping) else getattr(word, name)


def _tokens(words: Sequence[Mapping[str, Any] | Any]) -> tuple[list[str], list[int]]:
    """Normalized tokens of each word in turn, and the index of the word each came from.

    A word may normalize to several tokens ("don't" -> "do not") or to none (fillers, lone
    punctuation); tokens keep their word's index so matches map back to whole words.
    """
    tokens, origins = [], []
    for index, word in enumerate(words):
        for token in normalize_text(str(_field(word, "word"))).split():
            tokens.append(token)
            origins.append(index)
    return tokens, origins


def align_words(
    reference_words: Sequence[Mapping[str, Any] | Any],
    hypothesis_words: Sequence[Mapping[str, Any] | Any],
) -> list[tuple[int, int]]:
    """Pairs (reference index, hypothesis index) of words whose normalized text matches.

    Words are dicts or objects with a `word` field. The pairing comes from a Levenshtein
    alignment of the normalized tokens; each word appears in at most one pair, in order.
    Substituted, deleted and inserted words are left out.
    """
    reference_tokens, reference_origins = _tokens(reference_words)
    hypothesis_tokens, hypothesis_origins = _tokens(hypothesis_words)
    pairs: list[tuple[int, int]] = []
    for op, i, j in _edit_operations(reference_tokens, hypothesis_tokens):
        if op != "match":
            continue
        pair = (reference_origins[i], hypothesis_origins[j])
        # Tokens of one word match tokens of one word: keep the first, skip the rest of that word.
        if pairs and (pairs[-1][0] == pair[0] or pairs[-1][1] == pair[1]):
            continue
        pairs.append(pair)
    return pairs


def align_words_literally(
    reference_words: Sequence[Mapping[str, Any] | Any],
    hypothesis_words: Sequence[Mapping[str, Any] | Any],
) -> list[tuple[int, int]]:
    """Pairs (reference index, hypothesis index) of words equal in their lower-cased letters, digits
    and apostrophes, matched in order by difflib's SequenceMatcher: the real-speech set's scoring
    rule (../shared/realspeech/README.md). Unlike align_words, fillers (um, uh) count as words."""
    reference, hypothesis = ([str(_field(w, "word")) for w in words] for words in (reference_words, hypothesis_words))
    return matching_words(reference, hypothesis)


@dataclass(frozen=True)
class BoundaryStats:
    """How well hypothesis word times agree with reference word times."""

    matched: int  # reference words paired with a hypothesis word of the same text
    reference_count: int
    # Fraction of reference words whose match has |start error| and |end error| within tolerance;
    # unmatched reference words count as misses. NaN without reference words.
    within_tolerance_rate: float
    mean_abs_error: float  # seconds, over the start and end errors of matched words; NaN if none
    errors: np.ndarray  # shape (matched, 2): hypothesis minus reference (start, end), seconds


def boundary_errors(
    reference_words: Sequence[Mapping[str, Any] | Any],
    hypothesis_words: Sequence[Mapping[str, Any] | Any],
    tolerance: float = 0.2,
    literal: bool = False,
) -> BoundaryStats:
    """Start/end errors of the hypothesis words matched to reference words (see `align_words`;
    with `literal`, `align_words_literally`)."""
    pairs = (align_words_literally if literal else align_words)(reference_words, hypothesis_words)
    errors = np.array(
        [
            [
                float(_field(hypothesis_words[j], "start")) - float(_field(reference_words[i], "start")),
                float(_field(hypothesis_words[j], "end")) - float(_field(reference_words[i], "end")),
            ]
            for i, j in pairs
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    reference_count = len(reference_words)
    # The slack absorbs float rounding so an error of exactly `tolerance` counts as within it.
    within = int(np.sum(np.all(np.abs(errors) <= tolerance + 1e-9, axis=1)))
    return BoundaryStats(
        matched=len(pairs),
        reference_count=reference_count,
        within_tolerance_rate=within / reference_count if reference_count else float("nan"),
        mean_abs_error=float(np.mean(np.abs(errors))) if len(pairs) else float("nan"),
        errors=errors,
    )
