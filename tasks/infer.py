"""Inference stage: feed every file's windows to one engine, assemble a transcript per file.

One engine serves all files of a group so that batched engines can fill a batch with windows
from many files, and it stays loaded in the process (`cached_engine`) for every later group the
process handles: a Dask worker or the local process loads the model once per run, not per group.
Transcripts go to JSON files in the group's work directory; only their paths travel on.
Whatever engine ran, stretches of VAD speech it left without words are decoded again, and those
still empty are counted (steadyscribe.engines.speech_gaps).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from steadyscribe.engines import Engine, WindowResult, load_engine
from steadyscribe.engines.speech_gaps import fill_gaps, unheard_warning
from steadyscribe.progress import reporter
from steadyscribe.records import DecodedAudio, Plan, StabilizationCounts, Transcript, Window
from steadyscribe.tasks.decode import load_pcm
from steadyscribe.tasks.pack import PackedWindow, heard_whole, pack_windows, packed_stream, unpack_result
from steadyscribe.vad import VadThresholds, file_probabilities, speech_frames

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (windows done, windows total)

# Plan fields an engine is built from: a plan that differs only elsewhere reuses the engine.
ENGINE_FIELDS = (
    "engine", "model", "device", "dtype", "quantization", "batch_size", "threads", "language", "decoding", "model_cache_dir",
)

_engines: dict[tuple, Engine] = {}
# One inference at a time per process: one copy of the model in memory, and the engine's own
# threads get the CPUs. Groups in flight meanwhile decode, chunk, stabilize and write.
inference_lock = threading.Lock()


def engine_key(plan: Plan) -> tuple:
    return tuple(getattr(plan, name) for name in ENGINE_FIELDS)


def cached_engine(plan: Plan) -> Engine:
    """The engine for `plan`, loaded on first use in this process and kept for every later group.

    Call with `inference_lock` held. An engine for another plan is dropped first, so a process
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
    on_progress: ProgressCallback | None = None,
    packing: Packing | None = None,
    vad: VadThresholds = VadThresholds(),
) -> dict[str, InferenceResult]:
    """Run `engine` over all windows and write one transcript JSON per file (files with no speech too).

    With `packing`, single-window files share windows (tasks/pack.py). A packed file whose words do
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
    done = 0
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
        done += len(members)
        reporter().windows_done(len(members), sum(w.end - w.start for w in members))
        if on_progress:
            on_progress(done, len(windows))
    if unpacked_again:
        packed_files = sum(len(pack.members) for pack in packs.values())
        log.info(
            "%d of %d packed files decoded again alone: their words did not reach from their start to their end",
            len(unpacked_again), packed_files,
        )
        for result in engine.transcribe(packed_stream(unpacked_again, samples_of)):
            results[result.window.file_id].append(result)
    thresholds = vad

    def speech_of(file_id: str):
        return speech_frames(file_probabilities(decoded[file_id].pcm_path, samples_of[file_id]), thresholds)

    unheard = fill_gaps(engine, results, samples_of, speech_of)
    total_s = time.perf_counter() - started
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
            batch_size=engine.batch_size,
            stabilization=StabilizationCounts(speech_without_text_ms=round(1000 * sum(g.speech_s for g in gaps))),
            warnings=[warning] if warning else [],
        )
        path = transcript.save(Path(work_dir) / f"{file_id}.raw.json")
        out[file_id] = InferenceResult(file_id, path, total_s * item.duration_s / total_audio)
    return out


class _ProgressReporter:
    """Logs and updates a Prefect progress artifact as windows finish, at most every few seconds."""

    def __init__(self, logger, description: str, check_cancelled: Callable[[], None] | None, interval_s: float = 5.0):
        self.logger = logger
        self.interval_s = interval_s
        self.check_cancelled = check_cancelled
        self.artifact_id = create_progress_artifact(0.0, description=description)
        self.last_report = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.check_cancelled:
            self.check_cancelled()
        now = time.monotonic()
        if done < total and now - self.last_report < self.interval_s:
            return
        self.last_report = now
        update_progress_artifact(self.artifact_id, 100.0 * done / total)
        self.logger.info("transcribed %d/%d windows (%.0f%%)", done, total, 100.0 * done / total)


# Tagged so a Prefect concurrency limit on "inference" can keep one model per GPU.
@task(name="infer", tags=["inference"], cache_policy=NO_CACHE)
def infer_task(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    work_dir: str,
    progress_description: str = "Windows transcribed (percent)",
    check_cancelled: Callable[[], None] | None = None,
    packing: Packing | None = None,
    vad: VadThresholds = VadThresholds(),
) -> dict[str, InferenceResult]:
    """Transcribe a group's windows with this process's engine (loaded on first use).

    `check_cancelled` is called as windows finish and may raise to stop the group.
    """
    logger = get_run_logger()
    waited = time.perf_counter()
    with inference_lock:
        reused = engine_key(plan) in _engines
        started = time.perf_counter()
        engine = cached_engine(plan)
        how = "reused this process's" if reused else f"loaded in {time.perf_counter() - started:.1f} s a"
        logger.info(
            "%s %s engine with %s (batch %d, %d threads), after waiting %.1f s for the previous group; "
            "%d windows from %d files",
            how, engine.name, plan.model, plan.batch_size, plan.threads, started - waited, len(windows), len(decoded),
        )
        reporter = _ProgressReporter(logger, progress_description, check_cancelled)
        return transcribe_files(engine, decoded, windows, work_dir, on_progress=reporter, packing=packing, vad=vad)
