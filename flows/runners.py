"""Task runners: where the groups of files (decode → chunk → infer → stabilize → write) run.

A profile's `runner` chooses: a thread pool in the flow's own process (default), or Dask, on a
new local cluster or on an existing scheduler (`runner.address`, or the flow's `scheduler`
parameter). The flow enters the runner itself, so `steadyscribe run`, `steadyscribe serve` and
deployments all follow the profile. Workers receive only a group's description and return one
small outcome per file; everything else stays on the worker's local disk.
"""

from __future__ import annotations

import os
import re

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from steadyscribe.profiles import Profile, ProfileError
from steadyscribe.flows.group import THREADS_ENV
from steadyscribe.tasks.probe import probe_resources

SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|ucx|inproc|ws|wss)://[\w.\-\[\]:]+(/\S*)?|[\w.\-]+:\d+")

# Groups per worker thread in flight: one in inference while the next decodes and chunks.
GROUPS_PER_SLOT = 2


def usable_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota count)."""
    return probe_resources([], check_accelerators=False).usable_cpus


def visible_gpus() -> list[str]:
    """Ids of the GPUs a local cluster would use, without importing torch (CUDA_VISIBLE_DEVICES, else /dev/nvidiaN)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    devices = os.listdir("/dev") if os.path.isdir("/dev") else []
    return sorted((n.removeprefix("nvidia") for n in devices if n.removeprefix("nvidia").isdigit()), key=int)


def task_runner_for(profile: Profile, scheduler: str | None = None) -> TaskRunner:
    """The profile's runner: a thread pool (default), or Dask on a new local cluster or an existing scheduler.

    `scheduler` (a Dask scheduler address) overrides the profile and implies Dask.
    """
    runner = profile.runner
    if scheduler is not None and not SCHEDULER_ADDRESS.fullmatch(scheduler):
        raise ProfileError(
            f"scheduler {scheduler!r} is not a Dask scheduler address such as tcp://host:8786 "
            "(a deployment needs STEADYSCRIBE_SCHEDULER set when deploying, or --param scheduler=...)"
        )
    if runner.kind == "threads" and not scheduler:
        # Two groups at a time: one in inference while the other decodes, chunks, stabilizes or writes.
        return ThreadPoolTaskRunner(max_workers=GROUPS_PER_SLOT)
    try:  # an optional extra: imported only when a profile asks for it
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ProfileError(
            f"profile {profile.name} asks for a Dask runner, but prefect-dask is not installed; "
            "install it with: pip install 'steadyscribe[dask]'"
        ) from None

    if address := scheduler or runner.address:
        return DaskTaskRunner(address=address)
    gpus = visible_gpus() if profile.device in ("cuda", "auto") else []
    if gpus and not runner.n_workers:
        return DaskTaskRunner(cluster_class="distributed.SpecCluster", cluster_kwargs=one_worker_per_gpu(gpus))
    # One worker process per CPU. Each has GROUPS_PER_SLOT threads, so it decodes its next
    # group while its engine transcribes the current one.
    cpus = usable_cpus()
    workers = runner.n_workers or cpus
    # The workers split the CPUs: each engine gets its share of threads, not all of them. They
    # report to the flow's Prefect API, also when that is a temporary server of this process.
    env = {THREADS_ENV: str(max(1, cpus // workers)), **_prefect_api_env()}
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": GROUPS_PER_SLOT, "processes": True, "env": env}
    )


def one_worker_per_gpu(gpus: list[str]) -> dict:
    """A local Dask cluster spec with one worker process per GPU, each seeing only its own device."""
    from distributed import Nanny, Scheduler

    return {
        "scheduler": {"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        "workers": {
            f"gpu-{gpu}": {"cls": Nanny, "options": {"nthreads": GROUPS_PER_SLOT, "env": {"CUDA_VISIBLE_DEVICES": gpu}}}
            for gpu in gpus
        },
    }


def groups_in_flight(runner: TaskRunner) -> int:
    """How many groups to hand out at once: every worker thread busy and one more group waiting per worker.

    Measured on the cluster when the run starts (a cluster that grows later gets no more).
    """
    workers = _dask_workers(runner)
    if workers is None:
        return GROUPS_PER_SLOT
    return max(GROUPS_PER_SLOT, sum(w["nthreads"] for w in workers) + len(workers))


def worker_count(runner: TaskRunner) -> int:
    """Worker processes the groups are spread over: the Dask cluster's when the run starts, else 1 (this process)."""
    workers = _dask_workers(runner)
    return max(1, len(workers)) if workers is not None else 1


def _dask_workers(runner: TaskRunner) -> list[dict] | None:
    """The scheduler's record of each worker of a Dask runner; None for the thread runner."""
    client = getattr(runner, "client", None)
    return None if client is None else list(client.scheduler_info(n_workers=-1)["workers"].values())


def _prefect_api_env() -> dict[str, str]:
    """PREFECT_API_URL of the running flow's API (a temporary server has no setting of its own); {} outside a flow."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return {"PREFECT_API_URL": str(context.client.api_url).rstrip("/")} if context and context.client else {}
