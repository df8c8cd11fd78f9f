"""Temporary folders that a run owns while it lives: removed by the run, or by a later run once it is gone.

A run killed with SIGKILL cannot remove its folders (the groups' work directories, the
temporary Prefect server's home). Each folder holds a lock file that its owner keeps locked
(flock) for as long as it uses the folder; the kernel drops the lock when the owner dies,
however it dies. The first scratch folder a process makes removes every scratch folder in the
temporary directory whose lock is free. Only folders with the lock file are touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

PREFIX = "steadyscribe-"
LOCK_NAME = ".owner.lock"


class ScratchDir:
    """A new folder `steadyscribe-<name>-XXXX` in the temporary directory, locked until `remove()`."""

    def __init__(self, name: str):
        remove_abandoned_once()
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{name}-")
        # Locked before it gets its name, so that no other run ever sees the lock file free.
        unnamed = os.path.join(self.path, f"{LOCK_NAME}.new")
        self._lock = os.open(unnamed, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.rename(unnamed, os.path.join(self.path, LOCK_NAME))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # before unlocking: no other run removes it meanwhile
        os.close(self._lock)


def remove_abandoned(temp_dir: str | None = None) -> list[str]:
    """Remove the scratch folders whose owner is gone (their lock is free); returns their paths."""
    removed = []
    for folder in Path(temp_dir or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            lock = os.open(folder / LOCK_NAME, os.O_RDONLY)
        except OSError:  # no lock file (not a scratch folder, or one being made), or not ours to open
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner lives
            os.close(lock)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        finally:
            os.close(lock)
    return removed


@cache
def remove_abandoned_once() -> None:
    """remove_abandoned, the first time a process asks."""
    remove_abandoned()
