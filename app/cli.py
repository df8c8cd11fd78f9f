"""The `steadyscribe` command line."""

from __future__ import annotations

import argparse
import os


def build_parser() -> argparse.ArgumentParser:
    from steadyscribe.app.job import add_align_arguments, add_run_arguments, run_job
    from steadyscribe.app.models_cli import register as register_models
    from steadyscribe.app.notify import register as register_notify
    from steadyscribe.app.profiles_cli import register as register_profiles
    from steadyscribe.app.serve import register as register_serve

    parser = argparse.ArgumentParser(
        prog="steadyscribe",
        description="Transcribe folders and buckets of audio into Parquet tables with word timestamps.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="transcribe inputs into Parquet tables",
        description="Exit status: 0 all files ok, skipped or duplicate, 1 some file failed, 2 bad configuration.",
    )
    add_run_arguments(run)
    run.set_defaults(func=run_job)

    align = commands.add_parser(
        "align",
        help="word times for texts you already have: align each audio file to the text beside it",
        description=(
            "For each audio input, the text file of the same name (with --text-suffix) holds what was said; its words "
            "get times from the audio, into the same tables as `run` (files.mode = align). Exit status: 0 all files ok, "
            "skipped or duplicate, 1 some file failed (among them a missing text, or a text that does not match its audio), "
            "2 bad configuration."
        ),
    )
    add_align_arguments(align)
    align.set_defaults(func=run_job)

    register_models(commands)
    register_profiles(commands)
    register_serve(commands)
    register_notify(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A local run has no network: don't let Prefect's server or client try to send telemetry
    # (the client also prints a notice about it on a terminal's first run).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
