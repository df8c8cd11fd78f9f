"""Run progress for a person: how many files and windows are done, how fast, and when it will end.

Stages report what they finish to the process's current reporter (`reporter()`), never to the
terminal themselves; the entry point that owns the terminal installs one with `reporting(...)`:

- RichProgress: one live bar per run in an interactive terminal;
- PlainProgress: one plain line per group of files (CI, cron, output piped to a file);
- RunProgress itself (the default, e.g. in a deployment's flow run): counts and shows nothing;
  the Prefect UI has the task runs, logs and the progress artifact.

Who calls what, in order: the flow calls `run_started` once it knows the files, then
`group_started` for each group once its windows are planned; inference calls `windows_done` as
windows finish; writing calls `files_done` once a group is committed; the flow calls
`run_finished` with the run's summary last. Calls may come from
several threads (RunProgress serializes them). Inference and writing run in the flow's
process, so the reporter sees them under every task runner.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from steadyscribe.printable import printable

log = logging.getLogger(__name__)


class RunProgress:
    """Counts a run's progress; subclasses show it (`_show_*` hooks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._broken = False
        self.started = time.monotonic()
        self.files_total = 0
        self.action = "transcribing"
        self.files_finished = 0
        self.windows_total = 0  # of the groups started so far
        self.windows_finished = 0
        self.audio_s_done = 0.0  # audio in the windows transcribed
        self.group_files = 0
        self.group_windows = 0
        self.group_windows_done = 0
        self.summary: Any = None  # the run's RunSummary (tasks/report.py), once it has one

    # --- what the stages call ----------------------------------------------------------------

    def run_started(self, files_total: int, plan: str, action: str = "transcribing") -> None:
        with self._lock:
            self.started = time.monotonic()
            self.files_total = files_total
            self.action = action
            self._show(self._show_run_started, plan)

    def group_started(self, files: int, windows: int) -> None:
        with self._lock:
            self.group_files, self.group_windows, self.group_windows_done = files, windows, 0
            self.windows_total += windows
            self._show(self._show_progress)

    def windows_done(self, count: int, audio_s: float) -> None:
        with self._lock:
            self.windows_finished += count
            self.group_windows_done += count
            self.audio_s_done += audio_s
            self._show(self._show_progress)

    def files_done(self, label: str, ok: int, failed: int, skipped: int) -> None:
        """Group `label` is committed; named by the caller, since another group may have started since."""
        with self._lock:
            self.files_finished += ok + failed + skipped
            self.group_files = self.group_windows = self.group_windows_done = 0  # the group now counts as files
            self._show(self._show_files_done, label, ok, failed, skipped)

    def run_finished(self, summary: Any) -> None:
        """The run's summary, for the entry point in this process. It reads the summary here, not from
        the flow's final state: Prefect can hand a Failed state back without the error it carried
        (when a state update is retried after the server took it, the server returns its own copy)."""
        with self._lock:
            self.summary = summary

    def close(self) -> None:
        """The run is over (or stopped): release the terminal."""

    def _show(self, show: Callable[..., None], *args: object) -> None:
        # A display that fails must not fail the transcription: it is logged once and goes quiet.
        if self._broken:
            return
        try:
            show(*args)
        except Exception:
            self._broken = True
            log.exception("progress display failed; the run goes on without it")

    # --- derived measures --------------------------------------------------------------------

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def audio_hours_per_hour(self) -> float:
        elapsed = self.elapsed_s()
        return self.audio_s_done / elapsed if elapsed > 0 else 0.0

    def fraction_done(self) -> float:
        """Files done, plus the running group's share of its windows done."""
        if not self.files_total:
            return 0.0
        in_group = self.group_files * self.group_windows_done / self.group_windows if self.group_windows else 0.0
        return min(1.0, (self.files_finished + in_group) / self.files_total)

    def eta_s(self) -> float | None:
        fraction = self.fraction_done()
        return self.elapsed_s() * (1 - fraction) / fraction if fraction > 0 else None

    def stats_text(self) -> str:
        return (
            f"{self.files_finished}/{self.files_total} files · {self.windows_finished}/{self.windows_total} windows · "
            f"{self.audio_hours_per_hour():.1f} audio-h/h · ETA {format_duration(self.eta_s())}"
        )

    # --- how it is shown: nothing, by default ------------------------------------------------

    def _show_run_started(self, plan: str) -> None:
        pass

    def _show_progress(self) -> None:
        pass

    def _show_files_done(self, label: str, ok: int, failed: int, skipped: int) -> None:
        pass


class PlainProgress(RunProgress):
    """One line when the run starts and one per committed group, for logs that are read later."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def _print(self, line: str) -> None:
        print(printable(line), file=self.stream, flush=True)

    def _show_run_started(self, plan: str) -> None:
        self._print(f"{self.action} {self.files_total} file{'' if self.files_total == 1 else 's'}: {plan}")

    def _show_files_done(self, label: str, ok: int, failed: int, skipped: int) -> None:
        self._print(f"{label}: {ok} ok, {failed} failed, {skipped} skipped · {self.stats_text()}")


class RichProgress(RunProgress):
    """One live progress bar per run, on an interactive terminal."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        super().__init__()
        counts = self

        class Stats(ProgressColumn):
            # Drawn at every refresh, so the rate and the ETA move between two finished windows.
            def render(self, task) -> Text:
                return Text(counts.stats_text() if counts.files_total else "")

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), Stats(), TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.task = self.bar.add_task("starting", total=1.0)
        self.bar.start()

    def _show_run_started(self, plan: str) -> None:
        self.bar.update(self.task, description=printable(plan))
        self._show_progress()

    def _show_progress(self) -> None:
        self.bar.update(self.task, completed=self.fraction_done())

    def _show_files_done(self, label: str, ok: int, failed: int, skipped: int) -> None:
        self._show_progress()

    def close(self) -> None:
        self.bar.stop()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


_current = RunProgress()


def reporter() -> RunProgress:
    """The reporter the stages of this process report to."""
    return _current


@contextmanager
def reporting(progress: RunProgress) -> Iterator[RunProgress]:
    """Make `progress` the process's reporter for the block; close it afterwards."""
    global _current
    previous, _current = _current, progress
    try:
        yield progress
    finally:
        _current = previous
        progress.close()
