"""The pieces of distributed runs that need no cluster: the per-process engine, a worker's own
batch size, what the probe looks for, the runner a profile or scheduler asks for, cancellation,
and a group's commit that a retry replaces."""

from __future__ import annotations

from datetime import date

import pyarrow.dataset as ds
import pytest
import yaml

from helpers import machine
from steadyscribe.errors import PlanError
from steadyscribe.flows.runners import task_runner_for
from steadyscribe.flows.transcribe import files_per_group
from steadyscribe.profiles import ProfileError, load_profile
from steadyscribe.records import Plan
from steadyscribe import inference
from steadyscribe.tasks.select import accelerators_needed, refit_plan, select_plan
from steadyscribe.tasks.write import FileResult, RunInfo, write_file_results

GiB = 2**30


class FakeEngine:
    name = "fake"

    def __init__(self, plan: Plan):
        self.batch_size = plan.batch_size


def test_an_engine_is_loaded_once_per_process_and_replaced_only_for_another_plan(monkeypatch):
    loads = []
    monkeypatch.setattr(inference, "_engines", {})
    monkeypatch.setattr(inference, "load_engine", lambda plan: loads.append(plan) or FakeEngine(plan))
    plan = Plan(engine="ctranslate2", model="tiny.en", quantization="int8", batch_size=8)
    first = inference.cached_engine(plan)
    assert inference.cached_engine(Plan(**{**plan.__dict__, "reason": "another group"})) is first
    assert len(loads) == 1 and inference.loaded_engines() == [inference.engine_key(plan)]
    other = Plan(**{**plan.__dict__, "model": "base.en"})
    assert inference.cached_engine(other) is not first
    assert len(loads) == 2 and inference.loaded_engines() == [inference.engine_key(other)]  # never two models at once


def test_a_worker_refits_batch_and_threads_but_keeps_what_the_settings_key_holds():
    profile = load_profile("cpu-batched")
    plan = select_plan(profile, machine(ram_gib=24, cpus=8), {"transformers"})
    assert plan.batch_size == 8 and plan.threads == 8  # on a CPU, the smallest batch near the best throughput
    small = refit_plan(plan, profile, machine(ram_gib=3, cpus=2))
    assert (small.engine, small.model, small.dtype, small.quantization) == (plan.engine, plan.model, plan.dtype, plan.quantization)
    assert small.batch_size < plan.batch_size and small.threads == 2
    with pytest.raises(PlanError):
        refit_plan(plan, profile, machine(ram_gib=0.5, cpus=2))


def test_auto_refits_from_the_candidate_it_chose():
    auto = load_profile("auto")
    plan = select_plan(auto, machine(ram_gib=24, cpus=4), {"ctranslate2", "whisper"})
    assert plan.profile == "cpu-fast"
    assert refit_plan(plan, auto, machine(ram_gib=2, cpus=2)).model == plan.model


def test_the_probe_looks_only_for_accelerators_a_plan_could_use(tmp_path):
    assert accelerators_needed(load_profile("cpu-small")) == (False, frozenset())
    assert accelerators_needed(load_profile("cpu-fast")) == (False, frozenset())
    assert accelerators_needed(load_profile("auto")) == (True, frozenset({"cuda"}))  # int8/nf4 only on the GPU profiles
    bnb_cpu = tmp_path / "bnb.yaml"
    bnb_cpu.write_text(yaml.safe_dump({"extends": "cpu-batched", "quantization": ["int8"]}))
    assert accelerators_needed(load_profile(str(bnb_cpu))) == (False, frozenset({"cpu"}))


def test_the_runner_follows_the_profile_or_the_scheduler_parameter(tmp_path, monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner_for(load_profile("cpu-small")), ThreadPoolTaskRunner)
    runner = task_runner_for(load_profile("cpu-small"), scheduler="tcp://10.0.0.5:8786")
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.5:8786"
    with pytest.raises(ProfileError, match="not a Dask scheduler address"):
        task_runner_for(load_profile("cpu-small"), scheduler="{{ $STEADYSCRIBE_SCHEDULER }}")
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"extends": "cpu-small", "runner": {"kind": "dask", "n_workers": 2}}))
    cluster = task_runner_for(load_profile(str(local))).cluster_kwargs
    assert cluster["n_workers"] == 2 and cluster["env"]["STEADYSCRIBE_WORKER_THREADS"]  # workers split the CPUs
    # On a GPU machine a local cluster gets one worker per GPU, each seeing only its own device.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpu_local = tmp_path / "gpu-local.yaml"
    gpu_local.write_text(yaml.safe_dump({"extends": "auto", "runner": {"kind": "dask"}}))
    gpu_runner = task_runner_for(load_profile(str(gpu_local)))
    workers = gpu_runner.cluster_kwargs["workers"]
    assert [w["options"]["env"]["CUDA_VISIBLE_DEVICES"] for w in workers.values()] == ["2", "5"]


def test_groups_are_sized_so_that_every_worker_gets_two(tmp_path):
    plan = Plan(engine="ctranslate2", model="tiny.en", batch_size=16)
    fast = load_profile("cpu-fast")
    assert files_per_group(plan, fast, files=40, workers=1) == 64  # one engine: batches as full as they get
    assert files_per_group(plan, fast, files=40, workers=2) == 10  # four groups, two per worker
    assert files_per_group(plan, fast, files=41, workers=2) == 11  # 11, 11, 11, 8
    assert files_per_group(plan, fast, files=3, workers=2) == 1  # as far as the files go
    assert files_per_group(plan, fast, files=10_000, workers=2) == 64  # the size is an upper limit
    capped = tmp_path / "capped.yaml"
    capped.write_text(yaml.safe_dump({"extends": "cpu-fast", "runner": {"files_per_group": 8}}))
    assert files_per_group(plan, load_profile(str(capped)), files=40, workers=2) == 8  # and so is the profile's


def test_a_retried_group_replaces_its_own_commit(tmp_path):
    run = RunInfo("run-1", date(2026, 11, 30), Plan(engine="whisper", model="tiny.en"), "key")
    first = [FileResult("a.flac", "failed", error="worker died", worker="host:1")]
    again = [FileResult("a.flac", "failed", error="failed again", worker="host:2")]
    write_file_results(str(tmp_path), run, first, part="run-1-g00003")
    write_file_results(str(tmp_path), run, again, part="run-1-g00003")
    rows = ds.dataset(tmp_path / "files", format="parquet").to_table().to_pylist()
    assert [(r["source"], r["error"], r["worker"]) for r in rows] == [("a.flac", "failed again", "host:2")]


@pytest.mark.slow
def test_a_group_stops_when_its_flow_run_is_cancelled(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling, Running

    from steadyscribe.flows.group import CancelWatch, GroupCancelled

    @flow
    def placeholder() -> None: ...

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(placeholder, state=Running())
        CancelWatch(flow_run.id, interval_s=0)()  # running: the group goes on
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
    with pytest.raises(GroupCancelled, match="cancelled"):
        CancelWatch(flow_run.id, interval_s=0)()


def test_the_flow_and_a_cpu_probe_import_no_torch_or_bitsandbytes():
    """The flow's process loads no model, and a probe for a plan that cannot use a GPU or bitsandbytes does not import them."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from steadyscribe.flows.transcribe import transcribe\n"
        "from steadyscribe.profiles import load_profile\n"
        "from steadyscribe.tasks.probe import probe_resources\n"
        "from steadyscribe.tasks.select import accelerators_needed\n"
        "gpu, bnb = accelerators_needed(load_profile('cpu-fast'))\n"
        "probe_resources([], check_accelerators=gpu, bitsandbytes_devices=bnb)\n"
        "print(sorted(m for m in ('torch', 'bitsandbytes', 'numba', 'ctranslate2', 'whisper') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_group_without_windows_gets_its_empty_transcripts_without_the_engine(monkeypatch, tmp_path):
    """Not even waiting for it: the engine may be busy with another group's windows for minutes."""
    from prefect.logging import disable_run_logger

    from steadyscribe.records import DecodedAudio, Transcript
    from steadyscribe.tasks import infer

    def engine_called(*args, **kwargs):
        raise AssertionError("a group without windows called the engine")

    monkeypatch.setattr(infer, "call_engine", engine_called)
    plan = Plan(engine="whisper", model="tiny.en", batch_size=1)
    decoded = {f"f{i}": DecodedAudio(f"/in/silence{i}.flac", "ok", f"f{i}", duration_s=1.0 + i) for i in range(2)}
    with disable_run_logger():
        results = infer.infer_task.fn(plan, decoded, [], str(tmp_path))
    assert sorted(results) == ["f0", "f1"]
    for file_id, result in results.items():
        transcript = Transcript.load(result.transcript_path)
        assert (transcript.file_id, transcript.segments, transcript.batch_size, result.infer_s) == (file_id, [], 1, 0.0)
