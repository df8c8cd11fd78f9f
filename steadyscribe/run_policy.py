"""Flow-run retries and time limit for deployed runs, set by the deployment's environment.

A deployment's worker (or `steadyscribe serve`) sets them for the runs it starts
(deployments/prefect.yaml, `job_variables.env`); unset, as on `steadyscribe run` and for Python
callers, a run is tried once and has no time limit:

- STEADYSCRIBE_FLOW_RETRIES: how often Prefect runs the flow again after it raised, e.g. when
  the bucket, the Dask scheduler or the Prefect API was unreachable (after RETRY_DELAY_S).
- STEADYSCRIBE_RUN_TIMEOUT_HOURS: past it an attempt ends TimedOut (a Failed state, retried
  like an exception: the next attempt skips the files already committed), and the last one
  fires the failed-run notification (app/notify.py).

Bad input files are rows, not retries. Retries are armed only once the run's configuration and
plan are known to work (`arm_retries`: a bad profile, a plan that does not fit or a credential in
a URL fails the run at once), and a run that ends Failed because files failed turns them off
again first (`end_without_retries`), so Prefect does not run it again.
"""

from __future__ import annotations

import os

RETRIES_ENV = "STEADYSCRIBE_FLOW_RETRIES"
TIMEOUT_ENV = "STEADYSCRIBE_RUN_TIMEOUT_HOURS"
# Long enough for a bucket or a cluster to come back, short against a night.
RETRY_DELAY_S = 600


def flow_retries() -> int:
    return int(os.environ.get(RETRIES_ENV) or 0)


def run_timeout_s() -> float | None:
    hours = os.environ.get(TIMEOUT_ENV)
    return float(hours) * 3600 if hours else None


def arm_retries() -> None:
    """Give this flow run the deployment's retries (none where STEADYSCRIBE_FLOW_RETRIES is unset)."""
    if retries := flow_retries():
        _set_retries(retries)


def end_without_retries() -> None:
    """Set this flow run's remaining retries to none: its Failed state is final."""
    if flow_retries():
        _set_retries(0)


def _set_retries(retries: int) -> None:
    # The server's RetryFailedFlows rule reads the run's policy when a Failed state is proposed.
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    policy = context.flow_run.empirical_policy.model_copy(update={"retries": retries, "retry_delay": RETRY_DELAY_S})
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, empirical_policy=policy)
    context.flow_run.empirical_policy = policy
