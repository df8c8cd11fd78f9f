"""A real `prefect server start` on loopback, with every background service running.

The session's `prefect_server` fixture (conftest.py) is Prefect's test harness: an ephemeral API
without the scheduler, triggers or actions services, so nothing on it fires a schedule or an
automation. Tests of those start the server a user starts (registered in conftest.py's
`pytest_plugins`):

- prefect_services: session-scoped; a PrefectServer with its own PREFECT_HOME, its API URL and
  its log file. `server.env()` is the environment for a subprocess that talks to it;
  `server.errors()` lists the ERROR and traceback lines its log holds so far.
- api(server, method, path, body): one JSON call to its REST API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# A busy 2-core machine took up to 15 s; leave room.
STARTUP_TIMEOUT_S = 180.0
# Prefect's log records start "HH:MM:SS.mmm | LEVEL"; uvicorn's access lines "INFO:".
RECORD_START = re.compile(r"^(\d\d:\d\d:\d\d\.\d+ \| |INFO:|WARNING:|ERROR:)")


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    log_path: Path
    process: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a subprocess that uses this server (and logs its INFO lines)."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra,
        }

    def log_records(self) -> list[str]:
        """The server's log so far, one string per record (a timestamped line and its traceback)."""
        records: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if RECORD_START.match(line) or not records:
                records.append(line)
            else:
                records[-1] += "\n" + line
        return records

    def errors(self) -> list[str]:
        """Records of the server's log that report an error (e.g. a failing scheduler service).

        "database is locked" is left out: Prefect's server on SQLite meets it under concurrent
        writes (docs/operations.md, "Notifications"); tests that depend on the write it failed
        check for its consequence (dropped_events) themselves.
        """
        return [
            record for record in self.log_records()
            if ("| ERROR" in record or "Traceback" in record) and "database is locked" not in record
        ]

    def dropped_events(self) -> list[str]:
        """Records of events the server's services gave up on (moved to the dead letter queue)."""
        return [record for record in self.log_records() if "dead letter queue" in record]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api(server: PrefectServer, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        server.api_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 2.0, explain: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` (and `explain()`) at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s\n{explain()}")
        time.sleep(every_s)


def recorded_task_runs(client, flow_run_id, settled: Callable[[list], bool], timeout_s: float = 60) -> list:
    """The flow run's task runs once `settled(task_runs)` holds. Task runs and their states reach the
    server as events, recorded a moment after the run that sent them may have ended."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read() -> list:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return wait_for(
        "the server to record the flow run's task runs", lambda: (runs := read()) and settled(runs) and runs,
        timeout_s, explain=lambda: "\n".join(f"{t.name}: {t.state and t.state.type}" for t in read()),
    )


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM a process started with start_new_session=True and everything it started; SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children the leader left behind
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="session")
def prefect_services(tmp_path_factory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-services-home")
    port = free_port()
    log_path = home / "server.log"
    server = PrefectServer(f"http://127.0.0.1:{port}/api", home, log_path, None)  # type: ignore[arg-type]
    with open(log_path, "w") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if server.process.poll() is not None:
                pytest.fail(f"prefect server start exited with {server.process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for("the Prefect server answered", healthy, STARTUP_TIMEOUT_S, every_s=0.5, explain=log_path.read_text)
        yield server
    finally:
        stop_process_group(server.process)
