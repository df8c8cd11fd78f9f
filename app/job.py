"""Running the transcribe flow as a command: its arguments, errors and exit status.

Shared by `steadyscribe run`, `steadyscribe align` and `steadyscribe serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from steadyscribe.errors import PlanError
from steadyscribe.profiles import DEFAULT_PROFILE, ProfileError, apply_overrides, load_profile, run_overrides
from steadyscribe.progress import PlainProgress, RichProgress, RunProgress, reporting

# Alignment runs on the CTranslate2 engine (tasks/align.py), which this profile picks.
ALIGN_PROFILE = "cpu-fast"


def add_job_arguments(parser: argparse.ArgumentParser, profile: str = DEFAULT_PROFILE) -> None:
    """Inputs, output and profile (`profile` by default): what `run` and `serve` both take."""
    parser.add_argument("inputs", nargs="+", help="files, directories, globs or fsspec URLs (s3://, gs://, memory://)")
    parser.add_argument("--output", "-o", required=True, help="output root (local path or fsspec URL)")
    parser.add_argument("--profile", "-p", default=profile, help=f"profile name or YAML path (default: {profile})")


def add_run_arguments(parser: argparse.ArgumentParser, profile: str = DEFAULT_PROFILE) -> None:
    """Everything `run` takes: the job plus this run's overrides."""
    add_job_arguments(parser, profile)
    parser.add_argument("--memory-budget", help="override the profile's memory budget for this run (2GiB, 512MiB, 60%%)")
    parser.add_argument("--batch-size", type=int, help="override the profile's batch size for this run")
    parser.add_argument("--model", help="override the profile's model for this run (tiny.en, base, large-v3, ...)")
    parser.add_argument("--beam-size", type=int, help="override decoding.beam_size for this run (1: greedy)")
    parser.add_argument("--language", help="override decoding.language for this run (a code such as en or de)")
    parser.add_argument("--initial-prompt", help="override decoding.initial_prompt for this run (text that primes each window)")
    parser.add_argument(
        "--channels", choices=("mix", "split"),
        help="override audio.channels for this run: mix to mono, or transcribe each channel as its own speaker",
    )
    parser.add_argument("--force", action="store_true", help="redo files already transcribed with the same settings")
    parser.add_argument("--scheduler", help="run the groups of files on this Dask scheduler (tcp://host:8786), whatever the profile says")
    parser.add_argument("--summary-json", help="also write the run summary as JSON to this path (exit 1 if it cannot be written)")
    parser.add_argument(
        "--verbose", "-v", action="store_true",
        help="print Prefect's log lines (every task run) on the terminal instead of only to the log file",
    )
    parser.add_argument(
        "--log-file", help="write the run's log lines here (default: $STEADYSCRIBE_LOG_DIR or ~/.local/state/steadyscribe/logs/)"
    )


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """What `align` takes: `run`'s arguments, the text files' suffix, and a profile on the aligning engine."""
    add_run_arguments(parser, ALIGN_PROFILE)
    parser.add_argument(
        "--text-suffix", default=".txt",
        help="each audio file's text is the file of the same name with this suffix instead of its extension (default: .txt)",
    )


def run_job(args: argparse.Namespace) -> int:
    """Run the flow once; exit status 0 all files ok, skipped or duplicate, 1 some file failed (or the run passed
    STEADYSCRIBE_RUN_TIMEOUT_HOURS), 2 bad configuration (or no Prefect server)."""
    from steadyscribe.prefect_server import ServerStartError, temporary_server, using

    # Without a configured Prefect API, a temporary server boots while the stages are imported and
    # the configuration is checked (steadyscribe.prefect_server).
    with temporary_server() as server:
        # Imported here so that building the CLI's parser does not load Prefect and the stages.
        from prefect.flow_engine import FlowRunTimeoutError

        from steadyscribe.flows.transcribe import transcribe
        from steadyscribe.run_policy import TIMEOUT_ENV
        from steadyscribe.run_log import default_log_path, logs_to_file
        from steadyscribe.storage import StorageError, check_writable
        from steadyscribe.tasks.report import summary_text
        from steadyscribe.url_credentials import refuse_credentials_in_urls

        log_path = None if args.verbose else Path(args.log_file) if args.log_file else default_log_path()
        try:
            # Bad configuration is reported before the flow starts, and a credential in a URL
            # before it could become a flow-run parameter on the server.
            refuse_credentials_in_urls([*args.inputs, args.output])
            overrides = run_overrides(vars(args))
            apply_overrides(load_profile(args.profile), overrides)
            check_writable(args.output)
            with contextlib.ExitStack() as terminal:
                terminal.enter_context(using(server))
                if log_path is not None:
                    terminal.enter_context(logs_to_file(log_path))
                progress = terminal.enter_context(reporting(terminal_progress(args.verbose)))
                run = transcribe(
                    inputs=args.inputs,
                    output=args.output,
                    profile=args.profile,
                    force=args.force,
                    scheduler=args.scheduler,
                    text_suffix=getattr(args, "text_suffix", None),
                    return_state=True,
                    **overrides,
                )
                if progress.summary is None:
                    run.result()  # the run ended before its summary: raise its error
                summary = progress.summary
        except FlowRunTimeoutError as error:
            print(
                f"steadyscribe: {error} (the limit {TIMEOUT_ENV} sets); the groups committed before it stay, "
                "the next run does the rest",
                file=sys.stderr,
            )
            return 1
        except (ProfileError, PlanError, StorageError, ServerStartError) as error:
            print(f"steadyscribe: {error}", file=sys.stderr)
            return 2
    print(summary_text(summary))
    if log_path is not None:
        print(f"log: {log_path}")
    if args.summary_json:
        try:
            with open(args.summary_json, "w") as out:
                json.dump(summary.to_dict(), out, indent=2, default=str)
        except OSError as error:  # a full disk, say: the summary above stands, the job reading the file must notice
            print(f"steadyscribe: could not write the summary to {args.summary_json}: {error}", file=sys.stderr)
            return 1
    return 1 if summary.files_failed else 0


def terminal_progress(verbose: bool) -> RunProgress:
    """A live bar on an interactive terminal; plain lines when piped, in CI or cron, or among --verbose log lines."""
    return RichProgress() if sys.stderr.isatty() and not verbose else PlainProgress()

