"""`steadyscribe notify setup`: tell a person when a deployed run fails, crashes or runs too long.

Prefect automations, defined here and applied to the server PREFECT_API_URL names (run the
command again to change them: it replaces what it made before, by name):

- "steadyscribe: run failed": a flow run of a steadyscribe deployment (tag `steadyscribe`: the
  deployments in deployments/prefect.yaml and those `steadyscribe serve` registers) that ends
  Failed, Crashed or TimedOut (past its run timeout). The message names the deployment, the run
  and its final state message (for failed files: how many, and the first ones with their reasons).
- "steadyscribe: run too long", only with `--max-run-hours`: such a run still running that long
  after it started (a machine that vanished under its run, which no state change reports). It is
  opt-in because its trigger writes to the server's database on every state change of every run:
  on a SQLite-backed server that doubles the writes that can meet "database is locked" when a run
  ends, and an event whose evaluation fails there four times is dropped, notification and all
  (docs/operations.md, "Notifications").

Both send through one Prefect notification block, saved as `steadyscribe-notify` from
`--webhook URL` (any HTTP endpoint: JSON `{"text", "subject", "body"}` is POSTed) or
`--slack URL`, or any notification block already on the server (`--block TYPE/NAME`, e.g. a
SendGrid e-mail block made in the UI). The server's triggers and actions services send them:
`prefect server start` runs both.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from uuid import UUID

BLOCK_NAME = "steadyscribe-notify"
DEPLOYMENT_TAG = "steadyscribe"
FAILED_AUTOMATION = "steadyscribe: run failed"
TOO_LONG_AUTOMATION = "steadyscribe: run too long"

# Jinja, rendered by the server: the objects come from the event's related resources.
SUBJECT = "steadyscribe: {{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = (
    "Flow run {{ flow_run.name }} of deployment {{ flow.name }}/{{ deployment.name }} ended "
    "{{ flow_run.state.name }}: {{ flow_run.state.message }}\n" + "{{ flow_run|ui_url or 'flow run id ' ~ flow_run.id }}"
)
TOO_LONG_BODY = (
    "Flow run {{ flow_run.name }} of deployment {{ flow.name }}/{{ deployment.name }} started "
    "{{ flow_run.start_time }} and has not finished after %s hours (state {{ flow_run.state.name }}).\n"
    "{{ flow_run|ui_url or 'flow run id ' ~ flow_run.id }}"
)
FINAL_EVENTS = ["prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.TimedOut"]


def notification_block(webhook: str | None, slack: str | None, block: str | None) -> UUID:
    """The id of the block to send through: saved from a URL (replacing an earlier one), or an existing one."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

    if block:
        return Block.load(block)._block_document_id
    if slack:
        return SlackWebhook(url=slack).save(BLOCK_NAME, overwrite=True)
    body = {"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"}
    return CustomWebhookNotificationBlock(name=BLOCK_NAME, url=webhook, json_data=body).save(BLOCK_NAME, overwrite=True)


def automations(block_id: UUID, max_run_hours: float | None, tag: str = DEPLOYMENT_TAG) -> list:
    """The automations, for runs of deployments tagged `tag` (the overlong-run one with `max_run_hours`)."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    runs = {"prefect.resource.id": "prefect.flow-run.*"}
    tagged = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}
    failed = Automation(
        name=FAILED_AUTOMATION,
        description=f"A run of a deployment tagged {tag!r} ended Failed, Crashed or TimedOut.",
        trigger=EventTrigger(
            match=runs, match_related=tagged, for_each={"prefect.resource.id"},
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
            posture=Posture.Reactive, threshold=1, within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=FAILED_BODY)],
    )
    if max_run_hours is None:
        return [failed]
    too_long = Automation(
        name=TOO_LONG_AUTOMATION,
        description=f"A run of a deployment tagged {tag!r} still running {max_run_hours:g} hours after it started.",
        trigger=EventTrigger(
            match=runs, match_related=tagged, for_each={"prefect.resource.id"},
            after={"prefect.flow-run.Running"}, expect=set(FINAL_EVENTS),
            posture=Posture.Proactive, threshold=1, within=timedelta(hours=max_run_hours),
        ),
        actions=[SendNotification(
            block_document_id=block_id, subject=SUBJECT, body=TOO_LONG_BODY % f"{max_run_hours:g}",
        )],
    )
    return [failed, too_long]


def setup(webhook: str | None, slack: str | None, block: str | None, max_run_hours: float | None) -> list[str]:
    """Save the block and (re)create the automations; their names."""
    from prefect.client.orchestration import get_client

    block_id = notification_block(webhook, slack, block)
    made = automations(block_id, max_run_hours)
    with get_client(sync_client=True) as client:
        for name in (FAILED_AUTOMATION, TOO_LONG_AUTOMATION):  # a rerun without --max-run-hours drops that one
            for old in client.read_automations_by_name(name):
                client.delete_automation(old.id)
    return [automation.create().name for automation in made]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `notify` command."""
    notify = subparsers.add_parser("notify", help="notifications for failed, crashed or overlong deployed runs")
    commands = notify.add_subparsers(dest="notify_command", required=True)
    command = commands.add_parser(
        "setup",
        help="create the automations and their notification block on the Prefect server (PREFECT_API_URL)",
        description=(
            "Applies automations: a run of a steadyscribe deployment that fails, crashes or times out (and, with "
            "--max-run-hours, one still running that long) sends a notification. Running it again replaces them."
        ),
    )
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook", help="POST JSON {text, subject, body} to this URL")
    target.add_argument("--slack", help="a Slack incoming-webhook URL (https://hooks.slack.com/services/...)")
    target.add_argument("--block", help="an existing Prefect notification block, as TYPE/NAME (e.g. sendgrid-email/on-call)")
    command.add_argument(
        "--max-run-hours", type=float,
        help="also notify when a run is still running this long after it started (best with a PostgreSQL-backed server)",
    )
    command.set_defaults(func=_setup_command)


def _setup_command(args: argparse.Namespace) -> int:
    from steadyscribe.prefect_server import configured_api_url

    if not configured_api_url():
        print("steadyscribe: set PREFECT_API_URL to the Prefect server the deployments run on", file=sys.stderr)
        return 2
    if args.max_run_hours is not None and args.max_run_hours <= 0:
        print("steadyscribe: --max-run-hours must be positive", file=sys.stderr)
        return 2
    for name in setup(args.webhook, args.slack, args.block, args.max_run_hours):
        print(f"automation {name!r}: applied")
    return 0
