"""Word timestamps shared by the batched engines: from a window's tokens and a DTW path to Segments.

openai-whisper does this inside `transcribe`; the batched engines decode a window in one pass and
then align its text tokens to the audio (DTW over the alignment heads' cross-attention). What
follows the alignment is the same for every engine: split the tokens into segments at timestamp
tokens, group tokens into words, clean up the word times as openai-whisper does, and build
Segments with absolute times.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from steadyscribe.engines.features import TOKENS_PER_SECOND
from steadyscribe.records import Segment, Window, Word
from steadyscribe.text import SENTENCE_END_MARKS, ends_sentence

TIMESTAMP_PRECISION_S = 0.02
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


class Tokenizer(Protocol):
    """What word timing needs of a tokenizer: openai-whisper's, or steadyscribe.engines.tokenizer's."""

    @property
    def eot(self) -> int: ...

    @property
    def timestamp_begin(self) -> int: ...

    def decode(self, tokens: list[int]) -> str: ...

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]: ...


@dataclass
class WordTiming:
    """A word (its text and tokens) with window-relative times and the model's mean token probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


@dataclass
class TokenSpan:
    """Text tokens between two timestamp tokens; times relative to the window's start."""

    start: float
    end: float
    tokens: list[int]


def timestamped_spans(tokens: list[int], tokenizer: Tokenizer, span: float) -> list[TokenSpan]:
    """Split a decoding (timestamp tokens included, no prompt) into segments at its timestamps.

    Handles both `<|a|> text <|b|><|b|> text <|c|>` and single timestamps between segments. Text
    after the last timestamp (the model ran out of window) ends at the window's end (`span`); text
    without any timestamp is one segment over the whole window.
    """
    spans = []
    start = 0.0
    text: list[int] = []
    for token in tokens:
        if token >= tokenizer.timestamp_begin:
            time = (token - tokenizer.timestamp_begin) * TIMESTAMP_PRECISION_S
            if text:
                spans.append(TokenSpan(start, time, text))
                text = []
            start = time
        elif token < tokenizer.eot:
            text.append(token)
    if text:
        spans.append(TokenSpan(start, span, text))
    return spans


def sentence_spans(words: list[WordTiming]) -> list[TokenSpan]:
    """Segments for a decoding without timestamp tokens: one per sentence, timed by its words.

    Takes every word's tokens in order, so window_segments gives each segment its own words.
    """
    sentences: list[list[WordTiming]] = [[]]
    for timing in words:
        sentences[-1].append(timing)
        if ends_sentence(timing.word):
            sentences.append([])
    return [
        TokenSpan(sentence[0].start, sentence[-1].end, [t for timing in sentence for t in timing.tokens])
        for sentence in sentences
        if sentence
    ]


def word_timings(
    tokenizer: Tokenizer,
    text_tokens: list[int],
    text_indices: np.ndarray,
    time_indices: np.ndarray,
    token_probs: np.ndarray,
) -> list[WordTiming]:
    """Words with window-relative times from a DTW path, grouped and cleaned as openai-whisper does.

    The path visits one row per text token plus a final row for end-of-text; a word spans from
    the first frame of its first token's row to the first frame of the next word's row.
    `token_probs[i]` is the probability the model gave text token i.
    """
    if not text_tokens:
        return []
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    boundaries = np.concatenate([[0], np.cumsum([len(tokens) for tokens in word_tokens[:-1]])])
    row_starts = np.diff(text_indices, prepend=-1) > 0
    row_times = np.asarray(time_indices)[row_starts] / TOKENS_PER_SECOND
    token_probs = np.asarray(token_probs)
    timings = [
        WordTiming(word, tokens, float(row_times[i]), float(row_times[j]), float(token_probs[i:j].mean()))
        for word, tokens, i, j in zip(words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:])
    ]
    _shorten_overlong_words(timings)
    merge_punctuations(timings)
    return timings


def merge_punctuations(timings: list[WordTiming], prepended: str = PREPEND_PUNCTUATIONS, appended: str = APPEND_PUNCTUATIONS) -> None:
    """Attach opening marks to the word after them and closing marks to the word before, as openai-whisper does.

    A merged mark's entry stays in the list, emptied (no text, no tokens), so that token counts
    still line up; its times are dropped with it. The checks are openai-whisper's, quirks included
    (a blank word counts as a prepended mark).
    """
    # Opening marks, from the end: a chain of them all lands on the word that follows.
    following = len(timings) - 1
    for i in range(len(timings) - 2, -1, -1):
        mark = timings[i]
        if mark.word.startswith(" ") and mark.word.strip() in prepended:
            timings[following].word = mark.word + timings[following].word
            timings[following].tokens = mark.tokens + timings[following].tokens
            mark.word, mark.tokens = "", []
        else:
            following = i
    # Closing marks, from the start: a chain of them all lands on the word before.
    previous = 0
    for j in range(1, len(timings)):
        mark = timings[j]
        if not timings[previous].word.endswith(" ") and mark.word in appended:
            timings[previous].word += mark.word
            timings[previous].tokens = timings[previous].tokens + mark.tokens
            mark.word, mark.tokens = "", []
        else:
            previous = j


def _shorten_overlong_words(timings: list[WordTiming]) -> None:
    """Cap words that absorbed a pause at twice the median word duration.

    DTW hands silence to a neighbouring word: a sentence's final mark, the first word of the next
    sentence, or a word after a long pause. Shortening only moves a start later or an end
    earlier, so times stay monotonic.
    """
    durations = np.array([t.end - t.start for t in timings])
    durations = durations[durations > 0]
    if len(durations) == 0:
        return
    max_duration = 2 * min(0.7, float(np.median(durations)))
    previous_end = 0.0
    for i, timing in enumerate(timings):
        if timing.end - timing.start > max_duration:
            after_pause = timing.end - previous_end > 2 * max_duration
            if timing.word in SENTENCE_END_MARKS:
                timing.end = timing.start + max_duration
            elif after_pause or (i > 0 and timings[i - 1].word in SENTENCE_END_MARKS):
                timing.start = timing.end - max_duration
        previous_end = timing.end


def window_segments(
    window: Window,
    span: float,
    tokenizer: Tokenizer,
    spans: list[TokenSpan],
    words: list[WordTiming],
    *,
    avg_logprob: float | None = None,
    no_speech_prob: float | None = None,
    compression_ratio: float | None = None,
) -> list[Segment]:
    """Segments with absolute times, each holding the words of its own tokens.

    `words` come from the concatenated tokens of all `spans`; `span` is the window's audio length.
    """
    durations = [t.end - t.start for t in words if t.end > t.start]
    median_duration = min(0.7, float(np.median(durations))) if durations else 0.0
    segments = []
    word_index = 0
    for token_span in spans:
        # Punctuation merging moves tokens between words, not their count: a segment takes
        # words until it has consumed its own number of tokens.
        segment_words: list[WordTiming] = []
        consumed = 0
        while word_index < len(words) and consumed < len(token_span.tokens):
            timing = words[word_index]
            if timing.word:
                segment_words.append(timing)
            consumed += len(timing.tokens)
            word_index += 1
        start, end = token_span.start, token_span.end
        if segment_words:
            _prefer_segment_times(segment_words, token_span, median_duration)
            start, end = segment_words[0].start, segment_words[-1].end
        segments.append(
            Segment(
                start=window.start + _clip(start, span),
                end=window.start + _clip(end, span),
                text=tokenizer.decode(token_span.tokens).strip(),
                words=[_absolute_word(timing, window, span) for timing in segment_words],
                avg_logprob=avg_logprob,
                no_speech_prob=no_speech_prob,
                compression_ratio=compression_ratio,
            )
        )
    return segments


def _prefer_segment_times(words: list[WordTiming], span: TokenSpan, median_duration: float) -> None:
    """openai-whisper's fix-up of a segment's first and last word.

    A first word starting (last word ending) over half a second outside its segment's timestamps
    was stretched over silence by DTW: the timestamp is the better bound. Words only shrink.
    """
    first, last = words[0], words[-1]
    if span.start < first.end and span.start - 0.5 > first.start:
        first.start = max(first.start, min(first.end - median_duration, span.start))
    if span.end > last.start and span.end + 0.5 < last.end:
        last.end = min(last.end, max(last.start + median_duration, span.end))


def compression_ratio(text: str) -> float:
    """Bytes of text over bytes of its zlib compression: high for looping, repetitive output."""
    encoded = text.encode("utf-8")
    return len(encoded) / len(zlib.compress(encoded)) if encoded else 0.0


def _absolute_word(timing: WordTiming, window: Window, span: float) -> Word:
    return Word(
        word=timing.word.strip(),
        start=window.start + _clip(timing.start, span),
        end=window.start + _clip(timing.end, span),
        probability=timing.probability,
    )


def _clip(time: float, span: float) -> float:
    return min(max(time, 0.0), span)
