"""Schedules fire: a one-minute cron on a real `prefect server start` runs the flow and writes its tables.

What a nightly user sets up, on loopback, against a server with its scheduler service running
(tests/prefect_services.py): `steadyscribe serve DIR --output OUT --cron "* * * * *"`, and the
docs' work-pool path (a process pool, `prefect deploy` of deployments/prefect.yaml, a worker).
The test waits for a run the scheduler created (not one started by hand) to complete, checks the
tables it wrote, and fails on any error in the server's log, e.g. a scheduler service that fails
on every loop while the UI still shows the deployment "Ready".
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from helpers import FIXTURES, ROOT, files_rows
from prefect_services import PrefectServer, api, stop_process_group, wait_for

pytestmark = pytest.mark.slow


# A cron fires at the next minute; the run then loads the model and transcribes two short files.
SCHEDULED_RUN_TIMEOUT_S = 240.0


def served_runs(server: PrefectServer, deployment: str, output: Path) -> list[dict]:
    """Flow runs of `deployment` (a deployment's name) that write into `output`."""
    runs = api(server, "POST", "/flow_runs/filter", {"deployments": {"name": {"any_": [deployment]}}})
    return [run for run in runs if run["parameters"].get("output") == str(output)]


def words_per_file(output: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in ds.dataset(output / "words", format="parquet").to_table(columns=["file_id"]).to_pylist():
        counts[row["file_id"]] = counts.get(row["file_id"], 0) + 1
    return counts


def test_served_one_minute_cron_fires_and_writes_the_tables(prefect_services: PrefectServer, tmp_path: Path):
    inputs = tmp_path / "incoming"
    inputs.mkdir()
    for name in ("clean_gb", "noisy"):
        shutil.copy(FIXTURES / f"{name}.flac", inputs)
    output = tmp_path / "transcripts"
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "w") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "steadyscribe.app.cli", "serve", str(inputs), "--output", str(output),
             "--cron", "* * * * *", "--profile", "cpu-fast"],
            # As deployments/prefect.yaml sets them (steadyscribe/run_policy.py).
            env=prefect_services.env(STEADYSCRIBE_FLOW_RETRIES="2", STEADYSCRIBE_RUN_TIMEOUT_HOURS="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run = wait_for_scheduled_run(prefect_services, serve, serve_log, "served-nightly", output)
    finally:
        stop_process_group(serve)

    assert run["state_type"] == "COMPLETED", (run["state"], serve_log.read_text())
    # Armed once the plan worked: a run that raised from here on would run again.
    assert run["empirical_policy"]["retries"] == 2
    rows = files_rows(output)
    # Later minutes' runs only add skipped rows: the scheduled run's own rows are what it wrote.
    written = [row for row in rows if row["status"] != "skipped"]
    assert sorted(row["source"] for row in written) == sorted(str(path) for path in inputs.iterdir())
    assert {row["status"] for row in written} == {"ok"}
    words = words_per_file(output)
    assert all(words.get(row["file_id"], 0) > 0 for row in written), words
    assert prefect_services.errors() == []


def test_deployed_nightly_on_a_process_worker_fires_and_writes_the_tables(prefect_services: PrefectServer, tmp_path: Path):
    """The docs' work-pool path: a process pool, `prefect deploy` of deployments/prefect.yaml, a worker."""
    inputs = tmp_path / "incoming"
    inputs.mkdir()
    shutil.copy(FIXTURES / "clean_gb.flac", inputs)
    output = tmp_path / "transcripts"
    env = prefect_services.env(STEADYSCRIBE_INPUTS=str(inputs), STEADYSCRIBE_OUTPUT=str(output))
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]

    def cli(*args: str) -> None:
        done = subprocess.run([*prefect, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    cli("work-pool", "create", "steadyscribe", "--type", "process", "--overwrite")
    cli("deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "nightly", "--cron", "* * * * *")
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen(
            [*prefect, "worker", "start", "--pool", "steadyscribe"], env=env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        run = wait_for_scheduled_run(prefect_services, worker, worker_log, "nightly", output)
    finally:
        stop_process_group(worker)
        api(prefect_services, "POST", f"/deployments/{deployment_id(prefect_services, 'nightly')}/pause_deployment")

    assert run["state_type"] == "COMPLETED", (run["state"], worker_log.read_text())
    # prefect.yaml's environment reached the run: retries armed once the plan worked.
    assert run["empirical_policy"]["retries"] == 2
    written = [row for row in files_rows(output) if row["status"] != "skipped"]
    assert [row["source"] for row in written] == [str(inputs / "clean_gb.flac")]
    assert written[0]["status"] == "ok" and words_per_file(output).get(written[0]["file_id"], 0) > 0
    assert prefect_services.errors() == []


def deployment_id(server: PrefectServer, name: str) -> str:
    return api(server, "GET", f"/deployments/name/steadyscribe-transcribe/{name}")["id"]


def wait_for_scheduled_run(
    services: PrefectServer, process: subprocess.Popen, log: Path, deployment: str, output: Path
) -> dict:
    """The first run of `deployment` that its cron scheduled and that ended, while `process` (serve or a worker) runs it."""

    def completed_scheduled_run() -> dict | None:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited with {process.returncode}:\n{log.read_text()}")
        # A failing scheduler service logs an error on its first loop: no need to wait out the deadline.
        assert services.errors() == []
        for run in served_runs(services, deployment, output):
            if run["auto_scheduled"] and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
                return run
        return None

    return wait_for(
        f"a run of {deployment} scheduled by the one-minute cron ended",
        completed_scheduled_run,
        SCHEDULED_RUN_TIMEOUT_S,
        explain=lambda: f"server errors: {services.errors()}\n{log.name}:\n{log.read_text()}",
    )
