"""Align stage (known text): word times for a text the user already has, instead of transcribing.

For each audio file, a text file beside it (same name, `text_suffix` instead of the audio's
extension) holds what was said. Per file:

1. the text is split across the file's windows (tasks/chunk.py). A file of one window takes it
   all. A longer file is first transcribed (the engine's normal pass), and the text's words are
   matched in order to the words heard (steadyscribe.metrics.align_words); a word takes the
   window of the heard word it matches, and the unmatched words between two matches may lie in
   either match's window (or any between): they are aligned in each, and the window that gives
   a word the highest probability keeps it. Windows the chunk stage skipped as confidently
   silent get no text, so no text is forced onto them;
2. the engine aligns each window's share of the text to its audio (`align(items)`: DTW over the
   alignment heads, the same machinery that times transcribed words);
3. the stabilize stage refines the times (DTW lag out, edges out of VAD pauses), with its
   hallucination filter off: a given text is judged here instead;
4. `judge_alignment` keeps a word only when it was aligned with confidence: the model, given
   the audio and the text before each word, gives the words around it a fair probability, and
   the VAD is not confident that the word lies on silence unless the model is sure of it. Words
   that fail stay in their segment's text but not in `words`; the file's row has the share
   aligned (`aligned_share`), and its warnings say how many were not and name the first. Below `min_aligned_share` the text does not belong to the audio: the file
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

from steadyscribe.engines import ENGINES, AligningEngine
from steadyscribe.engines.packing import packed_stream
from steadyscribe.inference import InferenceResult, WindowsDone, prepared_engine, report_windows, transcribe_files
from steadyscribe.pcm import load_pcm
from steadyscribe.progress import reporter
from steadyscribe.records import DecodedAudio, Plan, Segment, Transcript, Window, Word
from steadyscribe.storage import filesystem_for, with_retries
from steadyscribe.tasks.infer import call_engine
from steadyscribe.text import ends_sentence, matching_words
from steadyscribe.vad import VadThresholds, confidently_silent, file_probabilities

# Engines whose record says they align known text (steadyscribe.engines.base.AligningEngine).
ALIGNING_ENGINES = tuple(name for name, spec in ENGINES.items() if spec.aligns)


@dataclass(frozen=True)
class AlignOptions:
    # The text around a word is what the audio says when the median word probability of the
    # context_words words centred on it reaches min_context_probability. Measured with tiny.en
    # int8 (tests/test_align.py's recordings): own texts 0.12 at the lowest (a recording's first
    # words, which have no text before them), another recording's text 0.075 at the highest.
    context_words: int = 7
    min_context_probability: float = 0.1
    # A word on confident VAD silence is aligned only when the model is at least this sure of it.
    sure_probability: float = 0.5
    # Below this share of confidently aligned words the text is not a transcript of the audio.
    min_aligned_share: float = 0.5
    warning_words: int = 10  # words quoted in a file's warnings


def text_source(source: str, suffix: str) -> str:
    """The text file that belongs to an audio source: its name with `suffix` for its extension."""
    directory, _, name = source.rpartition("/")
    stem = name.rpartition(".")[0] or name
    return f"{directory}/{stem}{suffix}" if directory else f"{stem}{suffix}"


def read_texts(decoded: list[DecodedAudio], suffix: str) -> dict[str, str]:
    """file id -> the text beside each decoded file; a file without a readable, non-empty text fails (its status).

    Identical audio under two names is aligned once: a second name with another text fails.
    """
    texts: dict[str, str] = {}
    for item in decoded:
        if item.status != "ok":
            continue
        path = text_source(item.source, suffix)
        try:
            fs, inner = filesystem_for(path)
            text = with_retries(lambda: fs.cat_file(inner)).decode("utf-8")
        except FileNotFoundError:
            item.status, item.error = "failed", (
                f"{item.source}: no text to align: {path} does not exist (align reads each audio file's text "
                f"from the file of the same name with the suffix {suffix!r})"
            )
            continue
        except (OSError, UnicodeDecodeError) as error:
            item.status, item.error = "failed", f"{item.source}: cannot read its text {path}: {error}"
            continue
        if not text.split():
            item.status, item.error = "failed", f"{item.source}: its text {path} is empty: nothing to align"
            continue
        text = " ".join(text.split())
        if texts.setdefault(item.file_id, text) != text:
            # Identical audio is aligned once (flows/group.py); two texts for it cannot both be.
            first = next(d.source for d in decoded if d.file_id == item.file_id and d.status == "ok")
            item.status, item.error = "failed", (
                f"{item.source}: the same audio as {first} with a different text; align one of them in another run"
            )
    return texts


def candidate_windows(
    text_words: list[str], heard: list[tuple[str, int]], n_windows: int
) -> list[tuple[int, int] | None]:
    """For each text word, the first and last window (positions in the file's windows) it may lie in.

    `heard`: the transcription's words in order, each with the position of its window. A text
    word matched to a heard word (steadyscribe.metrics.align_words) lies in that word's window.
    Unmatched words between two matches may lie in any window from the first match's to the
    second's (the transcription often loses words at a window's edges, just where the text
    crosses into the next window); words before the first match in any window up to its, words
    after the last in any from its on. Without any match nothing can be placed: all None.
    """
    # Imported here: the metrics' text normalizer imports torch, which the flow's process must not.
    from steadyscribe.metrics import align_words

    pairs = align_words([{"word": w} for w in text_words], [{"word": w} for w, _ in heard])
    ranges: list[tuple[int, int] | None] = [None] * len(text_words)
    if not pairs:
        return ranges
    for text_index, heard_index in pairs:
        ranges[text_index] = (heard[heard_index][1], heard[heard_index][1])
    anchors = [(-1, -1), *pairs, (len(text_words), len(heard))]
    for (t0, h0), (t1, h1) in zip(anchors, anchors[1:]):
        first = heard[h0][1] if t0 >= 0 else 0
        last = heard[h1][1] if t1 < len(text_words) else n_windows - 1
        for index in range(t0 + 1, t1):
            ranges[index] = (first, last)
    return ranges


def window_spans(text: str, windows: list[Window], heard: Transcript | None) -> list[tuple[int, int]]:
    """Per window (in order), the [first, last) span of the text's words to align there.

    One window takes the whole text. With several, the transcription `heard` places the words
    (candidate_windows): a word that may lie in two windows is aligned in both, and the better
    alignment is kept (merge_candidates). An empty span: nothing of the text lies there.
    """
    words = text.split()
    if len(windows) == 1 or heard is None:
        return [(0, len(words))] + [(0, 0)] * (len(windows) - 1)
    starts = [w.start for w in windows]
    heard_words = [(w.word, _window_of((w.start + w.end) / 2, starts)) for w in heard.words]
    ranges = candidate_windows(words, heard_words, len(windows))
    spans = []
    for position in range(len(windows)):
        inside = [i for i, r in enumerate(ranges) if r is not None and r[0] <= position <= r[1]]
        spans.append((inside[0], inside[-1] + 1) if inside else (0, 0))
    return spans


def _window_of(time_s: float, starts: list[float]) -> int:
    return max(int(np.searchsorted(starts, time_s, side="right")) - 1, 0)


def merge_candidates(text_words: list[str], aligned: list[tuple[tuple[int, int], list[Word]]]) -> list[Word]:
    """The text's words, each from the window that aligned it with the highest probability, in text order.

    `aligned`: per window in order, the [first, last) span of the text it aligned and the words
    the engine returned for it (its own word splitting, matched back to the text by their
    letters). A word is never taken from a window before the one its predecessor came from, so
    times stay in order. Words no window returned are left out.
    """
    candidates: dict[int, list[tuple[int, Word]]] = {}
    for position, ((first, last), words) in enumerate(aligned):
        for i, j in matching_words(text_words[first:last], [w.word for w in words]):
            candidates.setdefault(first + i, []).append((position, words[j]))
    merged, current = [], 0
    for index in sorted(candidates):
        later = [c for c in candidates[index] if c[0] >= current] or candidates[index]
        current, word = max(later, key=lambda c: c[1].probability)
        merged.append(word)
    return merged


def sentence_segments(words: list[Word]) -> list[Segment]:
    """Segments of aligned words, one per sentence of the text."""
    sentences: list[list[Word]] = [[]]
    for word in words:
        sentences[-1].append(word)
        if ends_sentence(word.word):
            sentences.append([])
    return [Segment(s[0].start, s[-1].end, " ".join(w.word for w in s), s) for s in sentences if s]


def align_files(
    engine: AligningEngine,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    texts: Mapping[str, str],
    work_dir: str | Path,
    on_windows: WindowsDone | None = None,
) -> dict[str, InferenceResult]:
    """Align every file's text to its audio with `engine`; one raw aligned transcript JSON per file.

    Files of several windows are transcribed first, to split their text across the windows.
    A file whose text could not be placed at all gets a transcript without words (it then fails
    in judge_alignment).
    """
    started = time.perf_counter()
    by_file: dict[str, list[Window]] = {}
    for window in windows:
        by_file.setdefault(window.file_id, []).append(window)
    several = {file_id: d for file_id, d in decoded.items() if len(by_file.get(file_id, [])) > 1}
    heard: dict[str, Transcript] = {}
    if several:
        several_windows = [w for w in windows if w.file_id in several]
        for file_id, result in transcribe_files(engine, several, several_windows, work_dir, on_windows).items():
            heard[file_id] = Transcript.load(result.transcript_path)
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for file_id, file_windows in by_file.items():
        for window, span in zip(file_windows, window_spans(texts[file_id], file_windows, heard.get(file_id))):
            if span[1] > span[0]:
                spans[(file_id, window.index)] = span
    text_words = {file_id: texts[file_id].split() for file_id in decoded}
    samples = {file_id: load_pcm(d.pcm_path) for file_id, d in decoded.items()}
    items = (
        (audio, " ".join(text_words[audio.window.file_id][slice(*spans[(audio.window.file_id, audio.window.index)])]))
        for audio in packed_stream([w for w in windows if (w.file_id, w.index) in spans], samples)
    )
    aligned: dict[str, list[tuple[int, tuple[int, int], list[Word]]]] = {file_id: [] for file_id in decoded}
    languages: dict[str, str | None] = {}
    for result in engine.align(items):
        span = spans[(result.window.file_id, result.window.index)]
        aligned[result.window.file_id].append((result.window.index, span, [w for s in result.segments for w in s.words]))
        languages.setdefault(result.window.file_id, result.language)
        if on_windows and result.window.file_id not in several:  # the others' windows were counted as they were transcribed
            on_windows(1, result.window.end - result.window.start)
    total_s = time.perf_counter() - started
    total_audio = sum(d.duration_s for d in decoded.values()) or 1.0
    out = {}
    for file_id, item in decoded.items():
        transcript = Transcript(
            file_id=file_id,
            language=languages.get(file_id),
            segments=sentence_segments(
                merge_candidates(text_words[file_id], [(span, words) for _, span, words in sorted(aligned[file_id])])
            ),
            batch_size=engine.batch_size,
        )
        path = transcript.save(Path(work_dir) / f"{file_id}.aligned.json")
        out[file_id] = InferenceResult(file_id, path, total_s * item.duration_s / total_audio)
    return out


def judge_alignment(
    transcript: Transcript,
    text_words: int,
    probabilities: np.ndarray,
    thresholds: VadThresholds = VadThresholds(),
    options: AlignOptions = AlignOptions(),
) -> tuple[Transcript, str | None]:
    """Keep the words aligned with confidence; (transcript, error) where error is set when the text
    does not belong to the audio (too small a share aligned).

    A word is not aligned when the text around it is not what the audio says (the median word
    probability of the `context_words` words centred on it is below `min_context_probability`),
    or when the VAD is confident that it lies on silence and the model is unsure of it (below
    `sure_probability`). One surprising word amid words the model hears (a name, a rare word) is
    kept: alone, tiny.en's word probabilities say little. Words on VAD silence that the model is
    sure of are kept and named in a warning (the VAD misses some voices: tests/test_align.py).

    The share is of the text's `text_words` words, so text that never reached an alignment (no
    speech in the audio, or no window for it) counts as not aligned. The counts go to
    `stabilization` (text_words, words_aligned) for the files row.
    """
    words = transcript.words
    probability = np.array([w.probability for w in words], dtype=np.float64)
    half = options.context_words // 2
    context = [float(np.median(probability[max(0, i - half) : i + half + 1])) for i in range(len(words))]
    on_silence = [confidently_silent(probabilities, w.start, w.end, thresholds) for w in words]
    keep = {
        id(w)
        for w, around, silent in zip(words, context, on_silence)
        if around >= options.min_context_probability and not (silent and w.probability < options.sure_probability)
    }
    kept_segments, unaligned = [], []
    for segment in transcript.segments:
        kept = [w for w in segment.words if id(w) in keep]
        unaligned += [w.word for w in segment.words if id(w) not in keep]
        if kept:
            kept_segments.append(replace(segment, start=kept[0].start, end=kept[-1].end, words=kept))
    aligned = len(keep)
    share = aligned / text_words if text_words else 0.0
    counts = replace(transcript.stabilization, text_words=text_words, words_aligned=aligned)
    warnings = list(transcript.warnings)
    if aligned < text_words:
        warnings.append(
            f"{text_words - aligned} of {text_words} words of the text were not aligned with confidence "
            f"(the audio does not say them, or they fall where the VAD hears no speech) and are not in `words`"
            + (f": {_quote(unaligned, options.warning_words)}" if unaligned else "")
        )
    if silent_kept := [w.word for w, silent in zip(words, on_silence) if silent and id(w) in keep]:
        warnings.append(
            f"{len(silent_kept)} aligned words lie where the VAD hears no speech, kept because the model is sure "
            f"of them: {_quote(silent_kept, options.warning_words)}"
        )
    judged = replace(transcript, segments=kept_segments, stabilization=counts, warnings=warnings)
    if share < options.min_aligned_share:
        return judged, (
            f"the text does not match the audio: only {aligned} of its {text_words} words ({share:.0%}) "
            f"were aligned with confidence (at least {options.min_aligned_share:.0%} needed); "
            "check that the text file belongs to this recording"
        )
    return judged, None


def _quote(words: list[str], limit: int) -> str:
    more = f" and {len(words) - limit} more" if len(words) > limit else ""
    return ", ".join(repr(w) for w in words[:limit]) + more


@task(name="align", tags=["inference"], cache_policy=NO_CACHE)
def align_task(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    texts: dict[str, str],
    work_dir: str,
) -> dict[str, InferenceResult]:
    """Align a group's texts in this process's engine child (tasks/infer.py; the engine is shared with inference)."""
    get_run_logger().info("aligning the texts of %d files (%d windows) with %s", len(decoded), len(windows), plan.model)
    return call_engine(align_in_child, plan, decoded, windows, texts, work_dir, on_windows=reporter().windows_done)


def align_in_child(
    plan: Plan, decoded: dict[str, DecodedAudio], windows: list[Window], texts: dict[str, str], work_dir: str
) -> dict[str, InferenceResult]:
    """align_task's call into the engine child: align_files with that process's engine."""
    return align_files(prepared_engine(plan), decoded, windows, texts, work_dir, report_windows)


def judge_file(
    transcript_path: str, decoded: DecodedAudio, text: str, vad: VadThresholds = VadThresholds()
) -> tuple[str, str | None]:
    """Judge one file's stabilized alignment: (path of the judged transcript, error when the text does not match)."""
    transcript = Transcript.load(transcript_path)
    probabilities = file_probabilities(decoded.pcm_path, load_pcm(decoded.pcm_path))
    judged, error = judge_alignment(transcript, len(text.split()), probabilities, vad)
    return judged.save(Path(transcript_path).with_suffix(".judged.json")), error


@task(name="judge-alignment")
def judge_task(
    transcript_paths: Mapping[str, str],
    decoded: Mapping[str, DecodedAudio],
    texts: Mapping[str, str],
    vad: VadThresholds = VadThresholds(),
) -> dict[str, tuple[str, str | None]]:
    """judge_file for each file of a group (one task run per group), by file id."""
    return {file_id: judge_file(transcript_paths[file_id], item, texts[file_id], vad) for file_id, item in decoded.items()}
