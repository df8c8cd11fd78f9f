"""One group of files, start to finish, where the task runs: decode → chunk → infer → stabilize → commit
(align mode: decode → chunk → align → stabilize → judge → commit).

A group is the unit of distribution. Its task runs on one worker (a Dask worker, or a thread of
the flow's own process) and keeps everything between the stages on that worker's local disk
(a temporary directory of its own); only the group's description goes in and one outcome per
file comes out. The stages are the plain functions of their modules, each run as a nested task
run (so they show in the Prefect UI under the group), and the worker's engine is loaded once, in
an engine process of its own that serves all the worker's groups (tasks/infer.py).

The group's rows are committed under a part name fixed by the run and the group's index, so a
group that is run again (its worker died after committing, and Dask retried it elsewhere)
replaces its own commit instead of adding a second row per file.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cache
from typing import Any
from uuid import UUID

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from steadyscribe.claims import GroupClaims
from steadyscribe.engines.registry import engine_spec
from steadyscribe.errors import PlanError
from steadyscribe.inference import Packing
from steadyscribe.models.provision import ModelUnavailableError, model_cache_dir
from steadyscribe.profiles import Profile, Stabilization
from steadyscribe.progress import reporter
from steadyscribe.records import DecodedAudio, FileOutcome, InputFile, Plan
from steadyscribe.scratch import ScratchDir
from steadyscribe.storage import is_disk_full, no_space_in_temp_dir
from steadyscribe.tasks.align import align_task, judge_task, read_texts
from steadyscribe.tasks.channels import ChannelSplit, channels_task, join_channel_files
from steadyscribe.tasks.chunk import chunk_task
from steadyscribe.tasks.decode import decode_task
from steadyscribe.tasks.infer import EngineFailed, infer_task
from steadyscribe.tasks.probe import Probe, probe_resources
from steadyscribe.tasks.select import refit_plan
from steadyscribe.tasks.stabilize import stabilize_task
from steadyscribe.tasks.write import CommitFailed, FileResult, RunInfo, write_file_results, write_task
from steadyscribe.vad import VadThresholds

# Threads for this worker's engine when the profile says `auto`: set where several worker
# processes share a machine (the local Dask cluster sets it to CPUs / workers).
THREADS_ENV = "STEADYSCRIBE_WORKER_THREADS"

# How often a group asks the API whether its flow run was cancelled (at most).
CANCEL_CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True)
class GroupJob:
    """Everything a worker needs to transcribe one group of files and commit it."""

    index: int  # position in the run: names the group's commit
    files: list[InputFile]
    label: str  # "files 17-32 of 40" (ASCII: the UI's run graph drops an en dash)
    output: str
    run: RunInfo
    profile: Profile  # the profile the run was planned from (batch size and budget are re-fitted per worker)
    overrides: Mapping[str, Any]  # the run's command-line memory_budget and batch_size
    skip_file_ids: frozenset[str]
    flow_run_id: UUID | None = None  # to notice a cancelled run; None outside Prefect
    # Choose batch size and threads again on the worker (other machines); False where the
    # groups run in the process that made the plan.
    refit: bool = True
    # Align mode (tasks/align.py): each file's text is the file beside it with this suffix; None: transcribe.
    text_suffix: str | None = None
    force: bool = False  # transcribe again what earlier runs committed (a concurrent run's claim still counts)

    @property
    def part(self) -> str:
        return f"{self.run.run_id}-g{self.index:05d}"


class GroupCancelled(RuntimeError):
    """The flow run was cancelled: the group stops before committing anything."""


def worker_name() -> str:
    """Who did the work, for the `files.worker` column: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@cache
def worker_probe(model_cache: str, device: str, bitsandbytes: bool) -> Probe:
    """This process's machine, probed once; GPUs and bitsandbytes only when the plan uses them."""
    return probe_resources([model_cache], check_accelerators=device == "cuda", bitsandbytes_devices=(device,) if bitsandbytes else ())


def worker_plan(job: GroupJob) -> Plan:
    """The run's plan with this worker's own batch size and threads (PlanError when it cannot fit)."""
    plan = job.run.plan
    bitsandbytes = engine_spec(plan.engine).quantizations.get(plan.quantization) == "bitsandbytes"
    probe = worker_probe(str(model_cache_dir(plan.model_cache_dir)), plan.device, bitsandbytes)
    refitted = refit_plan(plan, job.profile, probe, job.overrides)
    if job.profile.threads == "auto" and (threads := os.environ.get(THREADS_ENV)):
        refitted = replace(refitted, threads=int(threads))
    return refitted


class CancelWatch:
    """Raises GroupCancelled once the flow run is cancelling or cancelled; asks the API at most every few seconds."""

    def __init__(self, flow_run_id: UUID | None, interval_s: float = CANCEL_CHECK_INTERVAL_S):
        self.flow_run_id = flow_run_id
        self.interval_s = interval_s
        self.last_check = float("-inf")

    def __call__(self) -> None:
        if self.flow_run_id is None or time.monotonic() - self.last_check < self.interval_s:
            return
        self.last_check = time.monotonic()
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(self.flow_run_id).state
        except Exception as error:  # an API hiccup must not cost the group its work: ask again later
            get_run_logger().warning("could not read flow run %s to check for cancellation: %r", self.flow_run_id, error)
            return
        if state is not None and (state.is_cancelling() or state.is_cancelled()):
            raise GroupCancelled(f"flow run {self.flow_run_id} was cancelled; the group was not committed")


def transcribe_group(job: GroupJob) -> list[FileOutcome]:
    """Decode, chunk, transcribe, stabilize and commit one group here; one outcome per file.

    A file that cannot be decoded fails alone. When the engine cannot run here (the planned
    model cannot be provisioned, does not fit this worker, or inference fails) every file of the
    group that needed it gets a failed row saying so. Cancellation commits nothing.
    """
    logger = get_run_logger()
    worker = worker_name()
    check_cancelled = CancelWatch(job.flow_run_id)
    started_at = datetime.now(timezone.utc)
    work = ScratchDir(job.part)  # removed below; by a later run if this process is killed
    work_dir = work.path
    claims = GroupClaims(job.output, job.run.run_id, job.run.settings_key, force=job.force)
    try:
        logger.info("%s on worker %s, work directory %s", job.label, worker, work_dir)
        audio = job.profile.audio
        named = NamedStages(job.label)
        decoded = named(decode_task)(job.files, work_dir, job.skip_file_ids, audio.channels)
        check_cancelled()
        # A recording is transcribed once per output and settings, whatever its names and however
        # many runs reach it: the others become `duplicate` or `skipped` rows (steadyscribe/claims.py).
        decoded = claims.resolve(decoded)
        texts = read_texts(decoded, job.text_suffix) if job.text_suffix else {}  # a missing text fails its file
        todo = {d.file_id: d for d in decoded if d.status == "ok"}
        vad = job.profile.vad
        splits = named(channels_task)(todo, audio.speakers, vad) if any(d.channel_paths for d in todo.values()) else {}
        units = transcription_units(todo, splits)
        chunked = named(chunk_task)(units, job.run.plan.chunk_s, job.profile.chunking.min_pause_s, vad) if units else {}
        windows = [w for file_windows in chunked.values() for w in file_windows]
        reporter().group_started(len(job.files), len(windows))
        check_cancelled()
        stable_paths: dict[str, str] = {}
        infer_s: dict[str, float] = {}
        try:
            if units:
                plan = worker_plan(job) if job.refit else job.run.plan
                settings = job.profile.stabilization
                if job.text_suffix:  # one text per file: the flow refuses split channels in align mode
                    stable_paths, infer_s = align_group(plan, todo, chunked, texts, work_dir, settings, vad, named)
                else:
                    infer = infer_task.with_options(task_run_name=f"infer {plan.model} batch {plan.batch_size}, {job.label}")
                    description = f"Windows transcribed, {job.label} (percent)"
                    packing = packing_for(plan, job.profile)
                    inference = infer(plan, units, windows, work_dir, description, check_cancelled, packing, vad)
                    infer_s = {unit_id: result.infer_s for unit_id, result in inference.items()}
                    raw_paths = {unit_id: result.transcript_path for unit_id, result in inference.items()}
                    stable_paths = named(stabilize_task)(raw_paths, units, chunked, settings, vad)
            for file_id, split in splits.items():
                stable_paths[file_id] = join_channel_files(split, stable_paths, work_dir)
                infer_s[file_id] = sum(infer_s.get(u.file_id, 0.0) for u in split.transcribe.values())
        except GroupCancelled:
            raise
        except Exception as error:
            # The engine failed for the whole group: record it on each file; other groups go on.
            logger.exception("transcription failed on worker %s for %s", worker, [d.source for d in todo.values()])
            reason = _engine_failure(error, job.run.plan, worker)
            for item in todo.values():
                item.status, item.error = "failed", f"{item.source}: {reason}"
            stable_paths, infer_s = {}, {}
        check_cancelled()
        write = named(write_task)
        file_paths = {file_id: path for file_id, path in stable_paths.items() if file_id in todo}
        outcomes = write(
            job.output, job.run, decoded, file_paths, infer_s, started_at, job.profile.output, worker=worker, part=job.part
        )
        claims.settle(outcomes)
        return outcomes
    finally:
        claims.release()
        work.remove()


class NamedStages:
    """A stage's task with its run named after the group it handles: "decode files 17-32 of 40"."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, stage: Task) -> Task:
        return stage.with_options(task_run_name=f"{stage.name} {self.label}")


def packing_for(plan: Plan, profile: Profile) -> Packing | None:
    """How short files share windows, when the profile packs and every window's language is known."""
    if not profile.chunking.pack_files:
        return None
    if plan.language is None:
        get_run_logger().info("files are not packed into shared windows: %s detects each file's language", plan.model)
        return None
    return Packing(plan.chunk_s, profile.chunking.pack_gap_s)


def align_group(
    plan: Plan,
    decoded: dict[str, DecodedAudio],
    windows: dict[str, list[Window]],
    texts: dict[str, str],
    work_dir: str,
    stabilization: Stabilization,
    vad: VadThresholds,
    named: Callable[[Task], Task],
) -> tuple[dict[str, str], dict[str, float]]:
    """A group's align mode, after chunking: align, stabilize, judge. Returns (transcript paths, infer seconds) per file.

    `named` names each stage's task run after the group.

    A file whose text does not match its audio is marked failed here (its DecodedAudio), with the reason.
    """
    aligned = named(align_task)(plan, decoded, [w for ws in windows.values() for w in ws], texts, work_dir)
    # The given text is judged by judge_alignment, not by the hallucination filter.
    settings = stabilization.model_copy(update={"drop_hallucinations": False})
    aligned_paths = {file_id: result.transcript_path for file_id, result in aligned.items()}
    stable = named(stabilize_task)(aligned_paths, decoded, windows, settings, vad)
    judged = named(judge_task)(stable, decoded, texts, vad)
    paths = {}
    for file_id, item in decoded.items():
        paths[file_id], error = judged[file_id]
        if error and not windows[file_id]:
            error = "the VAD is confident the audio holds no speech at all: none of the text's words were placed on it"
        if error:
            item.status, item.error = "failed", f"{item.source}: {error}"
    return paths, {file_id: result.infer_s for file_id, result in aligned.items()}


def transcription_units(todo: Mapping[str, DecodedAudio], splits: Mapping[str, ChannelSplit]) -> dict[str, DecodedAudio]:
    """What the engine transcribes, by id: each mixed file whole, each channel of a split file that is to be transcribed."""
    units: dict[str, DecodedAudio] = {}
    for file_id, decoded in todo.items():
        parts = splits[file_id].transcribe.values() if file_id in splits else [decoded]
        units.update((unit.file_id, unit) for unit in parts)
    return units


def _engine_failure(error: Exception, plan: Plan, worker: str) -> str:
    """Why a group's files could not be transcribed, and what to do."""
    if isinstance(error, ModelUnavailableError):
        return (
            f"the planned model {plan.model} ({plan.engine}) cannot be provisioned on worker {worker} "
            f"({str(error).partition('. ')[0]}); install or cache it there, then rerun"
        )
    if isinstance(error, PlanError):
        return f"the planned {plan.engine} {plan.model} does not fit worker {worker} ({error}); rerun on a larger worker"
    if isinstance(error, EngineFailed):  # native code crashed or hung: the files may be fine
        return (
            f"{error} of its group on worker {worker}; the other groups went on. Rerun to retry; "
            "if it fails again, report it with the log"
        )
    if is_disk_full(error):  # the transcripts between the stages live in the temporary directory
        return f"transcription failed on worker {worker}: {no_space_in_temp_dir(tempfile.gettempdir(), error)}"
    return f"transcription failed on worker {worker} ({error!r}); rerun to retry, or report it with the log"


def commit_lost_group(job: GroupJob, error: BaseException) -> list[FileOutcome]:
    """Failed rows for a group whose task never finished (its workers kept dying); a rerun redoes it.

    Written under the group's own part name, so they replace whatever the group committed before it was lost.
    When even these rows cannot be written (the output's disk is full), the outcomes say so, for the summary.
    """
    if isinstance(error, CommitFailed):
        reason = f"{error}; {'free space there, then rerun' if error.disk_full else 'rerun to transcribe it'}"
    elif is_disk_full(error):  # between the stages, in the temporary directory
        reason = f"its group ({job.label}) stopped: {no_space_in_temp_dir(tempfile.gettempdir(), error)}"
    else:
        reason = f"its group ({job.label}) was lost: {error!r}; rerun to transcribe it"
    results = [FileResult(item.source, "failed", error=f"{item.source}: {reason}") for item in job.files]
    try:
        write_file_results(
            job.output, job.run, results, sidecar_formats=(), row_group_size=job.profile.output.row_group_size, part=job.part
        )
    except Exception as write_error:
        get_run_logger().error("the failed rows of %s could not be written either: %r", job.label, write_error)
        unwritten = f" (this failed row could not be written either: {write_error})"
        return [FileOutcome(r.source, r.status, 0.0, f"{r.error}{unwritten}") for r in results]
    return [FileOutcome(r.source, r.status, 0.0, r.error) for r in results]


@task(name="transcribe-group", task_run_name="transcribe {job.label}", cache_policy=NO_CACHE)
def group_task(job: GroupJob) -> list[FileOutcome]:
    return transcribe_group(job)
