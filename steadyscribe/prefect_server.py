"""A temporary local Prefect server for one run, when no Prefect API is configured.

Prefect starts one itself in that case (its "ephemeral" server): a uvicorn subprocess serving
`prefect.server.api.server:create_app`, started when the flow makes its first API call. To start
it, the run's own process first imports the whole server (FastAPI, SQLAlchemy and the API:
about 3 s and 80 MiB), then waits for the subprocess, which imports it again, to answer.

This starts the same subprocess the same way, without importing the server, before the run's
own imports and checks: the server boots while they go on. The run then waits for it to answer
before its flow starts, points Prefect at it, and stops it when the run ends. The server dies
with the run however the run ends, and its database (flow runs, their parameters, logs) lives in
a temporary folder that is removed with it. The database starts as a copy of an empty one kept
in the user cache (empty_database_path).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from steadyscribe.isolation import command_dying_with_parent
from steadyscribe.scratch import ScratchDir

# Longer than Prefect's own default (20 s): on a loaded 2-core machine the server took 16 s.
STARTUP_TIMEOUT_S = 90.0


class ServerStartError(RuntimeError):
    """The temporary server exited or did not answer in time."""


class TemporaryServer:
    """A uvicorn subprocess serving Prefect's API on a free local port."""

    def __init__(self) -> None:
        with socket.socket() as probe:  # a port nobody holds now
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
        # The server's home and database live in a folder of the run's own, removed when the
        # server stops, or by a later run when this one was killed (steadyscribe/scratch.py).
        self.home = ScratchDir("prefect-server")
        self.database = Path(self.home.path) / "prefect.db"
        if (empty := empty_database_path()).exists():
            shutil.copyfile(empty, self.database)
        # As Prefect's SubprocessASGIServer runs it: no UI, marked as an ephemeral server. It dies
        # with this process, also when this process is killed (steadyscribe/isolation.py).
        self.process = subprocess.Popen(
            command_dying_with_parent(
                "uvicorn", "--app-dir", str(prefect_dir.parent),
                "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on",
            ),
            env={
                **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                "PREFECT_HOME": self.home.path, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.database}",
            },
        )

    def wait_until_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"the temporary Prefect server exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        self._keep_empty_database()
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise ServerStartError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s")

    def _keep_empty_database(self) -> None:
        """Save the new server's database, migrated and still without runs, for later runs to start from."""
        empty = empty_database_path()
        if empty.exists():
            return
        # Only a cache: where it cannot be written, later servers migrate a new database again.
        with contextlib.suppress(OSError, sqlite3.Error):
            empty.parent.mkdir(parents=True, exist_ok=True)
            partial = empty.with_suffix(f".{os.getpid()}.partial")
            with contextlib.closing(sqlite3.connect(self.database)) as source:
                with contextlib.closing(sqlite3.connect(partial)) as copy:
                    source.backup(copy)
            os.replace(partial, empty)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.home.remove()


def empty_database_path() -> Path:
    """A migrated database of this Prefect version that holds no runs: a new server starts from a copy of it,
    which is quicker than migrating a new database."""
    user_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(user_cache) / "steadyscribe" / f"prefect-server-{importlib.metadata.version('prefect')}.db"


def configured_api_url() -> str | None:
    """The Prefect API this process would use (environment, Prefect profile or settings context)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


@contextlib.contextmanager
def temporary_server() -> Iterator[TemporaryServer | None]:
    """A TemporaryServer while the block runs, or None where a Prefect API is configured."""
    if configured_api_url():
        yield None
        return
    server = TemporaryServer()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def using(server: TemporaryServer | None) -> Iterator[None]:
    """Wait for `server` to answer, then point Prefect at it (this process and the ones it starts)."""
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server.wait_until_ready()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        # No flow run heartbeats: they let a server notice a crashed run, and this server ends with
        # the run; the engine's wait for its heartbeat thread cost up to 1 s at every run's end.
        with temporary_settings({PREFECT_API_URL: server.api_url, "flows.heartbeat_frequency": None}):
            try:
                yield
            finally:
                _drain_prefect_workers()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still queues, while the server is up to take them (as
    Prefect's own test harness does before it stops its server): else they retry against a
    stopped server at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)
