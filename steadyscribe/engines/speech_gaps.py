"""Speech the VAD hears but an engine left without words: found, decoded again, and accounted for.

Any engine may return no text for a window or for a stretch of one that holds speech: a window
the model calls silence, a decoding that ends early, text that passes over a sentence. After a
group's windows are decoded (tasks/infer.py), every gap between a window's words (and between
its edges and its first and last word) that holds at least `min_speech_s` of what the VAD calls
speech is decoded again as a window of its own, by the same engine: first without any prompt at
the first temperature, kept only where its text passes the thresholds that trigger the fallback
(engines.decoding: not repetitive, average log-probability at least LOGPROB_THRESHOLD); then,
for what is still empty, at the fallback temperatures, keeping the least bad text as the first
decoding of any window does, unless it is repetitive (a loop is no transcript). The model's
no-speech verdict is not asked: the VAD hears speech there. The words go into the gap only
(their middle inside it), so the words around the gap are not doubled.

What is still empty afterwards stays in the file's transcript as `speech_without_text_ms` and a
warning that names the stretches: the file is `ok`, but nothing is lost without a word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from steadyscribe import SAMPLE_RATE
from steadyscribe.engines.base import Engine, WindowAudio, WindowResult
from steadyscribe.engines.decoding import COMPRESSION_RATIO_THRESHOLD, LOGPROB_THRESHOLD
from steadyscribe.records import Segment, Window
from steadyscribe.vad import FRAME_S

# Seconds of VAD speech in a gap between words that make it a stretch left without text: a few
# fast words. Shorter gaps are the pauses, breaths and fillers that Whisper does not write.
MIN_SPEECH_S = 2.0
# Stretches quoted in a file's warning (the total counts them all).
WARNING_STRETCHES = 5
ATTEMPTS = ("no_prompt", "fallback")


@dataclass(frozen=True)
class Gap:
    """A stretch of one window, between its words, in which the VAD hears `speech_s` seconds of speech."""

    window: Window
    start: float
    end: float
    speech_s: float


def find_gaps(result: WindowResult, speech: np.ndarray, min_speech_s: float = MIN_SPEECH_S) -> list[Gap]:
    """The stretches of `result`'s window that its words leave out and that hold at least
    `min_speech_s` of speech (`speech`: the file's per-frame speech mask, steadyscribe.vad.speech_frames)."""
    window = result.window
    words = sorted((w for s in result.segments for w in s.words), key=lambda w: w.start)
    edges = [window.start, *(t for w in words for t in (w.start, w.end)), window.end]
    gaps = []
    for start, end in zip(edges[::2], edges[1::2]):
        start, end = max(start, window.start), min(end, window.end)
        heard = speech_seconds(speech, start, end)
        if heard >= min_speech_s:
            gaps.append(Gap(window, start, end, heard))
    return gaps


def speech_seconds(speech: np.ndarray, start: float, end: float) -> float:
    if end <= start:
        return 0.0
    first, last = int(start / FRAME_S), int(np.ceil(end / FRAME_S))
    return float(np.count_nonzero(speech[max(first, 0) : max(last, 0)])) * FRAME_S


def passes(segments: list[Segment], attempt: str = "no_prompt") -> bool:
    """Whether a re-decoding's text may fill a gap: words, none of them in a repetitive segment,
    and (at the first temperature, where the fallback is still to come) none in an improbable one."""
    return any(s.words for s in segments) and not any(
        (attempt == "no_prompt" and s.avg_logprob is not None and s.avg_logprob < LOGPROB_THRESHOLD)
        or (s.compression_ratio is not None and s.compression_ratio > COMPRESSION_RATIO_THRESHOLD)
        for s in segments
        if s.words
    )


def fill_gaps(
    engine: Engine,
    results: Mapping[str, list[WindowResult]],
    samples_of: Mapping[str, np.ndarray],
    speech_of: Callable[[str], np.ndarray],
    min_speech_s: float = MIN_SPEECH_S,
) -> dict[str, list[Gap]]:
    """Decode again every gap of `results` (file id -> its window results, changed in place: the
    words found are added to their window's result) and return, per file, the gaps still empty.

    After each attempt the gaps are found again: where an attempt filled part of a gap, the rest
    of it goes to the next attempt (and, still empty, into the count)."""
    speech = {file_id: speech_of(file_id) for file_id in results}

    def gaps() -> list[Gap]:
        return [
            gap
            for file_id, file_results in results.items()
            for result in file_results
            for gap in find_gaps(result, speech[file_id], min_speech_s)
        ]

    by_window = {(r.window.file_id, r.window.index): r for file_results in results.values() for r in file_results}
    open_gaps = gaps()
    for attempt in ATTEMPTS:
        if not open_gaps:
            break
        items = [_gap_audio(gap, samples_of[gap.window.file_id], attempt) for gap in open_gaps]
        decoded = {r.window: r for r in engine.transcribe(items)}
        for gap, item in zip(open_gaps, items):
            found = decoded.get(item.window)
            segments = words_within(found.segments, gap.start, gap.end) if found is not None and passes(found.segments, attempt) else []
            if segments:
                original = by_window[(gap.window.file_id, gap.window.index)]
                original.segments = sorted([*original.segments, *segments], key=lambda s: s.start)
                if original.language is None:
                    original.language = found.language
        open_gaps = gaps()
    left: dict[str, list[Gap]] = {file_id: [] for file_id in results}
    for gap in open_gaps:
        left[gap.window.file_id].append(gap)
    return left


def _gap_audio(gap: Gap, samples: np.ndarray, attempt: str) -> WindowAudio:
    first, last = round(gap.start * SAMPLE_RATE), round(gap.end * SAMPLE_RATE)
    # The gap's own window: same file and index (its seed and its file's state), its own span.
    window = Window(gap.window.file_id, gap.window.index, round(gap.start, 3), round(gap.end, 3))
    return WindowAudio(window, samples[first:last], redecode=attempt)


def words_within(segments: list[Segment], start: float, end: float) -> list[Segment]:
    """The segments cut to their words whose middle lies in [start, end]: what a decoding of a
    stretch adds where the words around the stretch are there already."""
    kept = []
    for segment in segments:
        words = [w for w in segment.words if start <= (w.start + w.end) / 2 <= end]
        if words:
            text = segment.text if len(words) == len(segment.words) else " ".join(w.word for w in words)
            kept.append(replace(segment, start=words[0].start, end=words[-1].end, text=text, words=words))
    return kept


def unheard_warning(gaps: Iterable[Gap]) -> str | None:
    """The warning of a file whose `gaps` stayed without text after decoding them again (None if none did)."""
    gaps = sorted(gaps, key=lambda g: g.start)
    if not gaps:
        return None
    total = sum(g.speech_s for g in gaps)
    spans = ", ".join(f"{g.start:.1f}-{g.end:.1f} s ({g.speech_s:.1f} s)" for g in gaps[:WARNING_STRETCHES])
    more = f" and {len(gaps) - WARNING_STRETCHES} more" if len(gaps) > WARNING_STRETCHES else ""
    return (
        f"{total:.1f} s of speech without text: the VAD hears speech at {spans}{more} "
        "where the engine wrote no words, even when decoded again without a prompt and at higher temperatures"
    )
