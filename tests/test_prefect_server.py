"""The temporary Prefect server a run starts when no Prefect API is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import FIXTURES
from steadyscribe.prefect_server import ServerStartError, TemporaryServer, temporary_server

REPO = Path(__file__).resolve().parents[1]


def _without_api(tmp_path: Path) -> dict[str, str]:
    """This session's environment with no Prefect API configured, and a Prefect home and TMPDIR of its own."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {
        **env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "INFO", "TMPDIR": str(tmp_path / "tmp"),
    }


@pytest.mark.slow
def test_the_server_answers_then_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    server = TemporaryServer()
    try:
        server.wait_until_ready()
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as response:
            assert response.status == 200
        # Its database is in a home of its own, not in the user's Prefect home.
        assert server.database.is_file() and server.database.parent == Path(server.home.path)
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not Path(server.home.path).exists() and not (tmp_path / "prefect-home" / "prefect.db").exists()


@pytest.mark.slow
def test_a_server_that_exits_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    server = TemporaryServer()
    server.stop()
    with pytest.raises(ServerStartError, match="exited with status"):
        server.wait_until_ready(timeout_s=5)


@pytest.mark.slow
def test_no_server_where_an_api_is_configured(prefect_server):
    with temporary_server() as server:
        assert server is None


@pytest.mark.slow
def test_a_run_without_an_api_uses_and_stops_its_own_server(tmp_path):
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "steadyscribe.app.cli", "run", str(FIXTURES / "real" / "r26_goforward.flac"),
         "--output", str(tmp_path / "out"), "--profile", "cpu-fast", "--summary-json", str(summary)],
        env=_without_api(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    # (A server left running would hold the run's output pipes open: subprocess.run would time out.)
    assert done.returncode == 0, done.stderr
    assert json.loads(summary.read_text())["files_ok"] == 1
    # Its logs reached the server before it stopped: none retried against a stopped server.
    assert "Error logging to API" not in done.stderr and "connection attempts failed" not in done.stderr
    # The flow ran on the server the run started, not on one Prefect started itself.
    [log_path] = [line.removeprefix("log: ") for line in done.stdout.splitlines() if line.startswith("log: ")]
    log = Path(log_path).read_text()
    assert "Beginning flow run" in log and "Starting temporary server" not in log
    # Its database, which held the run's parameters, went with it.
    assert not list((tmp_path / "tmp").glob("steadyscribe-*")) and not (tmp_path / "prefect-home" / "prefect.db").exists()


@pytest.mark.slow
def test_bad_configuration_stops_the_server_and_exits_2(tmp_path):
    # The server starts before the profile is read; a server left running would hold the pipes open.
    done = subprocess.run(
        [sys.executable, "-m", "steadyscribe.app.cli", "run", str(FIXTURES / "real" / "r26_goforward.flac"),
         "--output", str(tmp_path / "out"), "--profile", "no-such-profile"],
        env=_without_api(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "no-such-profile" in done.stderr
