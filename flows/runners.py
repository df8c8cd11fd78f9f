"""Task runners: where the per-file stages (decode, chunk, stabilize) run, chosen by a profile's `runner`.

Inference and writing always run in the flow's own process (they are called, not submitted);
only `.map`ped stages go to the task runner. Those stages exchange small records and paths
into the run's work directory, a local temp dir of the flow process: fine for threads and a
Dask cluster on the same machine, but workers on other machines need that directory shared
(see docs/operations.md).
"""

from __future__ import annotations

from prefect import Flow
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from steadyscribe.flows.transcribe import transcribe
from steadyscribe.profiles import Profile, ProfileError, load_profile
from steadyscribe.tasks.probe import probe_resources


def usable_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota count)."""
    return probe_resources([], check_accelerators=False).usable_cpus


def task_runner_for(profile: Profile) -> TaskRunner:
    """The profile's runner: a thread pool (default), or Dask on a new local cluster or an existing scheduler."""
    runner = profile.runner
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=usable_cpus() if profile.threads == "auto" else profile.threads)
    try:  # an optional extra: imported only when a profile asks for it
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ProfileError(
            f"profile {profile.name} asks for runner kind dask, but prefect-dask is not installed; "
            "install it with: pip install 'steadyscribe[dask]'"
        ) from None

    if runner.address:
        return DaskTaskRunner(address=runner.address)
    # One single-threaded worker process per CPU by default: the stages are CPU-bound Python/numpy.
    workers = runner.n_workers or usable_cpus()
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


def transcribe_flow(profile: str) -> Flow:
    """The transcribe flow set up with the task runner that `profile` (a name or YAML path) asks for."""

    return transcribe.with_options(task_runner=task_runner_for(load_profile(profile)))
