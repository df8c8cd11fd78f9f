"""Inference over a group's windows with one engine, in whichever process runs it.

One engine serves all files of a group so that batched engines can fill a batch with windows
from many files, and it stays loaded in the process (`cached_engine`) for every later group:
the process is the inference stage's engine child (tasks/infer.py), which lives as long as the
run's process, so a worker loads the model once, not per group. Transcripts go to JSON files in
the group's work directory; only their paths travel back. Whatever engine ran, stretches of VAD
speech it left without words are decoded again, and those still empty are counted
(steadyscribe.engines.speech_gaps).

This module imports no Prefect: the engine child stays small and starts fast.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyscribe.engines import Engine, WindowResult, load_engine
from steadyscribe.engines.packing import PackedWindow, heard_whole, pack_windows, packed_stream, unpack_result
from steadyscribe.engines.speech_gaps import Gap, fill_gaps, unheard_warning
from steadyscribe.isolation import tell_parent
from steadyscribe.memory import process_peak_rss_bytes
from steadyscribe.pcm import load_pcm
from steadyscribe.records import DecodedAudio, Plan, StabilizationCounts, Transcript, Window
from steadyscribe.vad import VadThresholds, file_probabilities, speech_frames

log = logging.getLogger(__name__)

WindowsDone = Callable[[int, float], None]  # (windows finished, seconds of audio in them)

# Plan fields an engine is built from: a plan that differs only elsewhere reuses the engine.
ENGINE_FIELDS = (
    "engine", "model", "device", "dtype", "quantization", "batch_size", "threads", "language", "decoding", "model_cache_dir",
)

_engines: dict[tuple, Engine] = {}


def engine_key(plan: Plan) -> tuple:
    return tuple(getattr(plan, name) for name in ENGINE_FIELDS)


def cached_engine(plan: Plan) -> Engine:
    """The engine for `plan`, loaded on first use in this process and kept for every later group.

    Call from one thread at a time. An engine for another plan is dropped first, so a process
    never holds two models.
    """
    key = engine_key(plan)
    if key not in _engines:
        _engines.clear()
        _engines[key] = load_engine(plan)
    return _engines[key]


def loaded_engines() -> list[tuple]:
    """Keys of the engines this process has loaded (empty in a process that never ran inference)."""
    return list(_engines)


@dataclass(frozen=True)
class Packing:
    """Cross-file window packing (profile `chunking.pack_files`): windows up to `max_window_s`, `gap_s` between files."""

    max_window_s: float
    gap_s: float


@dataclass
class InferenceResult:
    file_id: str
    transcript_path: str
    infer_s: float  # this file's share of the engine's wall time, by audio duration


def transcribe_files(
    engine: Engine,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    work_dir: str | Path,
    on_windows: WindowsDone | None = None,
    packing: Packing | None = None,
    vad: VadThresholds = VadThresholds(),
) -> dict[str, InferenceResult]:
    """Run `engine` over all windows and write one transcript JSON per file (files with no speech too).

    With `packing`, single-window files share windows (steadyscribe/engines/packing.py). A packed file whose words do
    not reach from its start to its end (`heard_whole`) is decoded again alone: the model may end
    its text at the pause between two files, or skip the start of the file after it.
    Stretches of speech (the VAD's, with the profile's `vad` thresholds) that the engine left
    without words are decoded again; those still empty are counted and named in the transcript
    (steadyscribe.engines.speech_gaps).
    """
    started = time.perf_counter()
    items = pack_windows(windows, packing.max_window_s, packing.gap_s) if packing else windows
    packs = {item.window: item for item in items if isinstance(item, PackedWindow)}
    samples_of = {file_id: load_pcm(d.pcm_path) for file_id, d in decoded.items()}
    results: dict[str, list[WindowResult]] = defaultdict(list)
    unpacked_again: list[Window] = []
    for result in engine.transcribe(packed_stream(items, samples_of)):
        pack = packs.get(result.window)
        file_results = unpack_result(pack, result) if pack else [result]
        if pack:
            heard = [heard_whole(r) for r in file_results]
            unpacked_again += [r.window for r, whole in zip(file_results, heard) if not whole]
            file_results = [r for r, whole in zip(file_results, heard) if whole]
        for file_result in file_results:
            results[file_result.window.file_id].append(file_result)
        members = [m.window for m in pack.members] if pack else [result.window]
        if on_windows:
            on_windows(len(members), sum(w.end - w.start for w in members))
    if unpacked_again:
        packed_files = sum(len(pack.members) for pack in packs.values())
        log.info(
            "%d of %d packed files decoded again alone: their words did not reach from their start to their end",
            len(unpacked_again), packed_files,
        )
        for result in engine.transcribe(packed_stream(unpacked_again, samples_of)):
            results[result.window.file_id].append(result)

    def speech_of(file_id: str):
        return speech_frames(file_probabilities(decoded[file_id].pcm_path, samples_of[file_id]), vad)

    unheard = fill_gaps(engine, results, samples_of, speech_of)
    return save_transcripts(decoded, results, unheard, engine.batch_size, work_dir, time.perf_counter() - started)


def save_transcripts(
    decoded: dict[str, DecodedAudio],
    results: Mapping[str, list[WindowResult]],
    unheard: Mapping[str, list[Gap]],
    batch_size: int,
    work_dir: str | Path,
    infer_s: float,
) -> dict[str, InferenceResult]:
    """One transcript JSON per file of `decoded`, from its window results (none: no speech); `infer_s` shared by duration."""
    total_audio = sum(d.duration_s for d in decoded.values()) or 1.0
    out: dict[str, InferenceResult] = {}
    for file_id, item in decoded.items():
        ordered = sorted(results.get(file_id, []), key=lambda r: r.window.index)
        languages = [r.language for r in ordered if r.language and r.segments]
        gaps = unheard.get(file_id, [])
        warning = unheard_warning(gaps)
        transcript = Transcript(
            file_id=file_id,
            language=max(set(languages), key=languages.count) if languages else None,
            segments=[s for r in ordered for s in r.segments],
            batch_size=batch_size,
            stabilization=StabilizationCounts(speech_without_text_ms=round(1000 * sum(g.speech_s for g in gaps))),
            warnings=[warning] if warning else [],
        )
        path = transcript.save(Path(work_dir) / f"{file_id}.raw.json")
        out[file_id] = InferenceResult(file_id, path, infer_s * item.duration_s / total_audio)
    return out


def prepared_engine(plan: Plan) -> Engine:
    """In the engine child: this process's engine for `plan`; tells the parent whether it was loaded now, and how long that took."""
    reused = engine_key(plan) in _engines
    started = time.perf_counter()
    engine = cached_engine(plan)
    tell_parent(("engine", engine.name, reused, time.perf_counter() - started))
    return engine


def report_windows(count: int, audio_s: float) -> None:
    """In the engine child: windows finished, for the parent's progress, with the child's peak memory so far."""
    tell_parent(("windows", count, audio_s, process_peak_rss_bytes()))


def transcribe_in_child(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    work_dir: str,
    packing: Packing | None,
    vad: VadThresholds,
) -> dict[str, InferenceResult]:
    """The inference stage's call into its engine child (tasks/infer.py): transcribe_files with this process's engine."""
    return transcribe_files(prepared_engine(plan), decoded, windows, work_dir, report_windows, packing, vad)
