"""Inference stage: a group's windows through the engine, one transcript per file.

The engine runs native code (CTranslate2, torch) that can crash the process it runs in. So it
runs in a child process of its own (steadyscribe.isolation), which this process keeps for every
later group and run and which dies with it: a crash or a hang there costs the group being
transcribed (its files get failed rows that say so), and the next group starts a fresh child.
The work itself is steadyscribe.inference.transcribe_files; only the plan, small records and
paths cross, and the child's progress comes back as it goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from steadyscribe.inference import InferenceResult, Packing, engine_key, save_transcripts, transcribe_in_child
from steadyscribe.isolation import ChildCrashed, ChildHung, ChildProcess
from steadyscribe.memory import note_engine_process_peak
from steadyscribe.progress import reporter
from steadyscribe.records import DecodedAudio, Plan, Window
from steadyscribe.vad import VadThresholds

# An engine child that sends nothing (no finished window) and reads and writes nothing for this
# long hangs: far longer than one batch of the largest model takes on a CPU.
INFERENCE_HANG_S = 1800.0

# One inference at a time per process: one copy of the model in memory, and the engine's own
# threads get the CPUs. Groups in flight meanwhile decode, chunk, stabilize and write.
inference_lock = threading.Lock()
_engine_process = ChildProcess(shared=True)
_engine_loaded: list[tuple] = []  # the key of the engine the child holds, once it has loaded one


class EngineFailed(RuntimeError):
    """The engine's process crashed or hung during a group: that group's files failed, the run goes on."""


def loaded_engines() -> list[tuple]:
    """Keys of the engines this process's engine child holds (empty where inference never ran)."""
    return list(_engine_loaded) if _engine_process.started else []


def call_engine(fn: Callable[..., Any], plan: Plan, *args: Any, on_windows: Callable[[int, float], None]) -> Any:
    """`fn(plan, *args)` in this process's engine child, one call at a time; EngineFailed when the child dies or hangs.

    `on_windows(count, audio_s)` is called here as windows finish there.
    """
    logger = get_run_logger()
    waited = time.perf_counter()

    def on_message(message: tuple) -> None:
        kind, *values = message
        if kind == "windows":
            count, audio_s, peak_rss_bytes = values
            note_engine_process_peak(peak_rss_bytes)
            on_windows(count, audio_s)
        elif kind == "engine":
            name, reused, load_s = values
            _engine_loaded[:] = [engine_key(plan)]
            how = "reused the" if reused else f"loaded in {load_s:.1f} s a"
            logger.info(
                "%s %s engine with %s (batch %d, %d threads) in its own process, after waiting %.1f s for the previous group",
                how, name, plan.model, plan.batch_size, plan.threads, started - waited,
            )

    with inference_lock:
        started = time.perf_counter()
        try:
            return _engine_process.call(fn, budget_left_to_engine(plan), *args, hang_s=INFERENCE_HANG_S, on_message=on_message)
        except (ChildCrashed, ChildHung) as error:
            _engine_loaded.clear()
            raise EngineFailed(f"the engine's process {error} during inference") from error


def budget_left_to_engine(plan: Plan) -> Plan:
    """The plan with the memory budget that this process leaves to the engine child (the budget covers both)."""
    if plan.memory_budget_bytes is None:
        return plan
    return replace(plan, memory_budget_bytes=max(0, plan.memory_budget_bytes - psutil.Process().memory_info().rss))


class _ProgressReporter:
    """Counts finished windows for the run's progress, and logs and updates a Prefect progress artifact at most every few seconds."""

    def __init__(self, logger, description: str, total: int, check_cancelled: Callable[[], None] | None, interval_s: float = 5.0):
        self.logger = logger
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self.check_cancelled = check_cancelled
        self.artifact_id = create_progress_artifact(0.0, description=description)
        self.last_report = 0.0

    def __call__(self, count: int, audio_s: float) -> None:
        reporter().windows_done(count, audio_s)
        self.done += count
        if self.check_cancelled:
            self.check_cancelled()
        now = time.monotonic()
        if self.done < self.total and now - self.last_report < self.interval_s:
            return
        self.last_report = now
        update_progress_artifact(self.artifact_id, 100.0 * self.done / self.total)
        self.logger.info("transcribed %d/%d windows (%.0f%%)", self.done, self.total, 100.0 * self.done / self.total)


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
    """Transcribe a group's windows in this process's engine child (the engine is loaded there on first use).

    `check_cancelled` is called as windows finish and may raise to stop the group (the child is
    then killed mid-call).
    """
    logger = get_run_logger()
    if not windows:
        # No speech in any file: empty transcripts, without waiting for the engine another group holds.
        logger.info("no windows to transcribe in %d files", len(decoded))
        return save_transcripts(decoded, {}, {}, plan.batch_size, work_dir, infer_s=0.0)
    logger.info("transcribing %d windows from %d files", len(windows), len(decoded))
    progress = _ProgressReporter(logger, progress_description, len(windows), check_cancelled)
    return call_engine(transcribe_in_child, plan, decoded, windows, work_dir, packing, vad, on_windows=progress)
