"""Operations against a real Prefect server: observable CLI runs, `prefect deploy`, `steadyscribe serve`
and the Dask task runner.

The server runs as `prefect server start` in a subprocess (SQLite in a temporary PREFECT_HOME), and
the pipeline runs in subprocesses pointed at it, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from dask_cluster import DaskCluster
from helpers import FIXTURES
from prefect_services import free_port, recorded_task_runs, wait_for
from steadyscribe.profiles import load_profile
from steadyscribe.flows.runners import task_runner_for, usable_cpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT_FIXTURES = [str(FIXTURES / "clean_gb.flac"), str(FIXTURES / "fast_speaker.flac")]
FLOW_NAME = "steadyscribe-transcribe"
POOL = "steadyscribe"
# Columns that differ between two runs of the same inputs: ids, wall-clock times, durations and the process.
RUN_COLUMNS = {"run_id", "started_at", "finished_at", "decode_s", "infer_s", "worker"}


@pytest.fixture(scope="module")
def api_url(tmp_path_factory) -> str:
    """A Prefect server of its own, started the way an operator starts one."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        assert server.poll() is None, f"prefect server exited:\n{(home / 'server.log').read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for("the Prefect server answered", healthy, 120, every_s=0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture(scope="module")
def api_env(api_url, tmp_path_factory) -> dict[str, str]:
    """Environment of a client process: this server's API, a home of its own."""
    home = tmp_path_factory.mktemp("prefect-client-home")
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)}


@contextmanager
def client_for(api_url: str):
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def run(command: list, env: dict, timeout_s: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def flow_run_writing_to(client, output: Path):
    runs = [r for r in client.read_flow_runs() if r.parameters.get("output") == str(output)]
    assert len(runs) == 1, runs
    return runs[0]


def table_rows(output: Path, table: str) -> list[dict]:
    """A table's rows without the columns that differ between runs, in a stable order."""
    dataset = ds.dataset(output / table, format="parquet")  # no partitioning: the run date is left out
    rows = [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in dataset.to_table().to_pylist()]
    return sorted(rows, key=lambda r: (r["source"], r.get("segment_index", 0), r.get("word_index", 0)))


# ---------------------------------------------------------------- a CLI run, seen through the API


@pytest.fixture(scope="module")
def threads_run(api_env, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("threads-out")
    run([BIN / "steadyscribe", "run", *SHORT_FIXTURES, "--output", str(output)], api_env)
    return output


def test_cli_run_reports_to_the_server(api_url, threads_run):
    with client_for(api_url) as client:
        flow_run = flow_run_writing_to(client, threads_run)
        task_runs = recorded_task_runs(client, flow_run.id, lambda runs: all(t.state.is_final() for t in runs) and len(runs) >= 4)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert flow_run.state.is_completed()
    names = [t.name for t in task_runs]
    group = f"files 1-{len(SHORT_FIXTURES)} of {len(SHORT_FIXTURES)}"
    for stage in ("decode", "chunk", "stabilize", "write"):  # one task run per stage and group, not per file
        assert names.count(f"{stage} {group}") == 1, names
    assert all(t.state.is_completed() for t in task_runs)
    by_key = {a.key: a for a in artifacts if a.key}
    assert by_key["plan"].type == "markdown" and "tiny.en" in by_key["plan"].data
    summary = by_key["run-summary"].data
    assert by_key["run-summary"].type == "markdown"
    for measure in ("files ok / failed / skipped", "audio hours", "wall time", "real-time factor", "peak memory"):
        assert measure in summary
    assert "| 2 / 0 / 0 / 0 |" in summary
    # What an operator acts on: which run, from where to where, and how far it got.
    run_id = summary.split("| run id | ", 1)[1].split(" |", 1)[0]
    assert f"| run id | {run_id} |" in by_key["plan"].data and f"| output | {threads_run}" in summary
    assert "### Slowest files" in summary
    assert by_key["run-progress"].type == "progress" and by_key["run-progress"].data == 100
    assert f"{len(SHORT_FIXTURES)} of {len(SHORT_FIXTURES)} files done" in by_key["run-progress"].description
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and all(a.data == 100.0 for a in progress)


# ---------------------------------------------------------------- prefect.yaml


@pytest.fixture(scope="module")
def deployed(api_url, api_env, tmp_path_factory):
    """deployments/prefect.yaml deployed the documented way, with inputs and output from the environment."""
    inputs = tmp_path_factory.mktemp("nightly-in")
    shutil.copy(FIXTURES / "fast_speaker.flac", inputs)
    output = tmp_path_factory.mktemp("nightly-out")
    env = {**api_env, "STEADYSCRIBE_INPUTS": str(inputs), "STEADYSCRIBE_OUTPUT": str(output)}
    run([BIN / "prefect", "work-pool", "create", POOL, "--type", "process"], env)
    run([BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    with client_for(api_url) as client:
        deployments = {
            name: client.read_deployment_by_name(f"{FLOW_NAME}/{name}") for name in ("nightly", "backfill", "align")
        }
        schedules = {name: client.read_deployment_schedules(d.id) for name, d in deployments.items()}
    return deployments, schedules, inputs, output


def test_deploy_all_registers_nightly_and_backfill(deployed):
    deployments, schedules, inputs, output = deployed
    nightly, backfill = deployments["nightly"], deployments["backfill"]
    [schedule] = schedules["nightly"]
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    assert schedules["backfill"] == []
    assert nightly.parameters == {"inputs": [str(inputs)], "output": str(output), "profile": "cpu-small"}
    assert backfill.parameters["force"] is False
    assert deployments["align"].parameters["text_suffix"] == ".txt" and schedules["align"] == []
    for deployment in deployments.values():
        assert deployment.work_pool_name == POOL and deployment.entrypoint == "steadyscribe.flows.transcribe:transcribe"
        assert deployment.enforce_parameter_schema
        # No code is pulled from git: the worker runs this checkout.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        assert set(deployment.parameter_openapi_schema["properties"]) == {
            "inputs", "output", "profile", "memory_budget", "batch_size", "force", "scheduler",
            "model", "beam_size", "language", "initial_prompt", "channels", "text_suffix",
        }


def test_deploy_without_inputs_set_fails_clearly(api_env, deployed):  # `deployed` created the work pool
    result = subprocess.run(
        [BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        env=api_env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "set STEADYSCRIBE_INPUTS and STEADYSCRIBE_OUTPUT" in result.stdout + result.stderr


def test_deployment_rejects_parameters_that_do_not_fit_the_flow(api_url, deployed):
    deployments, *_ = deployed
    with client_for(api_url) as client, pytest.raises(Exception, match="(?i)validation|batch_size"):
        client.create_flow_run_from_deployment(deployments["backfill"].id, parameters={"batch_size": "lots"})


def test_worker_runs_the_deployed_backfill(api_url, api_env, deployed):
    deployments, _, inputs, output = deployed
    with client_for(api_url) as client:
        flow_run = client.create_flow_run_from_deployment(deployments["backfill"].id, parameters={"force": True})
    run([BIN / "prefect", "worker", "start", "--pool", POOL, "--run-once"], api_env, timeout_s=300, cwd=inputs)
    with client_for(api_url) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed(), finished.state
    assert [row["status"] for row in table_rows(output, "files")] == ["ok"]


def test_worker_runs_the_deployed_align(api_url, api_env, deployed, tmp_path):
    """The `align` deployment: a real recording aligned to its own text, on the bundled tiny.en."""
    deployments, *_ = deployed
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    recording = FIXTURES / "real" / "r09_librivox_austen.flac"
    shutil.copy(recording, inputs)
    (inputs / "r09_librivox_austen.txt").write_text(json.loads(recording.with_suffix(".json").read_text())["text"])
    parameters = {"inputs": [str(inputs)], "output": str(output), "model": "tiny.en"}
    with client_for(api_url) as client:
        flow_run = client.create_flow_run_from_deployment(deployments["align"].id, parameters=parameters)
    run([BIN / "prefect", "worker", "start", "--pool", POOL, "--run-once"], api_env, timeout_s=300, cwd=inputs)
    with client_for(api_url) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed(), finished.state
    [row] = table_rows(output, "files")
    assert (row["status"], row["mode"], row["aligned_share"]) == ("ok", "align", 1.0)
    assert len(table_rows(output, "words")) == row["words_n"] == 71


# ---------------------------------------------------------------- steadyscribe serve

# `steadyscribe serve` as the CLI runs it, built from serve.register alone.
SERVE = (
    "import argparse, sys\n"
    "from steadyscribe.app.serve import register\n"
    "parser = argparse.ArgumentParser(prog='steadyscribe')\n"
    "register(parser.add_subparsers(required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def test_serve_schedules_nightly_and_runs_backfill_on_demand(api_url, api_env, tmp_path):
    from prefect.deployments import run_deployment

    output = tmp_path / "served-out"
    log = tmp_path / "serve.log"
    command = [sys.executable, "-c", SERVE, "serve", SHORT_FIXTURES[1], "--output", str(output), "--cron", "30 1 * * *"]
    with log.open("w") as log_file:
        serving = subprocess.Popen(command, env=api_env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with client_for(api_url) as client:

            def served():
                assert serving.poll() is None, log.read_text()
                names = {d.name: d for d in client.read_deployments()}
                return names if {"served-nightly", "served-backfill"} <= set(names) else None

            deployments = wait_for("served deployments", served, 120, every_s=0.5)
            [schedule] = client.read_deployment_schedules(deployments["served-nightly"].id)
            assert client.read_deployment_schedules(deployments["served-backfill"].id) == []
        assert schedule.schedule.cron == "30 1 * * *" and schedule.active
        with temporary_settings({PREFECT_API_URL: api_url}):
            flow_run = run_deployment(f"{FLOW_NAME}/served-backfill", timeout=240)
        assert flow_run.state.is_completed(), flow_run.state
        assert [row["status"] for row in table_rows(output, "files")] == ["ok"]
    finally:
        serving.terminate()
        serving.wait(30)


# ---------------------------------------------------------------- Dask


def test_runner_follows_the_profile(tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner_for(load_profile("cpu-small")), ThreadPoolTaskRunner)
    cluster = tmp_path / "cluster.yaml"
    runner_spec = {"kind": "dask", "address": "tcp://10.0.0.5:8786"}
    cluster.write_text(yaml.safe_dump({"extends": "cpu-small", "runner": runner_spec}))
    runner = task_runner_for(load_profile(str(cluster)))
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.5:8786"


def test_dask_local_cluster_writes_the_same_tables(api_url, api_env, threads_run, tmp_path):
    # The engine threads of the thread run (all usable CPUs), not the local cluster's CPUs / workers:
    # torch's intra-op threads split float sums differently, so 1 thread against 2 changed a
    # segment's avg_logprob and no_speech_prob in the 7th digit (-0.28654213 against -0.28654216).
    profile = tmp_path / "dask-local.yaml"
    profile.write_text(yaml.safe_dump(
        {"extends": "cpu-small", "threads": usable_cpus(), "runner": {"kind": "dask", "n_workers": 2}}
    ))
    output = tmp_path / "dask-out"
    script = (
        "import sys\n"
        "from steadyscribe.flows.transcribe import transcribe\n"
        "if __name__ == '__main__':\n"
        "    transcribe(inputs=sys.argv[3:], output=sys.argv[2], profile=sys.argv[1])\n"
    )
    env = {**api_env, "PREFECT_LOGGING_LEVEL": "INFO"}  # to see which cluster the runner starts
    result = run([sys.executable, "-c", script, str(profile), str(output), *SHORT_FIXTURES], env)
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in result.stdout + result.stderr
    with client_for(api_url) as client:
        flow_run = flow_run_writing_to(client, output)
        task_runs = recorded_task_runs(
            client, flow_run.id, lambda runs: sum(t.name.startswith("stabilize ") and t.state.is_final() for t in runs) >= 2
        )
    assert flow_run.state.is_completed()
    stabilize_runs = [t.name for t in task_runs if t.name.startswith("stabilize ")]
    # Two files on two workers: a group each (flows/transcribe.py:files_per_group).
    assert sorted(stabilize_runs) == [f"stabilize files {i}-{i} of {len(SHORT_FIXTURES)}" for i in (1, 2)]
    for table in ("files", "segments", "words"):
        dask_rows, threads_rows = table_rows(output, table), table_rows(threads_run, table)
        if table == "files":  # the profile's name is recorded; everything else must match
            assert {r.pop("profile") for r in dask_rows} == {"dask-local"}
            assert {r.pop("profile") for r in threads_rows} == {"cpu-small"}
        assert dask_rows == threads_rows, table


@pytest.fixture
def dask_cluster(api_url, tmp_path):
    """Two `dask worker` processes reporting to this module's Prefect server, each with private temp dirs."""
    cluster = DaskCluster(tmp_path / "cluster", workers=2, prefect_api_url=api_url)
    try:
        yield cluster
    finally:
        cluster.close()


def test_dask_deployment_transcribes_on_the_cluster(api_url, api_env, deployed, dask_cluster, threads_run, tmp_path):
    """The `dask` deployment of prefect.yaml, run by a process worker: every group runs on the Dask workers."""
    profile = tmp_path / "one-file-groups.yaml"
    profile.write_text(yaml.safe_dump({"extends": "cpu-small", "runner": {"files_per_group": 1}}))
    output = tmp_path / "dask-deployment-out"
    parameters = {"inputs": SHORT_FIXTURES, "output": str(output), "profile": str(profile), "scheduler": dask_cluster.address}
    with client_for(api_url) as client:
        deployment = client.read_deployment_by_name(f"{FLOW_NAME}/dask")
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    run([BIN / "prefect", "worker", "start", "--pool", POOL, "--run-once"], api_env, timeout_s=400, cwd=tmp_path)
    with client_for(api_url) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed(), f"{finished.state}\n{dask_cluster.logs()}"
    rows = table_rows(output, "files")
    assert [(r["source"], r["status"]) for r in rows] == [(source, "ok") for source in sorted(SHORT_FIXTURES)]
    workers = ds.dataset(output / "files", format="parquet").to_table(columns=["worker"])["worker"].to_pylist()
    assert set(workers) == {w.name for w in dask_cluster.workers}  # both workers transcribed
    words = [{k: r[k] for k in ("source", "word", "start", "end")} for r in table_rows(output, "words")]
    assert words == [{k: r[k] for k in ("source", "word", "start", "end")} for r in table_rows(threads_run, "words")]
