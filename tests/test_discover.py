"""Input discovery (paths, directories, globs, memory:// and s3:// URLs) and content hashing."""

from __future__ import annotations

import errno
import hashlib
import uuid

import fsspec
import pytest

from steadyscribe import storage
from steadyscribe.records import InputFile
from steadyscribe.tasks.discover import DEFAULT_AUDIO_EXTENSIONS, content_sha256, discover_inputs

TREE = {
    "a.wav": b"a" * 10,
    "B.MP3": b"b" * 20,
    "notes.txt": b"not audio",
    "._a.wav": b"macOS resource fork",
    "sub/c.flac": b"c" * 30,
    "sub/deeper/d.mkv": b"d" * 40,
    "sub/e.opus": b"e" * 50,
}


def make_tree(fs: fsspec.AbstractFileSystem, root: str) -> None:
    for name, data in TREE.items():
        fs.pipe_file(f"{root}/{name}", data)


@pytest.fixture
def local_tree(tmp_path):
    fs = fsspec.filesystem("file", auto_mkdir=True)
    make_tree(fs, str(tmp_path))
    return tmp_path


def sources(found: list[InputFile]) -> list[str]:
    return [f.source for f in found]


def test_directory_is_searched_recursively_for_audio(local_tree):
    found = discover_inputs([str(local_tree)])
    assert sources(found) == sorted(
        str(local_tree / n) for n in ["a.wav", "B.MP3", "sub/c.flac", "sub/deeper/d.mkv", "sub/e.opus"]
    )
    assert {f.source.rsplit("/", 1)[1]: f.size for f in found}["d.mkv"] == 40


def test_globs_explicit_files_and_duplicates(local_tree, monkeypatch):
    monkeypatch.chdir(local_tree)
    found = discover_inputs(["sub/*", "**/*.wav", "notes.txt", str(local_tree / "sub" / "c.flac")])
    assert sources(found) == [
        str(local_tree / "a.wav"),
        str(local_tree / "notes.txt"),  # named explicitly, so kept whatever its extension
        str(local_tree / "sub/c.flac"),
        str(local_tree / "sub/deeper/d.mkv"),  # "sub/*" matched the directory "deeper"
        str(local_tree / "sub/e.opus"),
    ]


def test_extensions_can_be_narrowed(local_tree):
    assert sources(discover_inputs([str(local_tree)], extensions={".FLAC"})) == [str(local_tree / "sub/c.flac")]


def test_missing_path_is_returned_for_a_failed_row_later(local_tree, monkeypatch):
    monkeypatch.chdir(local_tree)
    found = discover_inputs(["gone.wav", "a.wav", "nothing/*.wav"])
    assert found == [
        InputFile(source=str(local_tree / "a.wav"), size=10),
        InputFile(source=str(local_tree / "gone.wav"), size=None),
    ]


def test_default_extensions_cover_audio_and_video_containers():
    assert {"wav", "flac", "mp3", "ogg", "opus", "m4a", "aac", "wma", "webm", "mp4", "mkv", "mov"} == DEFAULT_AUDIO_EXTENSIONS


def test_memory_urls():
    root = f"memory://inputs-{uuid.uuid4().hex[:8]}"
    fs, path = storage.filesystem_for(root)
    make_tree(fs, path)
    found = discover_inputs([f"{root}/", f"{root}/sub/*.flac", f"{root}/missing.mp3"])
    assert sources(found) == [
        f"memory://{path}/B.MP3",
        f"memory://{path}/a.wav",
        f"memory://{path}/missing.mp3",
        f"memory://{path}/sub/c.flac",
        f"memory://{path}/sub/deeper/d.mkv",
        f"memory://{path}/sub/e.opus",
    ]
    assert content_sha256(f"{root}/sub/e.opus") == hashlib.sha256(TREE["sub/e.opus"]).hexdigest()
    fs.rm(path, recursive=True)


def test_s3_bucket_prefix_and_hash(s3_bucket, s3_options):
    fs, _ = storage.filesystem_for(f"s3://{s3_bucket}", s3_options)
    make_tree(fs, f"{s3_bucket}/audio")
    found = discover_inputs(
        [f"s3://{s3_bucket}/audio/", f"s3://{s3_bucket}/audio/**/*.flac", f"s3://{s3_bucket}/missing.wav"],
        storage_options=s3_options,
    )
    assert sources(found) == [
        f"s3://{s3_bucket}/audio/B.MP3",
        f"s3://{s3_bucket}/audio/a.wav",
        f"s3://{s3_bucket}/audio/sub/c.flac",
        f"s3://{s3_bucket}/audio/sub/deeper/d.mkv",
        f"s3://{s3_bucket}/audio/sub/e.opus",
        f"s3://{s3_bucket}/missing.wav",
    ]
    assert [f.size for f in found] == [20, 10, 30, 40, 50, None]
    # A chunk smaller than the file: the hash is streamed, not read whole.
    digest = content_sha256(f"s3://{s3_bucket}/audio/sub/deeper/d.mkv", chunk=7, storage_options=s3_options)
    assert digest == hashlib.sha256(TREE["sub/deeper/d.mkv"]).hexdigest()


def test_hash_is_streamed_in_chunks(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "x.wav").write_bytes(data)
    assert content_sha256(str(tmp_path / "x.wav"), chunk=1000) == hashlib.sha256(data).hexdigest()


def test_hash_restarts_after_a_transient_error(s3_bucket, s3_options, monkeypatch):
    url = f"s3://{s3_bucket}/x.wav"
    fs, path = storage.filesystem_for(url, s3_options)
    fs.pipe_file(path, b"payload" * 100)
    real_open = type(fs).open
    failures = [OSError(errno.EBUSY, "SlowDown")]

    def flaky_open(self, *args, **kwargs):
        if failures:
            raise failures.pop()
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(fs), "open", flaky_open)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    assert content_sha256(url, storage_options=s3_options) == hashlib.sha256(b"payload" * 100).hexdigest()
    assert failures == []


def test_missing_input_hash_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        content_sha256(str(tmp_path / "gone.wav"))
