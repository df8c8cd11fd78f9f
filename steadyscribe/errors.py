"""Errors that cross layers: raised by stages and flows, reported by the entry points."""

from __future__ import annotations

from typing import Any


class PlanError(RuntimeError):
    """No plan fits: raised before any work, with what was tried and the budget."""


class FilesFailed(Exception):
    """Some inputs failed (their `files` rows say why); carries the run's summary (a RunSummary)."""

    def __init__(self, summary: Any):
        total = summary.files_ok + summary.files_failed + summary.files_skipped
        super().__init__(f"{summary.files_failed} of {total} files failed")
        self.summary = summary
