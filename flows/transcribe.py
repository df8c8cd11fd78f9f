"""The transcription flow: discover → probe → select → (decode → chunk → infer → stabilize → write) → report.

It only composes the stages in tasks/; each stage's logic lives there as plain functions.
Files go through the middle stages in groups: each group's windows share the engine's
batches (cross-file batching), and each group is committed before the next starts, so a
killed run keeps what it finished and its decoded audio never piles up on disk.

Run it with `steadyscribe run` or `python -m steadyscribe.flows.transcribe INPUT... --output OUT`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from steadyscribe.engines import available_engines
from steadyscribe.errors import FilesFailed
from steadyscribe.models.provision import model_cache_dir
from steadyscribe.profiles import Profile, load_profile
from steadyscribe.records import DecodedAudio, FileOutcome, InputFile, Plan
from steadyscribe.storage import check_writable
from steadyscribe.tasks.chunk import chunk_task
from steadyscribe.tasks.decode import decode_task
from steadyscribe.tasks.discover import discover_task
from steadyscribe.tasks.infer import infer_task
from steadyscribe.tasks.probe import probe_task
from steadyscribe.tasks.report import RunSummary, summarize, summary_markdown
from steadyscribe.tasks.select import plan_markdown, select_task
from steadyscribe.tasks.stabilize import stabilize_task
from steadyscribe.tasks.write import RunInfo, completed_file_keys, settings_key, write_task


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def files_per_group(plan: Plan) -> int:
    """Enough files to keep a batch full of windows from many short clips."""
    return max(16, 4 * plan.batch_size)


def output_settings(profile: Profile) -> dict:
    """Profile settings that change the tables' content (a change re-transcribes files)."""
    return {"chunking": profile.chunking.model_dump(), "stabilization": profile.stabilization.model_dump()}


@flow(name="steadyscribe-transcribe", flow_run_name="transcribe {profile} → {output}")
def transcribe(
    inputs: list[str],
    output: str,
    profile: str = "cpu-small",
    memory_budget: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    model: str | None = None,
    beam_size: int | None = None,
    language: str | None = None,
    initial_prompt: str | None = None,
) -> RunSummary | State:
    """Transcribe every audio input into the Parquet tables under `output`.

    Files already transcribed into `output` with the same content and settings are
    skipped unless `force`. memory_budget, batch_size, model, beam_size, language and
    initial_prompt override the profile for this run (None: the profile's). Every input ends in one `files` row: ok, skipped or failed.
    When a file failed, the run still commits the others and then ends Failed; calling
    the flow then raises FilesFailed, which carries the summary.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    # Configuration errors stop the run here, before any audio is touched.
    chosen = load_profile(profile)
    check_writable(output)

    probe = probe_task([str(model_cache_dir(chosen.model_cache_dir)), output])
    overrides = {
        "memory_budget": memory_budget, "batch_size": batch_size, "model": model,
        "beam_size": beam_size, "language": language, "initial_prompt": initial_prompt,
    }
    plan = select_task(chosen, probe, available_engines(), overrides)
    logger.info("plan: %s", plan.reason)
    create_markdown_artifact(plan_markdown(plan, probe), key="plan", description="Execution plan and why")

    run = RunInfo(new_run_id(), datetime.now(timezone.utc).date(), plan, settings_key(plan, output_settings(chosen)))
    files = discover_task(inputs)
    done = frozenset() if force else frozenset(f for f, key in completed_file_keys(output) if key == run.settings_key)
    logger.info("run %s: %d inputs; %d files already transcribed with these settings", run.run_id, len(files), len(done))

    outcomes: list[FileOutcome] = []
    group_size = files_per_group(plan)
    for first in range(0, len(files), group_size):
        group = files[first : first + group_size]
        label = f"files {first + 1}–{first + len(group)} of {len(files)}"
        logger.info(label)
        outcomes += _transcribe_group(group, label, output, run, chosen, done)

    summary = summarize(run.run_id, output, asdict(plan), outcomes, time.perf_counter() - started)
    create_markdown_artifact(summary_markdown(summary), key="run-summary", description="Run summary")
    if summary.files_failed:
        # Failed, not Completed, so the UI, automations and callers notice; a returned state
        # (rather than a raise) keeps the message short and the summary with the error.
        error = FilesFailed(summary)
        return Failed(message=f"{error}; see the run-summary artifact", data=error)
    return summary


def _transcribe_group(
    group: list[InputFile],
    label: str,
    output: str,
    run: RunInfo,
    profile: Profile,
    skip_file_ids: frozenset[str],
) -> list[FileOutcome]:
    """Decode, transcribe and commit one group of files; return one outcome per file.

    `label` ("files 17–32 of 40") names the group's inference and write task runs.
    """
    group_started = datetime.now(timezone.utc)
    work_dir = tempfile.mkdtemp(prefix=f"steadyscribe-{run.run_id}-")
    try:
        decoded: list[DecodedAudio] = decode_task.map(group, unmapped(work_dir), unmapped(skip_file_ids)).result()
        # Identical content under two names is transcribed once and written under both.
        todo = {d.file_id: d for d in decoded if d.status == "ok"}
        chunked = chunk_task.map(
            list(todo.values()), unmapped(run.plan.chunk_s), unmapped(profile.chunking.min_pause_s)
        ).result()
        windows = [w for file_windows in chunked for w in file_windows]
        try:
            infer = infer_task.with_options(task_run_name=f"infer {run.plan.model} batch {run.plan.batch_size}, {label}")
            inference = infer(run.plan, todo, windows, work_dir) if todo else {}
            stabilized = stabilize_task.map(
                [inference[file_id].transcript_path for file_id in todo],
                list(todo.values()),
                chunked,
                unmapped(profile.stabilization.model_dump()),
            ).result()
        except Exception as error:
            # The engine failed for the whole group: record it on each file and let later groups go on.
            get_run_logger().exception("transcription failed for files %s", [d.source for d in todo.values()])
            for item in todo.values():
                item.status = "failed"
                item.error = f"{item.source}: transcription failed ({error!r}); rerun to retry, or report it with the log"
            inference, stabilized = {}, []
        return write_task.with_options(task_run_name=f"write {label}")(
            output,
            run,
            decoded,
            dict(zip(todo, stabilized)),
            {file_id: result.infer_s for file_id, result in inference.items()},
            group_started,
            profile.output,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    from steadyscribe.flows.job import main

    raise SystemExit(main())
