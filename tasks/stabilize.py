"""Stabilize stage: move word and segment times onto the speech, from the audio alone.

Whisper's word times drift into pauses and are often off by part of a word. This stage
measures where the audio holds speech (steadyscribe.speech) and then, per decoded window:

1. drops words that lie over no speech at all and look invented (hallucinations);
2. re-places every word boundary on evidence in the audio. The boundary between two words
   goes into a pause (a gap between speech runs) or an energy dip inside speech, chosen for
   all words of the window at once (dynamic programming) so that boundaries stay in order,
   each word keeps a minimum duration, each gap is used by one boundary, and speech is not
   left outside every word. The choice weighs the distance from the engine's times (less the
   engine's steady lag, measured on the file), the length of the pause, and how well each
   word's duration fits its length in letters. A boundary looks at most `max_shift_s` beyond
   the engine's pause between the two words; without evidence there it stays where it was;
3. trims what is left of a word's edges in non-speech, and re-splits segments at long pauses.

Nothing here depends on the engine: it needs only a Transcript, the file's samples and,
optionally, the windows the engine decoded (no word leaves its window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from steadyscribe.records import DecodedAudio, Segment, Transcript, Window, Word
from steadyscribe.speech import frame_loudness_db, mask_from_loudness
from steadyscribe.tasks.decode import load_pcm


@dataclass(frozen=True)
class StabilizeOptions:
    enabled: bool = True
    sample_rate: int = 16000
    hop_s: float = 0.01  # frame step of the speech analysis; boundaries land on this grid
    min_word_s: float = 0.05
    max_shift_s: float = 0.6  # furthest a boundary moves to reach a pause or dip
    drop_hallucinations: bool = True
    # A word with no speech within speech_margin_s of it is dropped when its segment's no-speech
    # probability reaches no_speech_threshold, its own probability is below
    # min_word_probability, or its whole segment has no speech within max_shift_s.
    no_speech_threshold: float = 0.6
    min_word_probability: float = 0.5
    speech_margin_s: float = 0.1
    split_pause_s: float = 1.0  # a pause this long between words starts a new segment
    # Costs of the boundary search, in seconds of boundary displacement:
    dip_cost_s: float = 0.3  # a boundary in an energy dip inside speech instead of a pause
    # Longer pauses are likelier word boundaries than a stop consonant's closure:
    pause_bonus: float = 2.0  # cost removed per second of pause, up to the cap
    pause_bonus_cap_s: float = 0.25
    keep_cost_s: float = 0.5  # a boundary left where the engine put it, with no evidence
    uncovered_speech_cost: float = 3.0  # per second of speech left outside every word
    min_dip_db: float = 6.0  # how far loudness must fall inside speech to count as a dip
    # Expected word durations are proportional to letters + this (a short word still takes time).
    letters_per_word_onset: float = 5.0
    duration_weight: float = 0.8  # cost per unit of |log(duration / expected duration)|
    max_lag_s: float = 0.3  # largest steady engine lag taken out
    min_lag_samples: int = 8  # pause edges needed to measure the lag


def stabilize(
    transcript: Transcript,
    samples: np.ndarray,
    options: StabilizeOptions | None = None,
    windows: list[Window] | None = None,
) -> Transcript:
    """A new Transcript whose word and segment times lie on the speech in `samples`.

    `transcript.stabilization` of the result counts words_moved, words_dropped,
    segments_dropped and segments_split.
    """
    options = options or StabilizeOptions()
    segments = [replace(s, words=[replace(w) for w in s.words]) for s in transcript.segments]
    if not options.enabled:
        return replace(transcript, segments=segments)

    speech = SpeechEvidence(samples, options)
    spans = [(w.start, w.end) for w in windows] if windows else [(0.0, speech.duration)]
    counts = {"words_moved": 0, "words_dropped": 0, "segments_dropped": 0, "segments_split": 0}

    original = {id(w): (w.start, w.end) for s in segments for w in s.words}
    if options.drop_hallucinations:
        segments = _drop_hallucinations(segments, speech, options, counts)
    words = [w for s in segments for w in s.words]
    groups = []
    for start, end in spans:
        end = min(end, speech.duration)
        # In transcript order: the text's order is right even where the engine's times are not.
        inside = [w for w in words if start <= (w.start + w.end) / 2 < end]
        if inside:
            _order_in_window(inside, start, end, options.min_word_s)
            groups.append((start, end, inside))
    # The engine's times are often late (or early) by a steady amount; measure it on this file
    # from the boundaries that land on pause edges, then align again with it taken out.
    start_lag, end_lag = _engine_lag(groups, speech, options)
    for start, end, inside in groups:
        _align_window(inside, start, end, speech, options, start_lag, end_lag)
    for word in words:
        _trim_to_speech(word, speech, options)
    counts["words_moved"] = sum(
        bool(abs(w.start - original[id(w)][0]) > 1e-6 or abs(w.end - original[id(w)][1]) > 1e-6) for w in words
    )
    segments = _split_at_pauses(segments, options, counts)
    return replace(transcript, segments=segments, stabilization=counts)


class SpeechEvidence:
    """Frame loudness and speech masks of one file, and the boundary candidates they offer."""

    def __init__(self, samples: np.ndarray, options: StabilizeOptions):
        self.hop = options.hop_s
        self.duration = len(samples) / options.sample_rate
        self.loudness = frame_loudness_db(samples, options.sample_rate, self.hop)
        # Fine: every pause between words is a gap, so its edges are boundary candidates.
        self.fine = mask_from_loudness(self.loudness, self.hop, fill_gap_s=0.0, min_speech_s=0.03, hangover_s=0.0)
        # Coarse: pauses inside words filled, for deciding whether anything was said at all.
        self.coarse = mask_from_loudness(self.loudness, self.hop)
        self._speech_before = np.concatenate([[0], np.cumsum(self.fine)])
        edges = np.diff(np.concatenate([[False], self.fine, [False]]).astype(np.int8))
        self.onsets = np.flatnonzero(edges == 1) * self.hop
        self.offsets = np.flatnonzero(edges == -1) * self.hop
        self.onset_set, self.offset_set = set(self.onsets.tolist()), set(self.offsets.tolist())
        self.dips = self._dips(options.min_dip_db)

    def speech_s(self, start: float, end: float) -> float:
        """Seconds of (fine) speech in [start, end)."""
        first, last = self._frame(start), self._frame(end)
        return float(self._speech_before[last] - self._speech_before[first]) * self.hop if last > first else 0.0

    def any_speech(self, start: float, end: float) -> bool:
        return bool(self.coarse[self._frame(start) : max(self._frame(end), self._frame(start) + 1)].any())

    def _frame(self, t: float) -> int:
        return min(max(round(t / self.hop), 0), len(self.fine))

    def _dips(self, min_dip_db: float) -> np.ndarray:
        """Times (frame starts) of loudness minima inside speech, at least `min_dip_db` deep on both sides."""
        reach = max(1, round(0.08 / self.hop))  # a syllable's worth of context each side
        loud = self.loudness
        if len(loud) < 3:
            return np.zeros(0)
        padded = np.pad(loud, reach, constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(padded, reach)
        peak_before = windows[: len(loud)].max(axis=1)  # frames i - reach .. i - 1
        peak_after = windows[reach + 1 : reach + 1 + len(loud)].max(axis=1)  # frames i + 1 .. i + reach
        is_minimum = np.zeros(len(loud), dtype=bool)
        is_minimum[1:-1] = (loud[1:-1] <= loud[:-2]) & (loud[1:-1] < loud[2:])
        deep = np.minimum(peak_before, peak_after) - loud >= min_dip_db
        return np.flatnonzero(is_minimum & deep & self.fine) * self.hop


def _drop_hallucinations(
    segments: list[Segment], speech: SpeechEvidence, options: StabilizeOptions, counts: dict[str, int]
) -> list[Segment]:
    """Remove words over no speech that look invented; a word over speech is never removed."""
    kept_segments = []
    for segment in segments:
        silent_segment = not speech.any_speech(segment.start - options.max_shift_s, segment.end + options.max_shift_s)
        unsure = (segment.no_speech_prob or 0.0) >= options.no_speech_threshold
        margin = options.speech_margin_s
        kept = [
            w
            for w in segment.words
            if speech.any_speech(w.start - margin, w.end + margin)
            or not (silent_segment or unsure or w.probability < options.min_word_probability)
        ]
        counts["words_dropped"] += len(segment.words) - len(kept)
        if kept:
            if len(kept) < len(segment.words):
                segment = replace(segment, words=kept, text=_text_of(kept))
            kept_segments.append(segment)
        else:
            counts["segments_dropped"] += 1
    return kept_segments


def _order_in_window(words: list[Word], window_start: float, window_end: float, min_word_s: float) -> None:
    """Make the engine times of words (in text order) monotonic, non-overlapping, inside the
    window and at least `min_word_s` long.

    Engines stack words on one instant or let them overlap; this gives the alignment a
    consistent fallback for every word.
    """
    previous_end = window_start
    for word in words:
        word.start = min(max(word.start, previous_end), window_end)
        word.end = min(max(word.end, word.start + min_word_s), window_end)
        previous_end = word.end


def _engine_lag(
    groups: list[tuple[float, float, list[Word]]], speech: SpeechEvidence, options: StabilizeOptions
) -> tuple[float, float]:
    """Median (engine time - pause edge) of word starts and of word ends, from a trial alignment.

    Zero when fewer than `min_lag_samples` boundaries landed on pause edges.
    """
    start_shifts, end_shifts = [], []
    for start, end, words in groups:
        trial = [replace(w) for w in words]
        _align_window(trial, start, end, speech, options, 0.0, 0.0)
        for before, after in zip(words, trial):
            if after.start in speech.onset_set:
                start_shifts.append(before.start - after.start)
            if after.end in speech.offset_set:
                end_shifts.append(before.end - after.end)

    def robust(shifts: list[float]) -> float:
        if len(shifts) < options.min_lag_samples:
            return 0.0
        return float(np.clip(np.median(shifts), -options.max_lag_s, options.max_lag_s))

    return robust(start_shifts), robust(end_shifts)


@dataclass
class _Candidates:
    """Options for one boundary: where the word before it ends and the word after it starts."""

    end_of_previous: np.ndarray
    start_of_next: np.ndarray
    cost: np.ndarray


def _align_window(
    words: list[Word],
    window_start: float,
    window_end: float,
    speech: SpeechEvidence,
    options: StabilizeOptions,
    start_lag: float,
    end_lag: float,
) -> None:
    """Re-place the boundaries of one window's ordered words, in place (see the module docstring).

    Candidates are judged against the engine's times less its measured lag; the fallback for
    each boundary is the engine's own time.
    """
    starts = np.array([w.start for w in words]) - start_lag
    ends = np.array([w.end for w in words]) - end_lag
    # Boundary i lies before words[i]; boundary 0 is the first start, boundary len(words) the last end.
    boundaries = [_first_start_candidates(words[0], starts[0], window_start, speech, options)]
    for i in range(1, len(words)):
        boundaries.append(
            _inner_candidates(words[i - 1], words[i], ends[i - 1], starts[i], window_start, window_end, speech, options)
        )
    boundaries.append(_last_end_candidates(words[-1], ends[-1], window_end, speech, options))
    expected = _expected_durations(words, starts[0], ends[-1], window_start, window_end, speech, options)

    # Viterbi over boundaries: total[c] = best cost of boundaries 0..i with boundary i at candidate c.
    total = boundaries[0].cost
    back = []
    for i in range(1, len(boundaries)):
        previous, current = boundaries[i - 1], boundaries[i]
        duration = current.end_of_previous[None, :] - previous.start_of_next[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            duration_cost = options.duration_weight * np.abs(np.log(duration / expected[i - 1]))
        step = total[:, None] + np.where(duration >= options.min_word_s - 1e-9, duration_cost, np.inf)
        best = np.argmin(step, axis=0)
        total = step[best, np.arange(len(best))] + current.cost
        back.append(best)
    choice = [int(np.argmin(total))]
    if not np.isfinite(total[choice[0]]):
        return  # only where the window is too short for its words: they keep the engine's times
    for best in reversed(back):
        choice.append(int(best[choice[-1]]))
    choice.reverse()
    for i, word in enumerate(words):
        word.start = float(boundaries[i].start_of_next[choice[i]])
        word.end = float(boundaries[i + 1].end_of_previous[choice[i + 1]])


def _expected_durations(
    words: list[Word],
    first_start: float,
    last_end: float,
    window_start: float,
    window_end: float,
    speech: SpeechEvidence,
    options: StabilizeOptions,
) -> np.ndarray:
    """Each word's likely duration: the speech around the words shared out by word length in letters.

    Lets the alignment tell a two-letter word stretched over its neighbour from the right one.
    """
    letters = np.array([sum(c.isalnum() for c in w.word) for w in words], dtype=np.float64)
    weight = letters + options.letters_per_word_onset
    span_start = max(window_start, first_start - options.max_shift_s)
    span_end = min(window_end, last_end + options.max_shift_s)
    spoken = max(speech.speech_s(span_start, span_end), options.min_word_s * len(words))
    return spoken / weight.sum() * weight


def _first_start_candidates(
    word: Word, predicted: float, window_start: float, speech: SpeechEvidence, options: StabilizeOptions
) -> _Candidates:
    """Speech onsets near the first word's (lag-corrected) start, and its engine start."""
    reach = options.max_shift_s
    near = (speech.onsets >= max(window_start, predicted - reach)) & (speech.onsets <= predicted + reach)
    starts = np.append(speech.onsets[near], word.start)
    cost = np.abs(starts - predicted)
    cost[-1] = options.keep_cost_s
    # Speech just before the first word is speech no word covers.
    cost += options.uncovered_speech_cost * np.array([speech.speech_s(max(window_start, t - reach), t) for t in starts])
    return _Candidates(np.full(len(starts), np.nan), starts, cost)


def _last_end_candidates(
    word: Word, predicted: float, window_end: float, speech: SpeechEvidence, options: StabilizeOptions
) -> _Candidates:
    """Speech offsets near the last word's (lag-corrected) end, and its engine end."""
    reach = options.max_shift_s
    near = (speech.offsets >= predicted - reach) & (speech.offsets <= min(window_end, predicted + reach))
    ends = np.append(speech.offsets[near], word.end)
    cost = np.abs(ends - predicted)
    cost[-1] = options.keep_cost_s
    cost += options.uncovered_speech_cost * np.array([speech.speech_s(t, min(window_end, t + reach)) for t in ends])
    return _Candidates(ends, np.full(len(ends), np.nan), cost)


def _inner_candidates(
    before: Word,
    after: Word,
    predicted_end: float,
    predicted_start: float,
    window_start: float,
    window_end: float,
    speech: SpeechEvidence,
    options: StabilizeOptions,
) -> _Candidates:
    """Pauses (offset, later onset), dips and the engine's own times for the boundary between two words.

    Distances count from the pause the engine left between the words (lag-corrected; a point
    when it left none): anywhere inside that pause is as good as its edges.
    """
    reach = options.max_shift_s
    pause_start, pause_end = sorted((predicted_end, predicted_start))
    lo, hi = max(window_start, pause_start - reach), min(window_end, pause_end + reach)

    def distance(t: np.ndarray | float) -> np.ndarray | float:
        return np.maximum(0.0, np.maximum(pause_start - t, t - pause_end))

    offsets = speech.offsets[(speech.offsets >= lo) & (speech.offsets <= hi)]
    onsets = speech.onsets[(speech.onsets >= lo) & (speech.onsets <= hi)]
    ends, starts, costs = [], [], []
    for offset in offsets:
        for onset in onsets[onsets >= offset]:
            ends.append(offset)
            starts.append(onset)
            costs.append(
                distance(offset)
                + distance(onset)
                + options.uncovered_speech_cost * speech.speech_s(offset, onset)
                - options.pause_bonus * min(onset - offset, options.pause_bonus_cap_s)
            )
    dips = speech.dips[(speech.dips >= lo) & (speech.dips <= hi)]
    ends.extend(dips)
    starts.extend(dips)
    costs.extend(2 * distance(dips) + options.dip_cost_s)
    ends.append(before.end)
    starts.append(after.start)
    costs.append(options.keep_cost_s + options.uncovered_speech_cost * speech.speech_s(before.end, after.start))
    return _Candidates(np.array(ends), np.array(starts), np.array(costs))


def _trim_to_speech(word: Word, speech: SpeechEvidence, options: StabilizeOptions) -> None:
    """Move a start that lies in non-speech forward, and an end back, to the word's own speech."""
    hop = speech.hop
    first, last = round(word.start / hop), round(word.end / hop)
    inside = np.flatnonzero(speech.fine[first:last])
    if len(inside) == 0:
        return  # no speech to trim to: the word keeps its engine time
    start = (first + inside[0]) * hop
    end = (first + inside[-1] + 1) * hop
    if end - start >= options.min_word_s:
        word.start, word.end = max(word.start, start), min(word.end, end)


def _split_at_pauses(segments: list[Segment], options: StabilizeOptions, counts: dict[str, int]) -> list[Segment]:
    """Re-split segments at long pauses; each segment's times become its words' span."""
    result = []
    for segment in segments:
        if not segment.words:
            continue
        parts = [[segment.words[0]]]
        for previous, word in zip(segment.words, segment.words[1:]):
            if word.start - previous.end >= options.split_pause_s:
                parts.append([])
            parts[-1].append(word)
        counts["segments_split"] += len(parts) - 1
        for words in parts:
            text = segment.text if len(parts) == 1 else _text_of(words)
            result.append(replace(segment, start=words[0].start, end=words[-1].end, text=text, words=words))
    return result


def _text_of(words: list[Word]) -> str:
    return " ".join(w.word for w in words)


def options_from_profile(settings: Mapping[str, Any]) -> StabilizeOptions:
    """The profile's `stabilization` section over the tuned defaults (unset keys keep them)."""
    return replace(StabilizeOptions(), **{k: v for k, v in settings.items() if v is not None})


@task(name="stabilize", task_run_name="stabilize {decoded.source}")
def stabilize_task(
    transcript_path: str, decoded: DecodedAudio, windows: list[Window], settings: Mapping[str, Any]
) -> str:
    """Stabilize one file's transcript; returns the path of the stabilized transcript."""
    transcript = Transcript.load(transcript_path)
    options = options_from_profile(settings)
    if options.enabled:
        transcript = stabilize(transcript, load_pcm(decoded.pcm_path), options, windows)
    return transcript.save(Path(transcript_path).with_suffix(".stable.json"))
