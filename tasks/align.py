"""Align stage (known text): word times for a text the user already has, instead of transcribing.

For each audio file, a text file beside it (same name, `text_suffix` instead of the audio's
extension) holds what was said. Per file:

1. the text is split across the file's windows (tasks/chunk.py). A file of one window takes it
   all. A longer file is first transcribed (the engine's normal pass), and the text's words are
   matched in order to the words heard (steadyscribe.metrics.align_words); a word takes the
   window of the heard word it matches, and the unmatched words between two matches are shared
   between their windows in proportion to the unmatched heard words in each. Windows the chunk
   stage skipped as confidently silent get no text, so no text is forced onto them;
2. the engine aligns each window's share of the text to its audio (`align(window, text)`: DTW
   over the alignment heads, the same machinery that times transcribed words);
3. the stabilize stage refines the times (DTW lag out, edges out of VAD pauses), with its
   hallucination filter off: a given text is judged here instead;
4. `judge_alignment` keeps a word only when it was aligned with confidence: the model gives its
   tokens a probability of at least `min_word_probability` given the audio and the text before
   it, and the VAD is not confident that the word lies on silence. Words that fail stay in their
   segment's text but not in `words`; the file's row names how many, its `aligned_share`, and
   the first of them. Below `min_aligned_share` the text does not belong to the audio: the file
   fails with an error that says so, and nothing of it is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from steadyscribe.metrics import align_words
from steadyscribe.records import DecodedAudio, Plan, Segment, Transcript, Window, Word
from steadyscribe.storage import filesystem_for, with_retries
from steadyscribe.tasks.decode import load_pcm
from steadyscribe.tasks.infer import InferenceResult, _inference_lock, cached_engine, transcribe_files, window_stream
from steadyscribe.tasks.stabilize import stabilize_task
from steadyscribe.vad import VadThresholds, confidently_silent, file_probabilities

# Engines that implement `align(items)` (steadyscribe.engines.ctranslate2_engine).
ALIGNING_ENGINES = ("ctranslate2",)


@dataclass(frozen=True)
class AlignOptions:
    # Measured on tiny.en int8 over the word-timed real recordings (tests/test_align.py): the text's
    # own words have a median word probability of ~0.9, a text of another recording ~0.05.
    min_word_probability: float = 0.15
    # Below this share of confidently aligned words the text is not a transcript of the audio.
    min_aligned_share: float = 0.5
    warning_words: int = 10  # unaligned words quoted in the file's warning


def text_source(source: str, suffix: str) -> str:
    """The text file that belongs to an audio source: its name with `suffix` for its extension."""
    directory, _, name = source.rpartition("/")
    stem = name.rpartition(".")[0] or name
    return f"{directory}/{stem}{suffix}" if directory else f"{stem}{suffix}"


def read_texts(decoded: list[DecodedAudio], suffix: str) -> dict[str, str]:
    """file id -> the text beside each decoded file; a file without a readable, non-empty text fails."""
    texts: dict[str, str] = {}
    for item in decoded:
        if item.status != "ok":
            continue
        path = text_source(item.source, suffix)
        try:
            fs, inner = filesystem_for(path)
            text = with_retries(lambda: fs.cat_file(inner)).decode("utf-8")
        except FileNotFoundError:
            item.status, item.error = "failed", f"{item.source}: no text to align: {path} does not exist (align reads the text of each audio file from the file of the same name with the suffix {suffix!r})"
            continue
        except (OSError, UnicodeDecodeError) as error:
            item.status, item.error = "failed", f"{item.source}: cannot read its text {path}: {error}"
            continue
        if not text.split():
            item.status, item.error = "failed", f"{item.source}: its text {path} is empty: nothing to align"
            continue
        texts[item.file_id] = " ".join(text.split())
    return texts


def assign_words_to_windows(text_words: list[str], heard: list[tuple[str, int]]) -> list[int | None]:
    """The window (index into the file's windows) each text word belongs to, from the words heard there.

    `heard`: the transcription's words in order, each with the index of its window. A text word
    matched to a heard word takes its window; unmatched words between two matches are shared
    between the windows from the first match's to the second's, in proportion to the unmatched
    heard words each holds there (in order, so the text stays in order across windows); words
    before the first match take its window, words after the last take the last's. Without any
    match, nothing can be placed: every word gets None.
    """
    pairs = align_words([{"word": w} for w in text_words], [{"word": w} for w, _ in heard])
    windows: list[int | None] = [None] * len(text_words)
    if not pairs:
        return windows
    for text_index, heard_index in pairs:
        windows[text_index] = heard[heard_index][1]
    anchors = [(-1, -1)] + pairs + [(len(text_words), len(heard))]
    for (t0, h0), (t1, h1) in zip(anchors, anchors[1:]):
        gap = list(range(t0 + 1, t1))
        if not gap:
            continue
        if t0 < 0:
            windows[t0 + 1 : t1] = [heard[h1][1]] * len(gap)
        elif t1 >= len(text_words):
            windows[t0 + 1 : t1] = [heard[h0][1]] * len(gap)
        else:
            windows[t0 + 1 : t1] = _share_gap(len(gap), heard[h0][1], heard[h1][1], [w for _, w in heard[h0 + 1 : h1]])
    return windows


def _share_gap(count: int, first: int, last: int, heard_between: list[int]) -> list[int]:
    """`count` unmatched text words between windows `first` and `last`, shared as the heard words between are."""
    if first == last:
        return [first] * count
    weights = np.array([heard_between.count(w) for w in range(first, last + 1)], dtype=np.float64)
    if weights.sum() == 0:  # nothing heard between the anchors: split the words between the two
        weights[0] = weights[-1] = 1.0
    # The k-th word goes to the window whose cumulative share its position falls in.
    bounds = np.cumsum(weights) / weights.sum() * count
    return [first + int(np.searchsorted(bounds, k + 0.5)) for k in range(count)]


def split_text(text: str, windows: list[Window], heard: Transcript | None) -> dict[int, str]:
    """Window index -> the words of `text` that belong to it (see assign_words_to_windows)."""
    words = text.split()
    if not windows:
        return {}
    if len(windows) == 1 or heard is None:
        return {windows[0].index: " ".join(words)}
    starts = [w.start for w in windows]
    heard_words = [(w.word, _window_of((w.start + w.end) / 2, starts)) for w in heard.words]
    assigned = assign_words_to_windows(words, heard_words)
    shares: dict[int, list[str]] = {}
    for word, position in zip(words, assigned):
        if position is not None:
            shares.setdefault(windows[position].index, []).append(word)
    return {index: " ".join(share) for index, share in shares.items()}


def _window_of(time_s: float, starts: list[float]) -> int:
    return max(int(np.searchsorted(starts, time_s, side="right")) - 1, 0)


def align_files(
    engine: Any,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    texts: Mapping[str, str],
    work_dir: str | Path,
) -> dict[str, InferenceResult]:
    """Align every file's text to its audio with `engine`; one raw aligned transcript JSON per file.

    Files of several windows are transcribed first, to split their text across the windows.
    A file whose text could not be placed at all gets a transcript without words (it then fails
    in judge_alignment). Its words_n of the text are kept in `stabilization["text_words"]`.
    """
    started = time.perf_counter()
    by_file: dict[str, list[Window]] = {}
    for window in windows:
        by_file.setdefault(window.file_id, []).append(window)
    several = {file_id: d for file_id, d in decoded.items() if len(by_file.get(file_id, [])) > 1}
    heard: dict[str, Transcript] = {}
    if several:
        several_windows = [w for w in windows if w.file_id in several]
        for file_id, result in transcribe_files(engine, several, several_windows, work_dir).items():
            heard[file_id] = Transcript.load(result.transcript_path)
    shares = {file_id: split_text(texts[file_id], by_file.get(file_id, []), heard.get(file_id)) for file_id in decoded}
    items = (
        (audio, shares[audio.window.file_id][audio.window.index])
        for audio in window_stream(decoded, [w for w in windows if w.index in shares.get(w.file_id, {})])
    )
    segments: dict[str, list[tuple[int, list[Segment]]]] = {file_id: [] for file_id in decoded}
    languages: dict[str, str | None] = {}
    for result in engine.align(items):
        segments[result.window.file_id].append((result.window.index, result.segments))
        languages.setdefault(result.window.file_id, result.language)
    total_s = time.perf_counter() - started
    total_audio = sum(d.duration_s for d in decoded.values()) or 1.0
    out = {}
    for file_id, item in decoded.items():
        transcript = Transcript(
            file_id=file_id,
            language=languages.get(file_id),
            segments=[s for _, window_segments in sorted(segments[file_id], key=lambda p: p[0]) for s in window_segments],
            batch_size=engine.batch_size,
            stabilization={"text_words": len(texts[file_id].split())},
        )
        path = transcript.save(Path(work_dir) / f"{file_id}.aligned.json")
        out[file_id] = InferenceResult(file_id, path, total_s * item.duration_s / total_audio)
    return out


def judge_alignment(
    transcript: Transcript,
    probabilities: np.ndarray,
    thresholds: VadThresholds = VadThresholds(),
    options: AlignOptions = AlignOptions(),
) -> tuple[Transcript, str | None]:
    """Keep the words aligned with confidence; (transcript, error) where error is set when the text
    does not belong to the audio (too small a share aligned).

    The share is of the text's words (`stabilization["text_words"]`), so text that never reached
    an alignment (no speech in the audio, or no window for it) counts as not aligned.
    """
    text_words = transcript.stabilization.get("text_words", len(transcript.words))
    kept_segments, unaligned = [], []
    for segment in transcript.segments:
        kept = [w for w in segment.words if _confident(w, probabilities, thresholds, options)]
        unaligned += [w.word for w in segment.words if w not in kept]
        if kept:
            kept_segments.append(replace(segment, start=kept[0].start, end=kept[-1].end, words=kept))
    aligned = sum(len(s.words) for s in kept_segments)
    share = aligned / text_words if text_words else 0.0
    counts = {**transcript.stabilization, "words_aligned": aligned}
    warnings = list(transcript.warnings)
    if aligned < text_words:
        quoted = ", ".join(repr(w) for w in unaligned[: options.warning_words])
        more = f" and {len(unaligned) - options.warning_words} more" if len(unaligned) > options.warning_words else ""
        warnings.append(
            f"{text_words - aligned} of {text_words} words of the text were not aligned with confidence "
            f"(the audio does not say them, or they fall where the VAD hears no speech) and are not in `words`"
            + (f": {quoted}{more}" if unaligned else "")
        )
    judged = replace(transcript, segments=kept_segments, stabilization=counts, warnings=warnings)
    if share < options.min_aligned_share:
        return judged, (
            f"the text does not match the audio: only {aligned} of its {text_words} words ({share:.0%}) "
            f"were aligned with confidence (at least {options.min_aligned_share:.0%} needed); "
            "check that the text file belongs to this recording"
        )
    return judged, None


def _confident(word: Word, probabilities: np.ndarray, thresholds: VadThresholds, options: AlignOptions) -> bool:
    return word.probability >= options.min_word_probability and not confidently_silent(
        probabilities, word.start, word.end, thresholds
    )


@task(name="align", tags=["inference"], cache_policy=NO_CACHE)
def align_task(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    texts: dict[str, str],
    work_dir: str,
) -> dict[str, InferenceResult]:
    """Align a group's texts with this process's engine (loaded on first use, shared with inference)."""
    with _inference_lock:
        engine = cached_engine(plan)
        get_run_logger().info("aligning the texts of %d files (%d windows) with %s", len(decoded), len(windows), plan.model)
        return align_files(engine, decoded, windows, texts, work_dir)


@task(name="judge-alignment", task_run_name="judge alignment {decoded.source}")
def judge_task(transcript_path: str, decoded: DecodedAudio, vad: Mapping[str, Any] | None = None) -> tuple[str, str | None]:
    """Judge one file's stabilized alignment: (path of the judged transcript, error when the text does not match)."""
    transcript = Transcript.load(transcript_path)
    probabilities = file_probabilities(decoded.pcm_path, load_pcm(decoded.pcm_path))
    judged, error = judge_alignment(transcript, probabilities, VadThresholds(**dict(vad or {})))
    return judged.save(Path(transcript_path).with_suffix(".judged.json")), error


def align_group(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: dict[str, list[Window]],
    texts: dict[str, str],
    work_dir: str,
    stabilization: Mapping[str, Any],
    vad: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, float]]:
    """A group's align mode, after chunking: align, stabilize, judge. Returns (transcript paths, infer seconds) per file.

    A file whose text does not match its audio is marked failed here (its DecodedAudio), with the reason.
    """
    aligned = align_task(plan, decoded, [w for ws in windows.values() for w in ws], texts, work_dir)
    # The given text is judged by judge_alignment, not by the hallucination filter.
    settings = {**stabilization, "drop_hallucinations": False}
    paths = {}
    for file_id, item in decoded.items():
        stable = stabilize_task(aligned[file_id].transcript_path, item, windows[file_id], settings, vad)
        paths[file_id], error = judge_task(stable, item, vad)
        if error:
            item.status, item.error = "failed", f"{item.source}: {error}"
    return paths, {file_id: result.infer_s for file_id, result in aligned.items()}
