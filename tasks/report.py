"""Report stage: one summary of the run, for the CLI, the log and a Prefect artifact."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from steadyscribe.memory import run_peak_rss_bytes
from steadyscribe.printable import printable
from steadyscribe.records import FileOutcome, PassedOver, StabilizationCounts

# Failed files that get a failed task run of their own, per run: enough for an operator to see
# each one by name in the UI; a run where everything fails must not add thousands of task runs
# to the server (its ERROR lines and the run-summary artifact still name every file).
FAILED_FILE_TASK_RUNS = 20
# Failures the flow run's final state message names (the rest: the run-summary artifact).
FAILURES_IN_MESSAGE = 3
# Files the summary lists as the slowest.
SLOWEST_FILES = 5


@dataclass
class RunSummary:
    run_id: str
    output: str
    plan: dict
    files_ok: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    failures: list[FileOutcome] = field(default_factory=list)
    warned: list[FileOutcome] = field(default_factory=list)  # ok (or skipped) files whose row carries warnings
    stabilization: StabilizationCounts = field(default_factory=StabilizationCounts)
    inputs: list[str] = field(default_factory=list)  # as given, credentials redacted
    profile: str | None = None
    slowest: list[FileOutcome] = field(default_factory=list)  # by decoding plus inference time
    files_duplicate: int = 0  # other names of content this run transcribed (files.duplicate_of)
    passed_over: list[PassedOver] = field(default_factory=list)  # what discovery left out, by reason

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per audio second: below 1 is faster than real time."""
        return self.wall_s / self.audio_s if self.audio_s else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "real_time_factor": self.real_time_factor}


def summarize(
    run_id: str,
    output: str,
    plan: dict,
    outcomes: list[FileOutcome],
    wall_s: float,
    inputs: list[str] | None = None,
    profile: str | None = None,
    passed_over: list[PassedOver] | None = None,
) -> RunSummary:
    by_status = {status: [o for o in outcomes if o.status == status] for status in ("ok", "failed", "skipped", "duplicate")}
    return RunSummary(
        run_id=run_id,
        output=output,
        plan=plan,
        files_ok=len(by_status["ok"]),
        files_failed=len(by_status["failed"]),
        files_skipped=len(by_status["skipped"]),
        audio_s=sum(o.duration_s for o in by_status["ok"]),
        wall_s=wall_s,
        peak_rss_bytes=run_peak_rss_bytes(),
        failures=by_status["failed"],
        warned=[o for o in by_status["ok"] + by_status["skipped"] if o.warnings],
        stabilization=sum((o.stabilization for o in by_status["ok"]), StabilizationCounts()),
        inputs=list(inputs or []),
        profile=profile,
        slowest=sorted(by_status["ok"], key=lambda o: o.processing_s, reverse=True)[:SLOWEST_FILES],
        files_duplicate=len(by_status["duplicate"]),
        passed_over=list(passed_over or []),
    )


def run_markdown(run_id: str, inputs: list[str], output: str, profile: str, files: int, done: int) -> str:
    """What the run is about to do, for the top of the plan artifact (inputs already redacted)."""
    rows = [
        ("run id", run_id), ("inputs", ", ".join(inputs)), ("output", output), ("profile", profile),
        ("files found", files), ("already transcribed with these settings", done),
    ]
    return "## Run\n\n| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n\n"


class ProgressArtifact:
    """The run's progress in the UI: one progress artifact, updated as each group of files finishes."""

    def __init__(self, total_files: int):
        self.total_files = total_files
        self.files = 0
        self.audio_s = 0.0
        start = 0.0 if total_files else 100.0
        self.id = create_progress_artifact(start, key="run-progress", description=self._description())

    def _description(self) -> str:
        return f"{self.files} of {self.total_files} files done, {self.audio_s / 3600:.2f} audio hours transcribed"

    def add(self, outcomes: list[FileOutcome]) -> None:
        self.files += len(outcomes)
        self.audio_s += sum(o.duration_s for o in outcomes if o.status == "ok")
        percent = 100.0 * self.files / self.total_files if self.total_files else 100.0
        update_progress_artifact(self.id, percent, description=self._description())


def failure_reason(outcome: FileOutcome) -> str:
    """Why a file failed, without the file's name that its error starts with."""
    return (outcome.error or "no reason recorded").removeprefix(f"{outcome.source}: ")


def file_name(source: str) -> str:
    """The last part of a path or URL, control characters escaped: what a task run (and a flow run,
    for its first input) is named after."""
    return printable(source.rstrip("/").rsplit("/", 1)[-1] or source)


@task(name="failed-file", task_run_name="failed: {name}", cache_policy=NO_CACHE)
def failed_file_task(name: str, source: str, reason: str) -> State:
    """Ends Failed with the file and its reason as the state's message, so that the UI shows a
    failed file as a red task run named after it (the group's stages end Completed: they ran)."""
    return Failed(message=printable(f"{source}: {reason}"))


def announce_outcomes(outcomes: list[FileOutcome], failed_before: int) -> None:
    """Log one ERROR line per failed file and one WARNING line per file with warnings, and give
    each failed file a failed task run (the first FAILED_FILE_TASK_RUNS of the run; `failed_before`
    counts the run's failures announced so far)."""
    logger = get_run_logger()
    failed = failed_before
    for outcome in outcomes:
        if outcome.status == "failed":
            reason = failure_reason(outcome)
            logger.error("file failed: %s", printable(f"{outcome.source}: {reason}"))
            if failed < FAILED_FILE_TASK_RUNS:
                failed_file_task(file_name(outcome.source), outcome.source, reason, return_state=True)
            elif failed == FAILED_FILE_TASK_RUNS:
                logger.error(
                    "more than %d files failed: later ones get no task run; the run-summary artifact lists all", failed
                )
            failed += 1
        elif outcome.warnings:
            logger.warning(
                "file %s with warnings: %s", outcome.status, printable(f"{outcome.source}: {'; '.join(outcome.warnings)}")
            )


def failed_message(summary: RunSummary) -> str:
    """The flow run's final state message: how many files failed, and the first few with their reasons."""
    total = summary.files_ok + summary.files_failed + summary.files_skipped + summary.files_duplicate
    first = summary.failures[:FAILURES_IN_MESSAGE]
    named = "; ".join(f"{f.source}: {_shorten(failure_reason(f))}" for f in first)
    more = summary.files_failed - len(first)
    rest = f"; and {more} more" if more > 0 else ""
    return printable(f"{summary.files_failed} of {total} files failed: {named}{rest} (see the run-summary artifact)")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_text(summary: RunSummary) -> str:
    """The few lines the CLI prints at the end of a run."""
    lines = [
        f"run {summary.run_id} → {summary.output}",
        f"files: {summary.files_ok} ok, {summary.files_failed} failed, {summary.files_skipped} skipped"
        + (f", {summary.files_duplicate} duplicate" if summary.files_duplicate else ""),
        f"audio: {summary.audio_s:.1f} s in {summary.wall_s:.1f} s wall "
        f"(real-time factor {summary.real_time_factor:.3f}), peak memory {summary.peak_rss_bytes / 2**20:.0f} MiB",
        f"plan: {summary.plan.get('engine')} / {summary.plan.get('model')} / batch {summary.plan.get('batch_size')}"
        f" / {summary.plan.get('quantization')}",
    ]
    lines += [f"FAILED {f.source}: {failure_reason(f)}" for f in summary.failures]
    lines += [f"{f.status} with warnings {f.source}: {'; '.join(f.warnings)}" for f in summary.warned]
    lines += [f"passed over {p.count}: {p.reason} ({passed_over_names(p)})" for p in summary.passed_over]
    # One line each, whatever the names hold: a newline in a file name must not start a line of its own.
    return "\n".join(printable(line) for line in lines)


def passed_over_names(passed: PassedOver) -> str:
    """The first few names, and how many more."""
    more = passed.count - len(passed.first)
    return ", ".join(passed.first) + (f" and {more} more" if more else "")


def _table(header: str, rows: Iterable[tuple[str, ...]]) -> str:
    """Markdown table rows under `header`. Names come from users: a newline or a `|` in one would break the table."""
    return header + "".join("\n| " + " | ".join(printable(str(cell)).replace("|", "/") for cell in row) + " |" for row in rows)


def summary_markdown(summary: RunSummary) -> str:
    """The summary as a Markdown table, for the Prefect UI."""
    rows = [
        ("run id", summary.run_id),
        ("inputs", ", ".join(summary.inputs)),
        ("output", summary.output),
        ("profile", summary.profile or summary.plan.get("profile")),
        ("files ok / failed / skipped / duplicate",
         f"{summary.files_ok} / {summary.files_failed} / {summary.files_skipped} / {summary.files_duplicate}"),
        ("audio hours", f"{summary.audio_s / 3600:.4f}"),
        ("wall time (s)", f"{summary.wall_s:.1f}"),
        ("real-time factor", f"{summary.real_time_factor:.3f}"),
        ("peak memory (MiB)", f"{summary.peak_rss_bytes / 2**20:.0f}"),
        ("engine / model", f"{summary.plan.get('engine')} / {summary.plan.get('model')}"),
        ("batch size / quantization", f"{summary.plan.get('batch_size')} / {summary.plan.get('quantization')}"),
    ]
    rows += [(f"stabilization: {k}", str(v)) for k, v in asdict(summary.stabilization).items() if v is not None]
    text = _table("| measure | value |\n|---|---|", rows)
    if summary.failures:
        text += _table("\n\n### Failures\n\n| file | error |\n|---|---|", ((f.source, f.error or "") for f in summary.failures))
    if summary.slowest:
        text += _table("\n\n### Slowest files\n\n| file | audio (s) | decoding and inference (s) |\n|---|--:|--:|",
                       ((f.source, f"{f.duration_s:.1f}", f"{f.processing_s:.1f}") for f in summary.slowest))
    if summary.warned:
        text += _table("\n\n### Files with warnings\n\n| file | warnings |\n|---|---|",
                       ((f.source, "; ".join(f.warnings)) for f in summary.warned))
    if summary.passed_over:
        text += _table("\n\n### Passed over by discovery\n\n| reason | count | first names |\n|---|--:|---|",
                       ((p.reason, str(p.count), passed_over_names(p)) for p in summary.passed_over))
    return text
