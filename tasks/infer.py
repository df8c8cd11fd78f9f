"""Inference stage: feed every file's windows to one engine, assemble a transcript per file.

One engine serves all files of a run so that batched engines can fill a batch
with windows from many files. Transcripts go to JSON files in the run's work
directory; only their paths travel on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from steadyscribe import SAMPLE_RATE
from steadyscribe.engines import Engine, WindowAudio, WindowResult, load_engine
from steadyscribe.progress import reporter
from steadyscribe.records import DecodedAudio, Plan, Transcript, Window
from steadyscribe.tasks.decode import load_pcm

ProgressCallback = Callable[[int, int], None]  # (windows done, windows total)


@dataclass
class InferenceResult:
    file_id: str
    transcript_path: str
    infer_s: float  # this file's share of the engine's wall time, by audio duration


def window_stream(decoded: dict[str, DecodedAudio], windows: list[Window]) -> Iterator[WindowAudio]:
    """Windows with their samples, sliced lazily from each file's memory-mapped PCM."""
    pcm = {file_id: load_pcm(d.pcm_path) for file_id, d in decoded.items()}
    for window in windows:
        samples = pcm[window.file_id]
        first, last = int(window.start * SAMPLE_RATE), int(window.end * SAMPLE_RATE)
        yield WindowAudio(window, samples[first:last])


def transcribe_files(
    engine: Engine,
    decoded: dict[str, DecodedAudio],
    windows: list[Window],
    work_dir: str | Path,
    on_progress: ProgressCallback | None = None,
) -> dict[str, InferenceResult]:
    """Run `engine` over all windows and write one transcript JSON per file (files with no speech too)."""
    started = time.perf_counter()
    results: dict[str, list[WindowResult]] = defaultdict(list)
    for done, result in enumerate(engine.transcribe(window_stream(decoded, windows)), start=1):
        results[result.window.file_id].append(result)
        reporter().windows_done(1, result.window.end - result.window.start)
        if on_progress:
            on_progress(done, len(windows))
    total_s = time.perf_counter() - started
    total_audio = sum(d.duration_s for d in decoded.values()) or 1.0
    out: dict[str, InferenceResult] = {}
    for file_id, item in decoded.items():
        ordered = sorted(results.get(file_id, []), key=lambda r: r.window.index)
        languages = [r.language for r in ordered if r.language and r.segments]
        transcript = Transcript(
            file_id=file_id,
            language=max(set(languages), key=languages.count) if languages else None,
            segments=[s for r in ordered for s in r.segments],
            batch_size=engine.batch_size,
        )
        path = transcript.save(Path(work_dir) / f"{file_id}.raw.json")
        out[file_id] = InferenceResult(file_id, path, total_s * item.duration_s / total_audio)
    return out


class _ProgressReporter:
    """Logs and updates a Prefect progress artifact as windows finish, at most every few seconds."""

    def __init__(self, logger, interval_s: float = 5.0):
        self.logger = logger
        self.interval_s = interval_s
        self.artifact_id = create_progress_artifact(0.0, description="Windows transcribed (percent)")
        self.last_report = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last_report < self.interval_s:
            return
        self.last_report = now
        update_progress_artifact(self.artifact_id, 100.0 * done / total)
        self.logger.info("transcribed %d/%d windows (%.0f%%)", done, total, 100.0 * done / total)


# Tagged so a Prefect concurrency limit on "inference" can keep one model per GPU.
@task(name="infer", tags=["inference"])
def infer_task(
    plan: Plan, decoded: dict[str, DecodedAudio], windows: list[Window], work_dir: str
) -> dict[str, InferenceResult]:
    logger = get_run_logger()
    engine = load_engine(plan)
    logger.info("loaded %s engine with %s; %d windows from %d files", engine.name, plan.model, len(windows), len(decoded))
    return transcribe_files(engine, decoded, windows, work_dir, on_progress=_ProgressReporter(logger))
