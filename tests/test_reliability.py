"""Reliability through the real flow: odd and bad inputs, storage faults, kills, bad configuration.

Every input must end in exactly one `files` row (ok, skipped or failed with an error that says
what, which file and what to do), and the other files must carry on. Inputs are made here with
PyAV and numpy; nothing calls sox or espeak.

Tests run as root, for whom chmod 000 does not block reads: the permission case reads from a
filesystem of this process (locked://) whose opens raise PermissionError instead. Such a
filesystem is read in the run's own process; local files are decoded in a child process.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import steadyscribe.tasks.decode
import steadyscribe.tasks.write
from helpers import FIXTURES, api_env, cut_at_packet_boundary, encode, files_rows, session_processes, wait_until
from steadyscribe import SAMPLE_RATE
from steadyscribe.app.cli import main
from steadyscribe.records import InputFile
from steadyscribe.pcm import load_pcm

SPEECH_S = 3.0  # speech clips are cut short: inference on CPU is the slow part


# ---- making inputs -------------------------------------------------------------------------


def write_video_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_png(path: Path) -> Path:
    with av.open(str(path), "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def with_unknown_codec(wav: Path, target: Path) -> Path:
    """A WAV whose format tag names a codec FFmpeg has no decoder for."""
    data = bytearray(wav.read_bytes())
    fmt = data.find(b"fmt ")
    data[fmt + 8 : fmt + 10] = (0x7777).to_bytes(2, "little")
    target.write_bytes(bytes(data))
    return target


def retagged(path: Path) -> bytes:
    """The same FLAC frames (the same samples) in a file with another title tag: other content, same audio."""
    buffer = io.BytesIO()
    with av.open(str(path)) as source, av.open(buffer, "w", format="flac") as copy:
        copy.metadata["title"] = "another copy"
        stream = copy.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                copy.mux(packet)
    return buffer.getvalue()


def speech(name: str, work_dir: Path, seconds: float = SPEECH_S) -> np.ndarray:
    decoded = steadyscribe.tasks.decode.decode_input(InputFile(str(FIXTURES / f"{name}.flac")), work_dir)
    return np.asarray(load_pcm(decoded.pcm_path))[: int(seconds * SAMPLE_RATE)]


# ---- injected faults -------------------------------------------------------------------------


class FlakyFileSystem(MemoryFileSystem):
    """memory:// under the protocol flaky://, whose reads fail with a dropped connection on
    the opens numbered in `failing_opens` (1-based), like a storage service having a bad minute."""

    protocol = "flaky"
    failing_opens: frozenset[int] = frozenset({1, 3})  # the hash's first open, then the decoder's
    opens = 0
    raised = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("flaky://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            FlakyFileSystem.opens += 1
            if FlakyFileSystem.opens in self.failing_opens:
                FlakyFileSystem.raised += 1
                raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer (injected)", path)
        return super()._open(path, mode, **kwargs)


class LockedFileSystem(MemoryFileSystem):
    """memory:// under the protocol locked://, whose reads are refused as a file without read permission is."""

    protocol = "locked"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("locked://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return super()._open(path, mode, **kwargs)


class FlakyWrites:
    """Wraps write_bytes_atomic: the first write of the run fails as a throttled object store would."""

    def __init__(self, write):
        self.write, self.calls, self.raised = write, 0, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.raised += 1
            raise OSError(errno.EBUSY, "SlowDown: please reduce your request rate (injected)")
        return self.write(*args, **kwargs)


# ---- one flow run over every odd input ---------------------------------------------------------

# name → (status, fragments the error must contain, or for an ok file its warnings; an ok file
# without fragments has no warnings)
CASES = {
    "missing.wav": ("failed", ["not found", "check the path"]),
    "locked.flac": ("failed", ["permission denied", "grant read access"]),
    "empty.wav": ("failed", ["empty (0 bytes)"]),
    "corrupt.flac": ("failed", ["corrupt"]),
    "text.mp3": ("failed", ["not a readable audio", "looks like a text file"]),
    "image.wav": ("failed", ["no audio stream", "PNG image"]),
    "video_only.mkv": ("failed", ["no audio stream", "video (mpeg4)"]),
    "unknown_codec.wav": ("failed", ["codec is not supported", "ffmpeg -i"]),
    "too_short.wav": ("failed", ["50 ms", "shorter than the 100 ms minimum"]),
    "silence.flac": ("ok", []),
    "stereo_44k.wav": ("ok", []),
    "mono_48k.flac": ("ok", []),
    "u8.wav": ("ok", []),
    "speech.flac": ("ok", []),
    "flaky.flac": ("ok", []),
    # Transcribed as far as they go, and flagged.
    "truncated.flac": ("ok", ["truncated: ", "of a declared 16.7 s decoded", "re-upload"]),
    "truncated.wav": ("ok", ["truncated: 1.5 s of a declared 3.0 s decoded", "re-upload"]),
}


@pytest.fixture(scope="module")
def odd_run(prefect_server, tmp_path_factory):
    """`steadyscribe run` (in process) over a folder of odd inputs, a missing path and a flaky remote file."""
    scratch = tmp_path_factory.mktemp("scratch")
    inputs = tmp_path_factory.mktemp("odd-inputs")
    output = tmp_path_factory.mktemp("odd-out")
    clip = speech("fast_speaker", scratch)
    shutil.copy(FIXTURES / "fast_speaker.flac", inputs / "speech.flac")
    encode(inputs / "stereo_44k.wav", clip, rate=44100, codec="pcm_s16le", channels=2)
    encode(inputs / "mono_48k.flac", clip, rate=48000)
    encode(inputs / "u8.wav", clip, codec="pcm_u8")
    encode(inputs / "silence.flac", np.zeros(2 * SAMPLE_RATE))
    encode(inputs / "too_short.wav", clip[: SAMPLE_RATE // 20], codec="pcm_s16le")
    (inputs / "empty.wav").write_bytes(b"")
    (inputs / "text.mp3").write_text("These are meeting notes, not a recording.\n" * 20)
    write_png(inputs / "image.wav")
    write_video_only(inputs / "video_only.mkv")
    with_unknown_codec(encode(scratch / "tone.wav", clip, codec="pcm_s16le"), inputs / "unknown_codec.wav")
    cut_at_packet_boundary(FIXTURES / "clean_gb.flac", inputs / "truncated.flac")
    whole_wav = encode(scratch / "whole.wav", clip, codec="pcm_s16le").read_bytes()
    (inputs / "truncated.wav").write_bytes(whole_wav[: len(whole_wav) // 2])
    corrupt = bytearray((FIXTURES / "noisy.flac").read_bytes())
    corrupt[200:-200] = np.random.default_rng(0).integers(0, 256, len(corrupt) - 400, dtype=np.uint8).tobytes()
    (inputs / "corrupt.flac").write_bytes(bytes(corrupt))

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    # The speech of speech.flac under other bytes: an exact copy would be its `duplicate` row.
    FlakyFileSystem().pipe_file("/remote/flaky.flac", retagged(FIXTURES / "fast_speaker.flac"))
    fsspec.register_implementation("locked", LockedFileSystem, clobber=True)
    LockedFileSystem().pipe_file("/remote/locked.flac", encode(scratch / "locked.flac", clip).read_bytes())
    flaky_writes = FlakyWrites(steadyscribe.tasks.write.write_bytes_atomic)

    summary_path = scratch / "summary.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steadyscribe.tasks.write, "write_bytes_atomic", flaky_writes)
        exit_code = main([
            "run", str(inputs), str(inputs / "missing.wav"), "flaky:///remote/flaky.flac", "locked:///remote/locked.flac",
            "--output", str(output), "--summary-json", str(summary_path),
        ])
    rows = {row["source"].rsplit("/", 1)[-1]: row for row in files_rows(output)}
    return {
        "exit_code": exit_code,
        "rows": rows,
        "all_rows": files_rows(output),
        "summary": json.loads(summary_path.read_text()),
        "flaky_writes": flaky_writes,
        "output": output,
    }


@pytest.mark.slow
def test_every_input_ends_in_exactly_one_files_row(odd_run):
    sources = [row["source"].rsplit("/", 1)[-1] for row in odd_run["all_rows"]]
    assert sorted(sources) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_input_case(odd_run, name):
    status, fragments = CASES[name]
    row = odd_run["rows"][name]
    assert row["status"] == status, row["error"]
    if status == "failed":
        # What is wrong, with which file, and what to do.
        assert row["source"] in row["error"]
        for fragment in fragments:
            assert fragment in row["error"]
        assert row["duration_s"] is None  # never measured: not 0.0, which readers would sum as audio
    else:
        assert row["error"] is None
        assert all(fragment in "; ".join(row["warnings"]) for fragment in fragments)
        assert bool(row["warnings"]) == bool(fragments), row["warnings"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stereo_44k.wav", "mono_48k.flac", "u8.wav"])
def test_other_rates_channels_and_depths_are_transcribed(odd_run, name):
    row = odd_run["rows"][name]
    assert row["duration_s"] == pytest.approx(SPEECH_S, abs=0.05)
    assert row["words_n"] >= 5


@pytest.mark.slow
def test_silence_is_ok_with_no_words(odd_run):
    row = odd_run["rows"]["silence.flac"]
    assert row["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert row["words_n"] == 0


@pytest.mark.slow
def test_transient_storage_errors_are_retried(odd_run):
    """Dropped connections while hashing and decoding a remote input, and a throttled write."""
    assert FlakyFileSystem.raised == 2
    assert odd_run["rows"]["flaky.flac"]["words_n"] == odd_run["rows"]["speech.flac"]["words_n"] > 0
    assert odd_run["flaky_writes"].raised == 1
    assert odd_run["flaky_writes"].calls > 1


@pytest.mark.slow
def test_exit_code_and_summary_report_the_failures(odd_run):
    failed = sorted(name for name, (status, _) in CASES.items() if status == "failed")
    assert odd_run["exit_code"] == 1
    summary = odd_run["summary"]
    assert summary["files_failed"] == len(failed)
    assert summary["files_ok"] == len(CASES) - len(failed)
    assert sorted(f["source"].rsplit("/", 1)[-1] for f in summary["failures"]) == failed


@pytest.mark.slow
def test_flow_run_ends_failed_when_files_failed(odd_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["steadyscribe-transcribe"])),
            sort=FlowRunSort.START_TIME_DESC,
        )
    run = next(r for r in runs if str(odd_run["output"]) in r.name)
    assert run.state.is_failed()
    assert f"{odd_run['summary']['files_failed']} of {len(CASES)} files failed" in run.state.message
    # The first failures are named with their reasons, not only counted.
    first = odd_run["summary"]["failures"][0]
    assert f"{first['source']}: {first['error'].removeprefix(first['source'] + ': ')[:40]}" in run.state.message


@pytest.mark.slow
def test_each_failed_file_is_a_failed_task_run_and_an_error_line(odd_run):
    """Where an on-call engineer looks: red task runs named after the files, ERROR and WARNING lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from prefect_services import recorded_task_runs, wait_for

    failed = sorted(name for name, (status, _) in CASES.items() if status == "failed")
    warned = sorted(name for name, (status, expected) in CASES.items() if status == "ok" and expected)
    with get_client(sync_client=True) as client:
        run_id = odd_run["summary"]["run_id"]
        flow_run = next(r for r in client.read_flow_runs() if str(odd_run["output"]) in r.name)
        task_runs = recorded_task_runs(
            client, flow_run.id, lambda runs: sorted(t.name.removeprefix("failed: ") for t in runs if t.state.is_failed()) == failed
        )
        red = {t.name.removeprefix("failed: "): t for t in task_runs if t.state.is_failed()}
        for name in failed:
            # The reason the files row gives, in the state message of the file's task run.
            row_error = odd_run["rows"][name]["error"]
            assert row_error in red[name].state.message

        def log_lines() -> list:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
            errors = [log.message for log in logs if log.level >= 40]
            warnings = [log.message for log in logs if log.level == 30]
            done = all(any(f"/{name}: " in m for m in errors) for name in failed) and all(
                any(f"/{name}: " in m and "truncated" in m for m in warnings) for name in warned
            )
            return done and (errors, warnings)

        wait_for("every failed file has an ERROR line and every warned file a WARNING line", log_lines, 60)


# ---- cloud storage: missing bucket, wrong credentials ----------------------------------------


@pytest.fixture(scope="module")
def s3_server_with_auth():
    """A moto S3 server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0), in its own process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, url, fragments",
    [
        ("missing bucket", "s3://no-such-bucket-steadyscribe/call.wav", ["not found", "bucket does not exist"]),
        ("wrong credentials", "s3://recordings/call.wav", ["permission denied", "credentials"]),
    ],
)
def test_unreachable_cloud_input_fails_alone(prefect_server, request, monkeypatch, tmp_path, case, url, fragments):
    import s3fs

    if case == "missing bucket":
        options = request.getfixturevalue("s3_options")
    else:
        endpoint = request.getfixturevalue("s3_server_with_auth")
        options = {"key": "wrong", "secret": "wrong", "endpoint_url": endpoint, "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    s3fs.S3FileSystem.clear_instance_cache()
    request.addfinalizer(s3fs.S3FileSystem.clear_instance_cache)
    output = tmp_path / "out"
    assert main(["run", url, "--output", str(output)]) == 1
    [row] = files_rows(output)
    assert (row["source"], row["status"]) == (url, "failed")
    for fragment in fragments:
        assert fragment in row["error"]


@pytest.mark.slow
def test_a_failed_run_whose_final_state_comes_back_without_its_error_still_reports_its_files(
    prefect_server, monkeypatch, tmp_path, capsys
):
    """A state update retried after the server took it (a busy server) is answered with the server's
    copy of the state, which has no data: the run's FilesFailed does not come back with it."""
    import prefect.flow_engine

    propose = prefect.flow_engine.propose_state_sync

    def answered_by_the_servers_copy(client, state, flow_run_id, force=False):
        accepted = propose(client, state, flow_run_id=flow_run_id, force=force)
        return client.read_flow_run(flow_run_id).state if accepted.is_final() else accepted

    monkeypatch.setattr(prefect.flow_engine, "propose_state_sync", answered_by_the_servers_copy)
    damaged = write_png(tmp_path / "damaged.wav")
    assert main(["run", str(damaged), "--output", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert "files: 0 ok, 1 failed, 0 skipped" in printed and f"FAILED {damaged}: " in printed
    [row] = files_rows(tmp_path / "out")
    assert (row["source"], row["status"]) == (str(damaged), "failed")


# ---- bad configuration ------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any input is decoded."""
    calls = []
    monkeypatch.setattr(steadyscribe.tasks.decode, "decode_isolated", lambda *args, **kwargs: calls.append(args))
    yield
    assert not calls, "a configuration error must stop the run before any audio is decoded"


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--profile", "no-such-profile"], ["no profile named 'no-such-profile'", "known: "]),
        (["--profile", "{tmp}/bad.yaml"], ["bad.yaml", "batch_size", "whole number"]),
        (["--batch-size", "0"], ["batch_size: 0 is not allowed"]),
        (["--memory-budget", "lots"], ["memory_budget: 'lots' is not allowed", "2GiB"]),
        (["--output", "{tmp}/a-file/out"], ["cannot write to output", "a-file/out"]),
    ],
    ids=["unknown profile", "invalid profile file", "batch size", "memory budget", "output not writable"],
)
def test_bad_configuration_exits_2_before_any_work(no_decoding, tmp_path, capsys, options, fragments):
    (tmp_path / "bad.yaml").write_text("extends: cpu-small\nbatch_size: lots\n")
    (tmp_path / "a-file").write_text("a file where the output directory should be\n")
    output = tmp_path / "out"
    options = [option.format(tmp=tmp_path) for option in options]
    code = main(["run", str(FIXTURES / "fast_speaker.flac"), "--output", str(output), *options])
    message = capsys.readouterr().err
    assert code == 2
    for fragment in fragments:
        assert fragment in message
    assert not (output / "files").exists()


# ---- killed mid-run, then rerun -----------------------------------------------------------------


def two_groups(tmp_path: Path) -> Path:
    """A folder of 18 files in two groups: 16 distinct silent clips (the group size at batch 1, quick
    to transcribe), then b0 and b1, speech that takes its time."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(16):
        encode(inputs / f"a{i:02d}.flac", np.zeros(SAMPLE_RATE + 160 * i))
    encode(inputs / "b0.flac", speech("fast_speaker", tmp_path))
    encode(inputs / "b1.flac", speech("clean_gb", tmp_path))
    return inputs


def visible_parquet(output: Path) -> list[Path]:
    return [p for table in ("files", "segments", "words") for p in (output / table).glob("**/*.parquet")]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_each_file_once(prefect_server, tmp_path):
    """Two groups of files; SIGKILL once one group's rows are committed; rerun finishes the rest.

    Two groups are in flight at once (one decodes while the other is in inference), so either may commit first.
    """
    inputs, output = two_groups(tmp_path), tmp_path / "out"
    command = [sys.executable, "-m", "steadyscribe.app.cli", "run", str(inputs), "--output", str(output)]
    log = (tmp_path / "run1.log").open("w")
    run = subprocess.Popen(command, env=api_env(), stdout=log, stderr=subprocess.STDOUT)
    checked: set[Path] = set()
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        for path in set(visible_parquet(output)) - checked:
            pq.read_metadata(path)  # a partial file under its final name would fail here
            checked.add(path)
        if list((output / "files").glob("**/*.parquet")):
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert run.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "run1.log").read_text()[-3000:]

    for path in visible_parquet(output):
        pq.read_metadata(path)
    first = files_rows(output)
    groups = ([f"a{i:02d}.flac" for i in range(16)], ["b0.flac", "b1.flac"])
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in first) in groups  # one whole group, nothing of the other
    assert {r["status"] for r in first} == {"ok"}

    rerun = subprocess.run(command, env=api_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{18 - len(first)} ok, 0 failed, {len(first)} skipped" in rerun.stdout
    rows = files_rows(output)
    ok = sorted(r["source"].rsplit("/", 1)[-1] for r in rows if r["status"] == "ok")
    assert ok == sorted(p.name for p in inputs.iterdir())  # each file ok exactly once across both runs
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    for path in visible_parquet(output):
        pq.read_metadata(path)


@pytest.mark.slow
def test_a_run_past_its_time_limit_exits_1_leaves_nothing_running_and_the_rerun_does_each_file_once(prefect_server, tmp_path):
    inputs, output = two_groups(tmp_path), tmp_path / "out"
    command = [sys.executable, "-m", "steadyscribe.app.cli", "run", str(inputs), "--output", str(output)]
    # 1.8 s: the limit falls while the files are decoded or the model loads.
    run = subprocess.Popen(
        command, env=api_env(STEADYSCRIBE_RUN_TIMEOUT_HOURS="0.0005"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stdout + stderr
    assert "timed out" in stderr and "the next run does the rest" in stderr and "Traceback" not in stderr, stderr
    assert wait_until(lambda: not session_processes(run.pid), timeout_s=15), session_processes(run.pid)
    first = files_rows(output) if (output / "files").exists() else []
    assert {r["status"] for r in first} <= {"ok"}

    rerun = subprocess.run(command, env=api_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{18 - len(first)} ok, 0 failed, {len(first)} skipped" in rerun.stdout
    ok = sorted(r["source"].rsplit("/", 1)[-1] for r in files_rows(output) if r["status"] == "ok")
    assert ok == sorted(p.name for p in inputs.iterdir())
