"""The `steadyscribe` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _run(args: argparse.Namespace) -> int:
    from flows.transcribe import FilesFailed
    from steadyscribe.profiles import ProfileError, apply_overrides, load_profile
    from steadyscribe.runners import transcribe_flow
    from steadyscribe.storage import StorageError, check_writable
    from tasks.report import summary_text
    from tasks.select import PlanError

    try:
        # Bad configuration is reported before a Prefect server is even started.
        apply_overrides(load_profile(args.profile), {"memory_budget": args.memory_budget, "batch_size": args.batch_size})
        check_writable(args.output)
        # The profile picks the task runner (threads or Dask): it must be set before the flow starts.
        summary = transcribe_flow(args.profile)(
            inputs=args.inputs,
            output=args.output,
            profile=args.profile,
            memory_budget=args.memory_budget,
            batch_size=args.batch_size,
            force=args.force,
        )
    except FilesFailed as failed:
        summary = failed.summary
    except (ProfileError, PlanError, StorageError) as error:
        print(f"steadyscribe: {error}", file=sys.stderr)
        return 2
    print(summary_text(summary))
    if args.summary_json:
        with open(args.summary_json, "w") as out:
            json.dump(summary.to_dict(), out, indent=2, default=str)
    return 1 if summary.files_failed else 0


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Inputs, output and profile: what `run` and `serve` both take."""
    from steadyscribe.profiles import DEFAULT_PROFILE

    parser.add_argument("inputs", nargs="+", help="files, directories, globs or fsspec URLs (s3://, gs://, memory://)")
    parser.add_argument("--output", "-o", required=True, help="output root (local path or fsspec URL)")
    parser.add_argument(
        "--profile", "-p", default=DEFAULT_PROFILE, help=f"profile name or YAML path (default: {DEFAULT_PROFILE})"
    )


def build_parser() -> argparse.ArgumentParser:
    from steadyscribe.models.cli import register as register_models
    from steadyscribe.profiles_cli import register as register_profiles
    from steadyscribe.serve import register as register_serve

    parser = argparse.ArgumentParser(
        prog="steadyscribe",
        description="Transcribe folders and buckets of audio into Parquet tables with word timestamps.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="transcribe inputs into Parquet tables",
        description="Exit status: 0 all files ok or skipped, 1 some file failed, 2 bad configuration.",
    )
    add_job_arguments(run)
    run.add_argument("--memory-budget", help="override the profile's memory budget for this run (2GiB, 512MiB, 60%%)")
    run.add_argument("--batch-size", type=int, help="override the profile's batch size for this run")
    run.add_argument("--force", action="store_true", help="redo files already transcribed with the same settings")
    run.add_argument("--summary-json", help="also write the run summary as JSON to this path")
    run.set_defaults(func=_run)

    register_models(commands)
    register_profiles(commands)
    register_serve(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A local run has no network: don't let Prefect's server try to send telemetry.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
