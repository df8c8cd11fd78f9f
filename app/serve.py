"""`steadyscribe serve`: a one-machine setup with no work pool or worker.

One long-running process registers two deployments of the transcribe flow with the Prefect
API and runs their flow runs itself, one at a time:

- `served-nightly` runs on a cron schedule and transcribes what is new under the inputs
  (files already transcribed with the same settings are skipped);
- `served-backfill` has no schedule; start it on demand, e.g. with `--param force=true`.

Each run uses the task runner its profile names (threads or Dask).
"""

from __future__ import annotations

import argparse
import sys

from steadyscribe.app.job import add_job_arguments
from steadyscribe.app.notify import DEPLOYMENT_TAG
from steadyscribe.profiles import DEFAULT_PROFILE, ProfileError, load_profile
from steadyscribe.storage import StorageError
from steadyscribe.url_credentials import refuse_credentials_in_urls

NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_DEPLOYMENT = "served-nightly"
BACKFILL_DEPLOYMENT = "served-backfill"


def serve(
    schedule_cron: str,
    inputs: list[str],
    output: str,
    profile: str = DEFAULT_PROFILE,
    timezone: str = "UTC",
) -> None:
    """Serve the nightly and backfill deployments until interrupted (the deployments are paused on exit)."""
    # Imported here so that building the CLI's parser stays quick.
    from prefect import serve as serve_deployments
    from prefect.schedules import Cron

    from steadyscribe.flows.transcribe import transcribe as flow

    # The parameters are stored with the deployments on the server.
    refuse_credentials_in_urls([*inputs, output])
    load_profile(profile)  # a bad profile stops serving before it starts, not at the first run
    parameters = {"inputs": inputs, "output": output, "profile": profile}
    nightly = flow.to_deployment(
        name=NIGHTLY_DEPLOYMENT,
        schedules=[Cron(schedule_cron, timezone=timezone)],
        parameters=parameters,
        description=f"New files under {', '.join(inputs)} → {output}, on cron {schedule_cron!r} ({timezone}).",
        concurrency_limit=1,  # a slow night must not overlap the next one
        tags=[DEPLOYMENT_TAG],  # what `steadyscribe notify setup`'s automations watch
    )
    backfill = flow.to_deployment(
        name=BACKFILL_DEPLOYMENT,
        parameters={**parameters, "force": False},
        description=f"On demand: {', '.join(inputs)} → {output}; force=true redoes transcribed files.",
        tags=[DEPLOYMENT_TAG],
    )
    # One run at a time: each run sizes its model and batch to the whole machine's memory.
    serve_deployments(nightly, backfill, limit=1)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` command."""
    command = subparsers.add_parser(
        "serve",
        help="serve nightly and backfill deployments from this machine (no worker needed)",
        description="Needs a Prefect API (PREFECT_API_URL) to register with. Runs until interrupted.",
    )
    add_job_arguments(command)
    command.add_argument("--cron", default=NIGHTLY_CRON, help=f"nightly schedule (default: {NIGHTLY_CRON!r})")
    command.add_argument("--timezone", default="UTC", help="time zone of the schedule (default: UTC)")
    command.set_defaults(func=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        serve(args.cron, args.inputs, args.output, args.profile, args.timezone)
    except (ProfileError, StorageError) as error:
        print(f"steadyscribe: {error}", file=sys.stderr)
        return 2
    return 0
