"""Report stage: one summary of the run, for the CLI, the log and a Prefect artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from steadyscribe.memory import process_peak_rss_bytes
from steadyscribe.printable import printable
from steadyscribe.records import FileOutcome, PassedOver


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
    stabilization: dict[str, int] = field(default_factory=dict)
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
        peak_rss_bytes=process_peak_rss_bytes(),
        failures=by_status["failed"],
        warned=[o for o in by_status["ok"] + by_status["skipped"] if o.warnings],
        stabilization=_add_counts(o.stabilization for o in by_status["ok"]),
        files_duplicate=len(by_status["duplicate"]),
        passed_over=list(passed_over or []),
    )


def _add_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in counts:
        for key, value in item.items():
            total[key] = total.get(key, 0) + value
    return total


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
    lines += [f"FAILED {f.source}: {(f.error or '').removeprefix(f'{f.source}: ')}" for f in summary.failures]
    lines += [f"{f.status} with warnings {f.source}: {'; '.join(f.warnings)}" for f in summary.warned]
    lines += [f"passed over {p.count}: {p.reason} ({passed_over_names(p)})" for p in summary.passed_over]
    # One line each, whatever the names hold: a newline in a file name must not start a line of its own.
    return "\n".join(printable(line) for line in lines)


def passed_over_names(passed: PassedOver) -> str:
    """The first few names, and how many more."""
    more = passed.count - len(passed.first)
    return ", ".join(passed.first) + (f" and {more} more" if more else "")


def summary_markdown(summary: RunSummary) -> str:
    """The summary as a Markdown table, for the Prefect UI."""
    rows = [
        ("files ok / failed / skipped / duplicate",
         f"{summary.files_ok} / {summary.files_failed} / {summary.files_skipped} / {summary.files_duplicate}"),
        ("audio hours", f"{summary.audio_s / 3600:.4f}"),
        ("wall time (s)", f"{summary.wall_s:.1f}"),
        ("real-time factor", f"{summary.real_time_factor:.3f}"),
        ("peak memory (MiB)", f"{summary.peak_rss_bytes / 2**20:.0f}"),
        ("engine / model", f"{summary.plan.get('engine')} / {summary.plan.get('model')}"),
        ("batch size / quantization", f"{summary.plan.get('batch_size')} / {summary.plan.get('quantization')}"),
    ]
    rows += [(f"stabilization: {k}", str(v)) for k, v in summary.stabilization.items()]
    text = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if summary.failures:
        text += "\n\n### Failures\n\n| file | error |\n|---|---|\n"
        text += "\n".join(f"| {f.source} | {(f.error or '').replace('|', '/')} |" for f in summary.failures)
    if summary.warned:
        text += "\n\n### Files with warnings\n\n| file | warnings |\n|---|---|\n"
        text += "\n".join(f"| {f.source} | {'; '.join(f.warnings).replace('|', '/')} |" for f in summary.warned)
    if summary.passed_over:
        text += "\n\n### Passed over by discovery\n\n| reason | count | first names |\n|---|--:|---|\n"
        text += "\n".join(f"| {p.reason} | {p.count} | {passed_over_names(p).replace('|', '/')} |" for p in summary.passed_over)
    return text
