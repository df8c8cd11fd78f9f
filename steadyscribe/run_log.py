"""Where a terminal run's log lines go: a log file instead of the terminal.

Prefect logs every task run's start and end, each stage's messages and its temporary server's
start and stop to the console. On a terminal run those lines belong in the Prefect UI (its API
handler is left alone) and in a log file the summary names, not between the progress bar and
the summary; `--verbose` keeps them on the terminal.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOG_DIR_ENV = "STEADYSCRIBE_LOG_DIR"


def default_log_path() -> Path:
    """$STEADYSCRIBE_LOG_DIR, else $XDG_STATE_HOME/steadyscribe/logs (~/.local/state/…), one file per run."""
    directory = os.environ.get(LOG_DIR_ENV) or Path(
        os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state", "steadyscribe", "logs"
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(directory).expanduser() / f"run-{stamp}-{os.getpid()}.log"


def _writes_to_terminal(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and handler.stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    )


def _divert_terminal_handlers(file_handler: logging.FileHandler) -> list[tuple[logging.Logger, logging.Handler]]:
    """Replace every handler that writes to the terminal by `file_handler`; return what was replaced where."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    swapped = []
    for logger in loggers:
        for handler in list(logger.handlers):
            if _writes_to_terminal(handler):
                file_handler.setFormatter(handler.formatter)  # Prefect's: flow and task run names
                logger.removeHandler(handler)
                logger.addHandler(file_handler)
                swapped.append((logger, handler))
    return swapped


class LogFile(logging.FileHandler):
    """The run's log file. When it cannot be written (its disk is full), it says so once on stderr
    and drops the lines, instead of a traceback per line between the progress and the summary."""

    failed = False

    def handleError(self, record: logging.LogRecord | None) -> None:
        if not self.failed:
            self.failed = True
            print(f"steadyscribe: cannot write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
                  "the run goes on without it", file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()  # flushes what is left: on a full disk that fails too
        except OSError:
            self.handleError(None)


@contextmanager
def logs_to_file(path: Path) -> Iterator[Path]:
    """For the block, every logging handler that writes to the terminal writes to `path` instead.

    Call it after Prefect has configured logging (importing prefect does). Prefect stops its
    temporary server when the process exits, after the block: its lines go to `path` too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = LogFile(path, encoding="utf-8")
    swapped = _divert_terminal_handlers(file_handler)
    try:
        yield path
    finally:
        for logger, handler in swapped:
            logger.removeHandler(file_handler)
            logger.addHandler(handler)
        file_handler.close()
        # Registered after Prefect's own exit handler, so it runs first (atexit is last in, first out).
        atexit.register(_divert_terminal_handlers, file_handler)
