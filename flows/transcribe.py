"""The transcription flow: discover → decode → probe → select → chunk → infer → stabilize → write → report.

It only composes the stages in tasks/; each stage's logic lives there as plain functions.
Run it with `steadyscribe run` or `python -m flows.transcribe INPUT... --output OUT`.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact

from steadyscribe.profiles import load_profile
from steadyscribe.storage import check_writable
from tasks.chunk import chunk_task
from tasks.decode import decode_task
from tasks.discover import discover_task
from tasks.infer import infer_task
from tasks.probe import probe_task
from tasks.report import FileOutcome, RunSummary, summarize, summary_markdown
from tasks.select import plan_markdown, select_task
from tasks.stabilize import stabilize_task
from tasks.write import completed_file_keys, settings_key, write_task


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@flow(name="steadyscribe-transcribe", flow_run_name="transcribe {profile} → {output}")
def transcribe(
    inputs: list[str],
    output: str,
    profile: str = "cpu-small",
    memory_budget: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
) -> RunSummary:
    """Transcribe every audio input into the Parquet tables under `output`.

    Files already transcribed into `output` with the same content and settings are
    skipped unless `force`. Every input ends in one `files` row: ok, skipped or failed.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    run_id = new_run_id()
    # Configuration errors stop the run here, before any audio is touched.
    chosen = load_profile(profile)
    check_writable(output)

    probe = probe_task([chosen.model_cache or "", output])
    plan = select_task(chosen, probe, memory_budget=memory_budget, batch_size=batch_size)
    logger.info("plan: %s", plan.reason)
    create_markdown_artifact(plan_markdown(plan, probe), key="plan", description="Execution plan")

    files = discover_task(inputs)
    key = settings_key(plan, chosen)
    done = set() if force else completed_file_keys(output)
    with tempfile.TemporaryDirectory(prefix=f"steadyscribe-{run_id}-") as work_dir:
        decoded = decode_task.map(files, unmapped(work_dir)).result()
        ok = [d for d in decoded if d.status == "ok" and (d.file_id, key) not in done]
        for d in decoded:
            if d.status == "ok" and (d.file_id, key) in done:
                d.status = "skipped"
        unique = {d.file_id: d for d in ok}
        windows = [w for ws in chunk_task.map(list(unique.values()), chosen.chunking.max_window_s).result() for w in ws]
        inference = infer_task(plan, unique, windows, work_dir) if unique else {}
        stabilized = stabilize_task.map(
            [inference[d.file_id] for d in unique.values()], list(unique.values()), unmapped(chosen.stabilization),
            [[w for w in windows if w.file_id == d.file_id] for d in unique.values()],
        ).result()
        transcripts = dict(zip(unique, stabilized))
        write_task.map(
            unmapped(output), unmapped(run_id), decoded,
            [transcripts.get(d.file_id) if d.status == "ok" else None for d in decoded],
            [inference[d.file_id].infer_s if d.file_id in inference else 0.0 for d in decoded],
            unmapped(plan), unmapped(key), unmapped(chosen.output),
        ).result()

    outcomes = [FileOutcome(d.source, d.status, d.duration_s, d.error) for d in decoded]
    summary = summarize(run_id, output, asdict(plan), outcomes, time.perf_counter() - started)
    create_markdown_artifact(summary_markdown(summary), key="run-summary", description="Run summary")
    return summary


if __name__ == "__main__":
    from steadyscribe.cli import main

    raise SystemExit(main(["run", *__import__("sys").argv[1:]]))
