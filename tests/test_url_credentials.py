"""Credentials in URLs never leave the process: refused before the flow run exists, redacted in every message.

The end-to-end test serves a fixture from a local HTTP server that requires basic auth or a
signed query parameter, runs the real CLI against the test session's Prefect server, and looks
for the secret in everything a run leaves: the terminal, the run's log file, the tables, and the
flow runs, logs and artifacts read back from the Prefect API. The same run checks what a
non-terminal run prints (plain lines, no per-task log lines).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.dataset as ds
import pytest

from helpers import FIXTURES, run_cli
from prefect_services import recorded_task_runs
from steadyscribe.url_credentials import CredentialsInUrl, credential_parts, redact_url, refuse_credentials_in_urls

PASSWORD = "PASSWORD-4f1c9e"
SIGNATURE = "SIGNATURE-8b2d70"
FIXTURE = FIXTURES / "fast_speaker.flac"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"http://user:{PASSWORD}@127.0.0.1:8000/call.flac", "http://user:***@127.0.0.1:8000/call.flac"),
        (f"https://{PASSWORD}@host/call.flac", "https://***@host/call.flac"),
        (f"ftp://{PASSWORD}@host/call.flac", "ftp://***@host/call.flac"),
        (f"sftp://user:{PASSWORD}@host/call.flac", "sftp://user:***@host/call.flac"),
        (
            f"https://b.s3.amazonaws.com/c.flac?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Signature={SIGNATURE}",
            "https://b.s3.amazonaws.com/c.flac?X-Amz-Algorithm=***&X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        (f"https://a.blob.core.windows.net/c/x.wav?sv=2024&SIG={SIGNATURE}", "https://a.blob.core.windows.net/c/x.wav?sv=***&SIG=***"),
        (f"https://a.blob.core.windows.net/c/x.wav?se=2030-01-01&sp=r", "https://a.blob.core.windows.net/c/x.wav?se=***&sp=r"),
        (f"https://storage.googleapis.com/b/x.ogg?X-Goog-Signature={SIGNATURE}", "https://storage.googleapis.com/b/x.ogg?X-Goog-Signature=***"),
        (f"http://host/x.mp3?token={SIGNATURE}#t=3", "http://host/x.mp3?token=***#***"),
        # The forms that slipped through before: a fragment, matrix parameters, `key`, percent-encoded names.
        (f"https://host/x.flac#access_token={SIGNATURE}", "https://host/x.flac#***"),
        (f"https://host/calls;X-Amz-Signature={SIGNATURE};v=1/x.flac", "https://host/calls;X-Amz-Signature=***;v=1/x.flac"),
        (f"https://host/x.flac;X-Amz-Signature={SIGNATURE}", "https://host/x.flac;X-Amz-Signature=***"),
        (f"https://host/x.flac?key={SIGNATURE}", "https://host/x.flac?key=***"),
        (f"https://host/x.flac?%74oken={SIGNATURE}", "https://host/x.flac?%74oken=***"),
        (f"https://host/x.flac?%2574oken={SIGNATURE}", "https://host/x.flac?%2574oken=***"),  # encoded twice
        (f"https://host/x.flac?a=1;Sig={SIGNATURE}", "https://host/x.flac?a=1;Sig=***"),
        # Names by their parts, however they are written.
        (f"https://host/x.flac?apiKey={SIGNATURE}&api-key=1&API_KEY=2", "https://host/x.flac?apiKey=***&api-key=***&API_KEY=***"),
        (f"https://host/x.flac?accesstoken={SIGNATURE}", "https://host/x.flac?accesstoken=***"),
        (f"https://host/x.flac?X-Amz-Security-Token={SIGNATURE}", "https://host/x.flac?X-Amz-Security-Token=***"),
        (f"https://host/x.flac?client_secret={SIGNATURE}&Password=1", "https://host/x.flac?client_secret=***&Password=***"),
        (f"https://host/x.flac?SessionId={SIGNATURE}&auth=1&credential=2", "https://host/x.flac?SessionId=***&auth=***&credential=***"),
        (f"https://host/x.flac?Key-Pair-Id=K&Policy=P&Signature={SIGNATURE}", "https://host/x.flac?Key-Pair-Id=***&Policy=***&Signature=***"),
        # fsspec URL chains: each link is checked.
        (f"simplecache::https://host/x.flac?token={SIGNATURE}", "simplecache::https://host/x.flac?token=***"),
        (f"http://[::1]:8000/x.flac?token={SIGNATURE}", "http://[::1]:8000/x.flac?token=***"),
    ],
)
def test_secrets_in_urls_are_found_and_redacted(url, redacted):
    assert credential_parts(url)
    assert redact_url(url) == redacted
    with pytest.raises(CredentialsInUrl) as refused:
        refuse_credentials_in_urls(["/data/ok.flac", url])
    assert redacted in str(refused.value) and PASSWORD not in str(refused.value) and SIGNATURE not in str(refused.value)
    assert "docs/operations.md" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "/data/a:b@c.flac", "/data/x#token=1.flac", "s3://bucket/calls/x.flac", "sftp://user@host/x.flac",
        "https://host/x.flac?version=3&keyword=a", "https://host/x.flac?version=2", "s3://bucket/x.flac?versionId=3",
        "https://host/a;v=1/x.flac?alt=media&t=3", "memory://x/y.wav", "https://host/x.flac#",
    ],
)
def test_urls_without_secrets_pass_unchanged(url):
    assert credential_parts(url) == []
    assert redact_url(url) == url
    refuse_credentials_in_urls([url])


def test_a_refusal_prints_control_characters_escaped():
    with pytest.raises(CredentialsInUrl) as refused:
        refuse_credentials_in_urls([f"https://host/a\nfiles: 99 ok\n.flac?token={SIGNATURE}"])
    assert "\n" not in str(refused.value) and "https://host/a\\nfiles: 99 ok\\n.flac?token=***" in str(refused.value)


# Each way a secret rides in a URL, as a user would paste it. None of them may leave a trace.
URL_FORMS = [
    f"https://media.example.com/call.flac#access_token={SIGNATURE}",
    f"https://media.example.com/call.flac;X-Amz-Signature={SIGNATURE}",
    f"https://media.example.com/call.flac?key={SIGNATURE}",
    f"https://media.example.com/call.flac?%74oken={SIGNATURE}",
    f"https://user:{PASSWORD}@media.example.com/call.flac",
    f"https://b.s3.amazonaws.com/call.flac?X-Amz-Credential=AKIA%2F1&X-Amz-Signature={SIGNATURE}",
]


@pytest.mark.slow
@pytest.mark.parametrize("url", URL_FORMS)
def test_no_url_form_leaves_its_secret_in_the_output_the_logs_or_the_prefect_home(url, tmp_path):
    """The CLI as a new user runs it (no Prefect API configured: a temporary server with its own home)."""
    home, logs, output = tmp_path / "prefect-home", tmp_path / "logs", tmp_path / "out"
    environment = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    environment |= {"PREFECT_HOME": str(home), "STEADYSCRIBE_LOG_DIR": str(logs), "PREFECT_LOGGING_LEVEL": "INFO"}
    refused = subprocess.run(
        [sys.executable, "-m", "steadyscribe.app.cli", "run", str(FIXTURE), url, "--output", str(output)],
        capture_output=True, text=True, env=environment, timeout=600, cwd=tmp_path,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert redact_url(url) in refused.stderr and "docs/operations.md" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not output.exists()
    secrets = (PASSWORD.encode(), SIGNATURE.encode())
    terminal = (refused.stdout + refused.stderr).encode()
    assert not any(secret in terminal for secret in secrets)
    # Every byte the run left anywhere under this test's folder: log files, the server's SQLite database.
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert not any(secret in path.read_bytes() for secret in secrets), path


class _AudioHandler(BaseHTTPRequestHandler):
    """Serves FIXTURE at /basic/<name> (basic auth user:PASSWORD) and /signed/<name> (?sig=SIGNATURE), with ranges."""

    def _authorized(self) -> bool:
        url = urlsplit(self.path)
        if url.path.startswith("/basic/"):
            expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
            return self.headers.get("Authorization") == expected
        return url.path.startswith("/signed/") and parse_qs(url.query).get("sig") == [SIGNATURE]

    def _respond(self, with_body: bool) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="audio"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = FIXTURE.read_bytes()
        first, last = 0, len(data) - 1
        if ranged := self.headers.get("Range", "").removeprefix("bytes="):
            start, _, end = ranged.partition("-")
            first, last = int(start), min(int(end) if end else last, last)
        self.send_response(206 if ranged else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "audio/flac")
        self.send_header("Content-Length", str(last - first + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.end_headers()
        if with_body:
            self.wfile.write(data[first : last + 1])

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def log_message(self, *args) -> None:  # requests would drown a failure report
        pass


@pytest.fixture(scope="module")
def audio_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AudioHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def run_at_info(args: list[str], env: dict[str, str], log_dir: Path) -> subprocess.CompletedProcess:
    """The real `steadyscribe run` in its own process, logging at INFO to the session's Prefect server."""
    return run_cli(args, env={"PREFECT_LOGGING_LEVEL": "INFO", "STEADYSCRIBE_LOG_DIR": str(log_dir), **env})


def everything_on_the_server(output: Path) -> str:
    """The flow runs writing to `output` (name, parameters, state), their task runs, logs and artifacts, as text."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = [run for run in client.read_flow_runs(limit=200, sort=FlowRunSort.EXPECTED_START_TIME_DESC) if run.parameters.get("output") == str(output)]
        assert runs
        of_runs = FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in runs]))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id for run in runs])))
        artifacts = client.read_artifacts(flow_run_filter=of_runs)
        assert logs and artifacts
        # Task runs reach the server as events, after the run may have ended: wait until each is final.
        task_runs = [t for run in runs for t in recorded_task_runs(client, run.id, lambda recorded: all(task.state.is_final() for task in recorded))]
        records = [*runs, *task_runs, *logs, *artifacts]
    return "\n".join(record.model_dump_json() for record in records)


def table_cells(output: Path) -> str:
    return json.dumps(
        [ds.dataset(output / name, partitioning="hive").to_table().to_pylist() for name in ("files", "segments", "words")],
        default=str,
    )


@pytest.mark.slow
def test_no_secret_reaches_the_terminal_the_tables_or_the_prefect_server(prefect_server, audio_server, tmp_path):
    output = tmp_path / "out"
    with_password = f"http://user:{PASSWORD}@{audio_server}/basic/call.flac"
    signed = f"http://{audio_server}/signed/call.flac?expires=1&sig={SIGNATURE}"

    # In the URL: refused before any flow run exists, with the URL redacted and the way to pass the secret.
    for url in (with_password, signed):
        refused = run_at_info([url, "--output", str(output)], env={}, log_dir=tmp_path / "logs")
        assert refused.returncode == 2, refused.stderr
        assert redact_url(url) in refused.stderr and "netrc" in refused.stderr
        assert PASSWORD not in refused.stdout + refused.stderr and SIGNATURE not in refused.stdout + refused.stderr
    assert not output.exists()

    # The documented way for HTTP basic auth: a netrc entry that only aiohttp, in the process opening the file, reads.
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login user password {PASSWORD}\n")
    url = f"http://{audio_server}/basic/call.flac"
    done = run_at_info(
        [url, "--output", str(output)],
        env={"NETRC": str(netrc), "FSSPEC_HTTP_CLIENT_KWARGS": '{"trust_env": true}', "NO_PROXY": "127.0.0.1"},
        log_dir=tmp_path / "logs",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = ds.dataset(output / "files", partitioning="hive").to_table().to_pylist()
    assert [(f["source"], f["status"]) for f in files] == [(url, "ok")]
    assert files[0]["words_n"] > 0

    # Not a terminal: plain lines on stdout; Prefect's per-task lines only in the log file the summary names.
    assert done.stdout.startswith("transcribing 1 file: ") and "files 1-1 of 1: 1 ok, 0 failed, 0 skipped" in done.stdout
    assert "Task run" not in done.stdout + done.stderr
    log_file = Path(done.stdout.rpartition("log: ")[2].strip())
    assert "Task run 'decode " in log_file.read_text()

    left_behind = done.stdout + done.stderr + log_file.read_text() + table_cells(output) + everything_on_the_server(output)
    assert "call.flac" in left_behind and PASSWORD not in left_behind and SIGNATURE not in left_behind


@pytest.mark.slow
def test_the_flow_refuses_secrets_from_callers_that_skip_the_cli(prefect_server, tmp_path):
    """A deployment's or a Python caller's parameters reach the server first; the flow still reads and writes nothing."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    from steadyscribe.flows.transcribe import transcribe

    output = f"http://user:{PASSWORD}@127.0.0.1:9/out"
    with pytest.raises(CredentialsInUrl):
        transcribe(inputs=[str(FIXTURE)], output=output)
    with get_client(sync_client=True) as client:
        [run] = [run for run in client.read_flow_runs(limit=200, sort=FlowRunSort.EXPECTED_START_TIME_DESC) if run.parameters.get("output") == output]
    assert run.name.startswith(f"transcribe {FIXTURE.name} -> http://user:***@127.0.0.1:9/out (cpu-small, 20")
    assert run.state.is_failed()
