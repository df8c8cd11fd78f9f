"""fsspec helpers: filesystems, missing extras, retries, atomic writes, the writability check."""

from __future__ import annotations

import errno
import os
import re
import sys

import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from steadyscribe import storage
from steadyscribe.storage import (
    MissingStorageExtra,
    OutputNotWritable,
    StorageError,
    check_writable,
    filesystem_for,
    is_transient_io_error,
    with_retries,
    write_bytes_atomic,
)


def test_filesystem_for_local_and_memory(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "a.wav"))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "a.wav")
    fs, path = filesystem_for("memory://bucket/a.wav")
    assert isinstance(fs, MemoryFileSystem) and path == "/bucket/a.wav"


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("s3://bucket/key.wav", "s3fs", "steadyscribe[s3]"),
        ("gs://bucket/key.wav", "gcsfs", "steadyscribe[gcs]"),
        ("az://container/key.wav", "adlfs", "steadyscribe[azure]"),
        ("abfs://container/key.wav", "adlfs", "steadyscribe[azure]"),
    ],
)
def test_missing_backend_names_the_extra(monkeypatch, url, module, extra):
    # Make the backend unimportable, and forget it if fsspec already loaded it.
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, url.split("://")[0], raising=False)
    with pytest.raises(MissingStorageExtra, match=re.escape(f"pip install '{extra}'")) as raised:
        filesystem_for(url)
    assert isinstance(raised.value, StorageError)  # the CLI reports these as configuration errors


def test_transient_errors_are_recognised():
    class EndpointConnectionError(Exception):  # botocore's, matched by name
        pass

    assert is_transient_io_error(ConnectionResetError())
    assert is_transient_io_error(TimeoutError())
    assert is_transient_io_error(OSError(errno.EBUSY, "SlowDown"))
    assert is_transient_io_error(EndpointConnectionError())
    assert not is_transient_io_error(FileNotFoundError(errno.ENOENT, "no such key"))
    assert not is_transient_io_error(PermissionError(errno.EACCES, "denied"))
    assert not is_transient_io_error(ValueError("bug"))


def flaky(failures: list[BaseException], result: str = "done"):
    """A callable that raises the given errors on successive calls, then returns result."""
    calls = []

    def fn():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    fn.calls = calls
    return fn


def test_with_retries_backs_off_exponentially_then_succeeds(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", sleeps.append)
    fn = flaky([ConnectionResetError(), OSError(errno.EBUSY, "SlowDown"), TimeoutError()])
    assert with_retries(fn, attempts=5, base_delay=1.0) == "done"
    assert len(fn.calls) == 4
    # Jittered between half and all of 1, 2, 4 seconds.
    for sleep, full in zip(sleeps, [1.0, 2.0, 4.0], strict=True):
        assert full / 2 <= sleep <= full


def test_with_retries_gives_up_after_attempts(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    fn = flaky([ConnectionResetError("1"), ConnectionResetError("2"), ConnectionResetError("3")])
    with pytest.raises(ConnectionResetError, match="3"):
        with_retries(fn, attempts=3, base_delay=0.0)
    assert len(fn.calls) == 3


def test_with_retries_does_not_retry_permanent_errors():
    fn = flaky([FileNotFoundError("gone")])
    with pytest.raises(FileNotFoundError):
        with_retries(fn, attempts=5, base_delay=0.0)
    assert len(fn.calls) == 1


def test_with_retries_custom_predicate():
    fn = flaky([KeyError("retry me")])
    assert with_retries(fn, base_delay=0.0, retry_on=lambda e: isinstance(e, KeyError)) == "done"


def test_atomic_local_write_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    fs, root = filesystem_for(str(tmp_path))
    final = f"{root}/table/part.parquet"

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(storage.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(fs, final, b"x" * 1000, temp_dir=f"{root}/_tmp")
    assert not fs.exists(final)
    assert fs.ls(f"{root}/_tmp") == []  # the temporary file was removed too
    monkeypatch.undo()
    write_bytes_atomic(fs, final, b"whole", temp_dir=f"{root}/_tmp")
    assert fs.cat_file(final) == b"whole"


def test_atomic_write_renames_on_other_filesystems(tmp_path):
    # A filesystem that is neither local nor an object store: written under _tmp/, then moved.
    fs = DirFileSystem(path=str(tmp_path), fs=LocalFileSystem())
    moves = []
    real_mv = fs.mv
    fs.mv = lambda src, dst: moves.append((src, dst)) or real_mv(src, dst)
    write_bytes_atomic(fs, "table/part.parquet", b"whole", temp_dir="_tmp")
    assert (tmp_path / "table" / "part.parquet").read_bytes() == b"whole"
    [(src, dst)] = moves
    assert src.startswith("_tmp/") and src.endswith(".tmp") and dst == "table/part.parquet"
    assert list((tmp_path / "_tmp").iterdir()) == []


def test_check_writable_local(tmp_path):
    out = tmp_path / "new" / "out"
    check_writable(str(out))
    assert (out / "_tmp").is_dir() and list((out / "_tmp").iterdir()) == []


def test_check_writable_fails_fast_with_a_clear_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputNotWritable, match="cannot write to output"):
        check_writable(str(blocker / "out"))


def test_check_writable_s3(s3_bucket, s3_options):
    check_writable(f"s3://{s3_bucket}/out", s3_options)
    fs, _ = filesystem_for(f"s3://{s3_bucket}", s3_options)
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == []  # the probe was deleted
    with pytest.raises(OutputNotWritable, match="bucket does not exist"):
        check_writable("s3://no-such-bucket-steadyscribe/out", s3_options)


def test_missing_cloud_credentials_say_what_to_set(s3_server, monkeypatch):
    """No credentials anywhere (environment, ~/.aws, instance role): the error names the variables to set."""
    from steadyscribe.storage import OutputNotWritable, check_writable

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    with pytest.raises(OutputNotWritable) as refused:
        check_writable("s3://no-credentials/out", {"endpoint_url": s3_server, "client_kwargs": {"region_name": "eu-west-1"}})
    message = str(refused.value)
    assert "NoCredentialsError" in message and "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def test_an_input_without_cloud_credentials_fails_saying_what_to_set(tmp_path, monkeypatch):
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.decode import decode_input

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    decoded = decode_input(InputFile("s3://no-credentials/call.flac"), tmp_path)
    assert decoded.status == "failed"
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in decoded.error and "please report" not in decoded.error
