"""The transcription flow: discover → probe → select → groups of (decode → chunk → infer → stabilize → write) → report.

It only composes the stages in tasks/. The flow itself discovers the inputs, has one worker
probe its machine and plan the run (engine, model, precision, quantization: fixed for the whole
run, since they are part of the settings key), hands the files out in groups and reports. Each
group runs as one task where the profile's runner puts it (a thread of this process, or a Dask
worker: flows/group.py), which commits the group's rows itself; at most a few groups per worker
are in flight, so memory and local disk stay bounded however many files there are. This
process never loads a model.

Run it with `steadyscribe run INPUT... --output OUT` (app/cli.py).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from steadyscribe.errors import FilesFailed, PlanError
from steadyscribe.flows.runners import groups_in_flight, task_runner_for, worker_count
from steadyscribe.profiles import DEFAULT_PROFILE, Profile, apply_overrides, load_profile, run_overrides
from steadyscribe.printable import printable
from steadyscribe.progress import reporter
from steadyscribe.records import FileOutcome, InputFile, Plan
from steadyscribe.run_policy import arm_retries, end_without_retries, run_timeout_s
from steadyscribe.storage import check_writable
from steadyscribe.tasks.align import ALIGNING_ENGINES
from steadyscribe.tasks.discover import discover_task
from steadyscribe.flows.group import GroupCancelled, GroupJob, commit_lost_group, group_task
from steadyscribe.tasks.probe import probe_task
from steadyscribe.tasks.report import (
    ProgressArtifact, RunSummary, announce_outcomes, failed_message, file_name, run_markdown, summarize, summary_markdown,
)
from steadyscribe.tasks.select import accelerators_needed, plan_markdown, select_task
from steadyscribe.tasks.write import RunInfo, completed_file_keys, remove_orphan_parts, settings_key
from steadyscribe.url_credentials import redact_url, refuse_credentials_in_urls


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


# Groups per worker, at least, where several workers share the files and there are files enough:
# with one group each, a worker that finishes first idles while the others work.
GROUPS_PER_WORKER = 2


def files_per_group(plan: Plan, profile: Profile, files: int, workers: int) -> int:
    """The profile's group size, else enough files to keep a batch full of windows from many short clips;
    fewer where that would leave one of several workers without GROUPS_PER_WORKER groups.

    One worker (the thread runner, or a one-worker cluster) keeps the full size: its groups share one
    engine, so a smaller group only fills fewer batches.
    """
    largest = profile.runner.files_per_group or max(16, 4 * plan.batch_size)
    if workers < 2:
        return largest
    return max(1, min(largest, math.ceil(files / (GROUPS_PER_WORKER * workers))))


def output_settings(profile: Profile) -> dict:
    """Profile settings that change the tables' content (a change re-transcribes files).

    `audio` only when channels are split, so that mixed runs keep the keys they had before the option existed.
    """
    settings = {
        "chunking": profile.chunking.model_dump(),
        "vad": profile.vad.model_dump(),
        "stabilization": profile.stabilization.model_dump(),
    }
    if profile.audio.channels != "mix":
        settings["audio"] = profile.audio.model_dump()
    return settings


def flow_run_name() -> str:
    """"transcribe INPUT -> OUTPUT (PROFILE, DATE)" ("align ..." with a text suffix), any credential in a URL redacted.

    What runs where: the first input's last part (and how many more), the whole output (a local
    one made absolute, so runs from different folders differ) and the UTC date. ASCII only: the
    UI's run graph drops characters such as an en dash.
    """
    parameters = flow_run.parameters
    mode = "align" if parameters.get("text_suffix") else "transcribe"
    inputs = [redact_url(str(source)) for source in parameters.get("inputs") or []]
    first = file_name(inputs[0]) if inputs else "nothing"
    more = f" +{len(inputs) - 1} more" if len(inputs) > 1 else ""
    output = redact_url(str(parameters["output"]))
    if "://" not in output:
        output = os.path.abspath(output)
    profile = parameters.get("profile", DEFAULT_PROFILE)
    # The name starts every log line of the run: control characters escaped.
    return printable(f"{mode} {first}{more} -> {output} ({profile}, {datetime.now(timezone.utc):%Y-%m-%d})")


# The run time limit comes from the deployment's environment (steadyscribe/run_policy.py).
@flow(name="steadyscribe-transcribe", flow_run_name=flow_run_name, timeout_seconds=run_timeout_s())
def transcribe(
    inputs: list[str],
    output: str,
    profile: str = "cpu-small",
    memory_budget: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    scheduler: str | None = None,
    model: str | None = None,
    beam_size: int | None = None,
    language: str | None = None,
    initial_prompt: str | None = None,
    channels: Literal["mix", "split"] | None = None,
    text_suffix: str | None = None,
) -> RunSummary | State:
    """Transcribe every audio input into the Parquet tables under `output`.

    Files already transcribed into `output` with the same content and settings are
    skipped unless `force`. memory_budget, batch_size, model, beam_size, language,
    initial_prompt and channels (audio.channels) override the profile for this run (None: the
    profile's). Every input ends
    in one `files` row: ok, skipped or failed.
    When a file failed, the run still commits the others and then ends Failed; calling
    the flow then raises FilesFailed, which carries the summary (the process's reporter has it
    too, which the CLI reads: steadyscribe/progress.py). `scheduler` (a Dask
    scheduler address, e.g. tcp://host:8786) runs the groups on that cluster whatever the
    profile's runner says.

    With `text_suffix` (e.g. ".txt") the run aligns instead of transcribing: each audio file's
    words and times come from the text in the file of the same name with that suffix
    (tasks/align.py), and its `files` row says mode `align`.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    # Configuration errors stop the run here, before any audio is touched. The CLI refuses
    # credentials in URLs before the flow run exists; this catches deployments and direct callers.
    refuse_credentials_in_urls([*inputs, output])
    overrides = run_overrides(locals())  # the parameters above that override the profile
    # The groups read audio.channels from the profile itself.
    chosen = apply_overrides(load_profile(profile), {"channels": channels})
    if text_suffix and chosen.audio.channels != "mix":
        raise PlanError("aligning takes one text per file, for its channels mixed: use audio.channels mix (--channels mix)")
    check_writable(output)

    with task_runner_for(chosen, scheduler) as runner:
        # A worker probes and plans: the plan must fit the machines that run inference, and
        # provisioning the model is their business, not this process's.
        gpu, bitsandbytes = accelerators_needed(chosen)
        probe_options = {"model_cache": chosen.model_cache_dir, "check_accelerators": gpu, "bitsandbytes_devices": bitsandbytes}
        probe = runner.submit(probe_task, {"paths": [output], **probe_options}).result()
        plan = runner.submit(select_task, {"profile": chosen, "probe": probe, "overrides": overrides}).result()
        logger.info("plan: %s", plan.reason)
        if text_suffix and plan.engine not in ALIGNING_ENGINES:
            raise PlanError(
                f"aligning a text needs the {' or '.join(ALIGNING_ENGINES)} engine, and profile {chosen.name} planned "
                f"{plan.engine}; use a profile that picks it (cpu-fast)"
            )
        arm_retries()  # the configuration and plan work: from here on, a failure may be the infrastructure's

        settings = output_settings(chosen) | ({"align_text_suffix": text_suffix} if text_suffix else {})
        mode = "align" if text_suffix else "transcribe"
        run = RunInfo(new_run_id(), datetime.now(timezone.utc).date(), plan, settings_key(plan, settings), mode)
        discovery = discover_task(inputs)
        files = discovery.files
        if orphans := remove_orphan_parts(output):
            logger.info("removed %d files that interrupted commits left behind: %s", len(orphans), orphans)
        done = frozenset() if force else frozenset(f for f, key in completed_file_keys(output) if key == run.settings_key)
        logger.info("run %s: %d inputs; %d files already transcribed with these settings", run.run_id, len(files), len(done))
        shown_inputs = [redact_url(source) for source in inputs]
        run_table = run_markdown(run.run_id, shown_inputs, redact_url(output), chosen.name, len(files), len(done))
        create_markdown_artifact(
            run_table + plan_markdown(plan, probe), key="plan", description="What the run does, the execution plan and why"
        )
        reporter().run_started(
            len(files), f"{plan.model} with {plan.engine}, batch {plan.batch_size}", "aligning" if text_suffix else "transcribing"
        )
        jobs = _group_jobs(files, output, run, chosen, overrides, done, refit=not isinstance(runner, ThreadPoolTaskRunner), text_suffix=text_suffix, force=force, workers=worker_count(runner))
        outcomes = _run_groups(runner, jobs, groups_in_flight(runner))

    summary = summarize(
        run.run_id, output, plan.to_dict(), outcomes, time.perf_counter() - started,
        inputs=shown_inputs, profile=chosen.name, passed_over=discovery.passed_over,
    )
    create_markdown_artifact(summary_markdown(summary), key="run-summary", description="Run summary")
    reporter().run_finished(summary)
    if summary.files_failed:
        # Failed, not Completed, so the UI, automations and callers notice; a returned state
        # (rather than a raise) keeps the message short and the summary with the error.
        end_without_retries()  # bad inputs are rows, not retries
        return Failed(message=failed_message(summary), data=FilesFailed(summary))
    return summary


def _group_jobs(
    files: list[InputFile],
    output: str,
    run: RunInfo,
    profile: Profile,
    overrides: dict,
    done: frozenset[str],
    refit: bool,
    text_suffix: str | None = None,
    force: bool = False,
    workers: int = 1,
) -> list[GroupJob]:
    size = files_per_group(run.plan, profile, len(files), workers)
    flow_run_id = get_run_context().flow_run.id
    return [
        GroupJob(
            index=first // size,
            files=files[first : first + size],
            label=f"files {first + 1}-{first + len(files[first : first + size])} of {len(files)}",
            output=output,
            run=run,
            profile=profile,
            overrides=overrides,
            skip_file_ids=done,
            flow_run_id=flow_run_id,
            refit=refit,
            text_suffix=text_suffix,
            force=force,
        )
        for first in range(0, len(files), size)
    ]


def _run_groups(runner: TaskRunner, jobs: list[GroupJob], limit: int) -> list[FileOutcome]:
    """Submit the groups, at most `limit` in flight, and gather their outcomes in order.

    A group whose task is lost (its workers kept dying, and Dask gave up retrying it elsewhere)
    gets failed rows from here, so every input still ends in one row; the next run redoes it.
    """
    logger = get_run_logger()
    outcomes: list[FileOutcome] = []
    in_flight: deque[tuple[GroupJob, PrefectFuture]] = deque()
    progress = ProgressArtifact(sum(len(job.files) for job in jobs))

    def collect() -> None:
        job, future = in_flight.popleft()
        try:
            finished = future.result()
        except GroupCancelled:
            raise
        except Exception as error:
            logger.error("%s was lost (%r); its files are marked failed for the next run to redo", job.label, error)
            finished = commit_lost_group(job, error)
        announce_outcomes(finished, failed_before=sum(outcome.status == "failed" for outcome in outcomes))
        outcomes.extend(finished)
        progress.add(finished)
        # Reported here, not where the rows are written, so that groups on Dask workers count too.
        statuses = [outcome.status for outcome in finished]
        skipped = statuses.count("skipped") + statuses.count("duplicate")
        reporter().files_done(job.label, statuses.count("ok"), statuses.count("failed"), skipped)

    for job in jobs:
        if len(in_flight) >= limit:
            collect()
        in_flight.append((job, runner.submit(group_task, {"job": job})))
    while in_flight:
        collect()
    return outcomes

