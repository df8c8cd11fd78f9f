"""Stabilize stage: drop what no one said, and put word times on the speech.

Word times come from the engine's alignment (DTW over the checkpoint's alignment heads). On real
speech those times are the best evidence there is: words run into each other without silence,
and the loudness of the audio marks word edges poorly (moving edges to loudness gaps made 20% of
real words miss 200 ms). So this stage moves an edge only on evidence that held on real word-timed
recordings (tests/fixtures/real) and on the synthetic fixtures alike:

1. drops a word as a hallucination only when two independent signals agree: the VAD
   (steadyscribe.vad) is confident that no speech lies under the whole word, and the model's
   own evidence is weak. When that would drop more than `max_drop_share` of a file's words,
   the VAD is wrong there (whispered speech, for one): all are kept and the file says so.
   A segment whose words the alignment stacked on one instant (no audio holds them) is dropped;
2. takes out the steady lag of DTW word times (they trail the audio by about 90 ms);
3. moves an edge that lies in a pause the VAD found onto that pause's edge, and where a pause
   lies inside one word, gives the word the larger side of it (the rest was a pause or a
   filler the model left out of the text). A word that DTW collapsed to an instant right after
   a pause starts again at the speech onset; a word too long at a sentence boundary (a filler
   beside it) is cut on that side. Edges never leave the window the engine decoded;
4. re-splits segments at long pauses.

Nothing here depends on the engine: it needs only a Transcript, the file's samples (or the VAD's
frame probabilities of them) and, optionally, the windows the engine decoded.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.pcm import load_pcm
from steadyscribe.profiles import Stabilization
from steadyscribe.records import DecodedAudio, Segment, StabilizationCounts, Transcript, Window, Word
from steadyscribe.speech import true_runs
from steadyscribe.tasks.chunk import skipped_seconds
from steadyscribe.text import ends_sentence
from steadyscribe.vad import (
    FRAME_S,
    VadThresholds,
    confidently_silent,
    file_probabilities,
    speech_frames,
    speech_probabilities,
)


@dataclass(frozen=True)
class StabilizeOptions:
    enabled: bool = True
    min_word_s: float = 0.05
    # Whisper's DTW word times trail the audio. Measured median lag (seconds) of starts and
    # ends against word-timed real speech and the synthetic fixtures: 0.08-0.10 for the
    # whisper, transformers and ctranslate2 engines alike (tiny.en).
    dtw_lag_s: float = 0.09
    min_pause_s: float = 0.1  # a VAD pause at least this long can hold a word edge
    # Silero marks speech onsets about one 32 ms frame late.
    onset_lead_s: float = 0.032
    drop_hallucinations: bool = True
    # A word is dropped only when two independent signals agree: the VAD is confident that no
    # speech lies under the whole word, and the model's own evidence for it is weak (its
    # probability below min_word_probability, its segment's no_speech_prob at or above
    # no_speech_threshold, or its segment's avg_logprob below logprob_threshold).
    no_speech_threshold: float = 0.6
    min_word_probability: float = 0.2
    logprob_threshold: float = -1.0
    # When the filter would remove more than this share of a file's words, the detector is
    # wrong there, not the model: every word is kept and the file gets a warning.
    max_drop_share: float = 0.1
    # A segment of at least this many words most of which (unheard_share) the alignment stacked
    # on one instant is text the audio does not hold: dropped whatever the VAD says.
    min_unheard_words: int = 3
    unheard_share: float = 0.8
    split_pause_s: float = 1.0  # a pause this long between words starts a new segment
    # A word lasts at most twice its window's median word length (the median capped at this):
    # a word DTW collapsed after a pause gets that much back, one at a sentence boundary is cut to it.
    max_word_median_s: float = 0.35


def stabilize(
    transcript: Transcript,
    samples: np.ndarray,
    options: StabilizeOptions | None = None,
    windows: list[Window] | None = None,
    probabilities: np.ndarray | None = None,
    thresholds: VadThresholds = VadThresholds(),
) -> Transcript:
    """A new Transcript whose word and segment times lie on the speech in `samples`.

    `probabilities`: the VAD's frame probabilities of `samples` (computed when not given).
    `transcript.stabilization` of the result counts words_moved, words_dropped,
    segments_dropped and segments_split; a filter that was overruled leaves a warning.
    """
    options = options or StabilizeOptions()
    segments = [replace(s, words=[replace(w) for w in s.words]) for s in transcript.segments]
    if not options.enabled:
        return replace(transcript, segments=segments)

    probs = speech_probabilities(samples) if probabilities is None else probabilities
    duration = len(samples) / SAMPLE_RATE
    spans = [(w.start, min(w.end, duration)) for w in windows] if windows else [(0.0, duration)]
    counts = replace(transcript.stabilization, words_moved=0, words_dropped=0, segments_dropped=0, segments_split=0)
    warnings = list(transcript.warnings)

    original = {id(w): (w.start, w.end) for s in segments for w in s.words}
    if options.drop_hallucinations:
        segments = _drop_unheard(segments, options, counts)
        segments, warning = _drop_hallucinations(segments, probs, thresholds, options, counts)
        warnings += [warning] if warning else []
    words = [w for s in segments for w in s.words]
    pauses = _pauses(probs, thresholds, options.min_pause_s)
    # Each word belongs to the window its middle falls in (the nearest one outside them all); in
    # transcript order, since the text's order is right even where the engine's times are not.
    starts = [start for start, _ in spans]
    by_window: dict[int, list[Word]] = {}
    for word in words:
        index = max(bisect.bisect_right(starts, (word.start + word.end) / 2) - 1, 0)
        by_window.setdefault(index, []).append(word)
    for index, inside in by_window.items():
        _place_in_window(inside, *spans[index], pauses, options)
    counts.words_moved = sum(
        bool(abs(w.start - original[id(w)][0]) > 1e-6 or abs(w.end - original[id(w)][1]) > 1e-6) for w in words
    )
    segments = _split_at_pauses(segments, options, counts)
    return replace(transcript, segments=segments, stabilization=counts, warnings=warnings)


def _pauses(probs: np.ndarray, thresholds: VadThresholds, min_pause_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of the VAD's non-speech runs of at least `min_pause_s`."""
    runs = true_runs(~speech_frames(probs, thresholds))
    return [(a * FRAME_S, b * FRAME_S) for a, b in runs if (b - a) * FRAME_S >= min_pause_s - 1e-9]


def _drop_hallucinations(
    segments: list[Segment],
    probs: np.ndarray,
    thresholds: VadThresholds,
    options: StabilizeOptions,
    counts: StabilizationCounts,
) -> tuple[list[Segment], str | None]:
    """Remove the words that both the VAD and the model disown (see StabilizeOptions).

    Returns the kept segments and, when the filter was overruled because it would remove too
    large a share of the file's words, a warning for the file's row.
    """
    total = sum(len(s.words) for s in segments)
    keep = [
        [w for w in segment.words if not _disowned(w, segment, probs, thresholds, options)] for segment in segments
    ]
    dropped = total - sum(len(k) for k in keep)
    if dropped and dropped > options.max_drop_share * total:
        return segments, (
            f"kept {dropped} of {total} words that the hallucination filter would have dropped "
            f"(VAD found no speech under them and the model was unsure): more than "
            f"{options.max_drop_share:.0%} of the file, so the speech detector is more likely wrong than the model"
        )
    counts.words_dropped += dropped
    kept_segments = []
    for segment, kept in zip(segments, keep):
        if kept:
            kept_segments.append(segment if len(kept) == len(segment.words) else replace(segment, words=kept, text=_text_of(kept)))
        elif segment.words:
            counts.segments_dropped += 1
    return kept_segments, None


def _drop_unheard(segments: list[Segment], options: StabilizeOptions, counts: StabilizationCounts) -> list[Segment]:
    """Remove the segments for most of whose words the alignment found no audio (it stacks them on
    one instant): a decoding that went on past the speech, typically repeating its prompt's last
    sentence at a window's end (base, beam 5, a 3.7 s last window of real speech)."""
    kept = []
    for segment in segments:
        stacked = sum(_collapsed(w, options) for w in segment.words)
        if len(segment.words) >= options.min_unheard_words and stacked >= options.unheard_share * len(segment.words):
            counts.words_dropped += len(segment.words)
            counts.segments_dropped += 1
        else:
            kept.append(segment)
    return kept


def _collapsed(word: Word, options: StabilizeOptions) -> bool:
    """Whether DTW gave the word (next to) no time."""
    return word.end - word.start < options.min_word_s


def _disowned(
    word: Word, segment: Segment, probs: np.ndarray, thresholds: VadThresholds, options: StabilizeOptions
) -> bool:
    """Confident VAD silence under the whole word, and weak evidence from the model."""
    weak = (
        word.probability < options.min_word_probability
        or (segment.no_speech_prob or 0.0) >= options.no_speech_threshold
        or (segment.avg_logprob is not None and segment.avg_logprob < options.logprob_threshold)
    )
    return weak and confidently_silent(probs, word.start, word.end, thresholds)


def _place_in_window(
    words: list[Word],
    window_start: float,
    window_end: float,
    pauses: list[tuple[float, float]],
    options: StabilizeOptions,
) -> None:
    """Re-place one window's words (in text order), in place: lag out, edges out of pauses, in order."""
    lag = options.dtw_lag_s
    collapsed = [_collapsed(word, options) for word in words]
    for word in words:
        word.start, word.end = word.start - lag, word.end - lag
    _order_in_window(words, window_start, window_end, options.min_word_s)
    near = [(a, b) for a, b in pauses if b > window_start and a < window_end]
    for word in words:
        _snap_to_pauses(word, near, window_start, window_end, options)
    longest = _longest_word_s(words, collapsed, options)
    _reopen_collapsed_onsets(words, collapsed, near, window_start, longest, options)
    _truncate_at_sentence_ends(words, longest)
    _order_in_window(words, window_start, window_end, options.min_word_s)


def _longest_word_s(words: list[Word], collapsed: list[bool], options: StabilizeOptions) -> float:
    """How long a word of this window may plausibly last: twice its median word length (the
    median capped at `max_word_median_s`), as openai-whisper's timing bounds words."""
    lengths = [w.end - w.start for w, squeezed in zip(words, collapsed) if not squeezed]
    median = float(np.median(lengths)) if lengths else options.max_word_median_s
    return 2 * min(median, options.max_word_median_s)


def _truncate_at_sentence_ends(words: list[Word], longest: float) -> None:
    """Cut a word longer than `longest` on its side that faces a sentence boundary.

    Whisper writes no fillers, so DTW gives the "uh" after "one." to "one." and the "um" before
    "So" to "So". A sentence's last word keeps its start, the next sentence's first word keeps its
    end (openai-whisper's timing does the same; the batched engines' alignment does not).
    """
    for previous, word in zip([None, *words], words):
        if word.end - word.start <= longest:
            continue
        if ends_sentence(word.word):
            word.end = word.start + longest
        elif previous is not None and ends_sentence(previous.word):
            word.start = word.end - longest


def _reopen_collapsed_onsets(
    words: list[Word],
    collapsed: list[bool],
    pauses: list[tuple[float, float]],
    window_start: float,
    longest: float,
    options: StabilizeOptions,
) -> None:
    """Give a word that DTW collapsed to an instant, right after a pause, the speech from the pause's end.

    DTW squeezes the first word of a turn into the next one's onset (a zero-length "And" 0.5 s
    after the speech resumed); its end is right, its start is not. The start goes back to the
    VAD's onset, but never more than `longest` before its end (openai-whisper caps first words
    of segments the same way) nor before the previous word.
    """
    previous_end = window_start
    for word, squeezed in zip(words, collapsed):
        # The pauses between the previous word and this one; the word may start on the last one's end.
        between = [b for a, b in pauses if a >= previous_end - options.min_pause_s and b <= word.start + options.onset_lead_s]
        if squeezed and between:
            word.start = min(word.start, max(between[-1] - options.onset_lead_s, word.end - longest, previous_end))
        previous_end = word.end


def _snap_to_pauses(
    word: Word, pauses: list[tuple[float, float]], window_start: float, window_end: float, options: StabilizeOptions
) -> None:
    """A start inside a pause moves to the speech after it, an end inside a pause to the speech
    before it; a pause inside the word leaves the word its larger side. Each move keeps the word
    at least `min_word_s` long and inside the window."""
    for pause_start, pause_end in pauses:
        onset = min(max(pause_end - options.onset_lead_s, window_start), window_end)
        offset = min(max(pause_start, window_start), window_end)
        if pause_start <= word.start < pause_end:
            if onset <= word.end - options.min_word_s:
                word.start = onset
        elif pause_start < word.end <= pause_end:
            if offset >= word.start + options.min_word_s:
                word.end = offset
        elif word.start < pause_start and pause_end < word.end:
            if pause_start - word.start < word.end - pause_end:
                word.start = max(onset, word.start)
            else:
                word.end = offset


def _order_in_window(words: list[Word], window_start: float, window_end: float, min_word_s: float) -> None:
    """Make the times of words (in text order) monotonic, non-overlapping, inside the window and
    at least `min_word_s` long (engines stack words on one instant or let them overlap)."""
    previous_end = window_start
    for word in words:
        word.start = min(max(word.start, previous_end), window_end)
        word.end = min(max(word.end, word.start + min_word_s), window_end)
        previous_end = word.end
    # Words pushed against the window's end would end up with no duration: walk back and give
    # each room before the next one.
    next_start = window_end
    for word in reversed(words):
        word.end = min(word.end, next_start)
        if word.start >= word.end:
            word.start = max(window_start, word.end - min_word_s)
        next_start = word.start


def _split_at_pauses(segments: list[Segment], options: StabilizeOptions, counts: StabilizationCounts) -> list[Segment]:
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
        counts.segments_split += len(parts) - 1
        for words in parts:
            text = segment.text if len(parts) == 1 else _text_of(words)
            result.append(replace(segment, start=words[0].start, end=words[-1].end, text=text, words=words))
    return result


def _text_of(words: list[Word]) -> str:
    return " ".join(w.word for w in words)


def options_from_profile(settings: Stabilization) -> StabilizeOptions:
    """The profile's `stabilization` block over the tuned defaults (unset keys keep them)."""
    return replace(StabilizeOptions(), **{k: v for k, v in settings.model_dump().items() if v is not None})


def stabilize_file(
    transcript_path: str,
    decoded: DecodedAudio,
    windows: list[Window],
    settings: Stabilization,
    vad: VadThresholds = VadThresholds(),
) -> str:
    """Stabilize one file's transcript; returns the path of the stabilized transcript.

    The seconds that no window covers (skipped by the chunk stage as confidently silent) are
    counted as skipped_ms whether or not the stage is enabled.
    """
    transcript = Transcript.load(transcript_path)
    options = options_from_profile(settings)
    if options.enabled:
        samples = load_pcm(decoded.pcm_path)
        transcript = stabilize(
            transcript,
            samples,
            options,
            windows,
            probabilities=file_probabilities(decoded.pcm_path, samples),
            thresholds=vad,
        )
    skipped_ms = round(1000 * skipped_seconds(decoded.duration_s, windows))
    transcript = replace(transcript, stabilization=replace(transcript.stabilization, skipped_ms=skipped_ms))
    return transcript.save(Path(transcript_path).with_suffix(".stable.json"))


@task(name="stabilize")
def stabilize_task(
    transcript_paths: Mapping[str, str],
    units: Mapping[str, DecodedAudio],
    windows: Mapping[str, list[Window]],
    settings: Stabilization,
    vad: VadThresholds = VadThresholds(),
) -> dict[str, str]:
    """stabilize_file for each unit of a group (one task run per group); paths of the stabilized transcripts, by unit id."""
    return {
        unit_id: stabilize_file(transcript_paths[unit_id], unit, windows[unit_id], settings, vad)
        for unit_id, unit in units.items()
    }
