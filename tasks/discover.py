"""Turn the user's inputs (paths, directories, globs, fsspec URLs) into the list of files to transcribe."""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Collection, Iterable

from fsspec import AbstractFileSystem
from prefect import task

from steadyscribe.records import InputFile
from steadyscribe.storage import StorageOptions, filesystem_for, missing_credentials_advice, source_url, with_retries

log = logging.getLogger(__name__)

# Audio formats, and video containers whose audio track is transcribed.
DEFAULT_AUDIO_EXTENSIONS = frozenset(
    {"wav", "flac", "mp3", "ogg", "opus", "m4a", "aac", "wma", "webm", "mp4", "mkv", "mov"}
)

GLOB_CHARS = frozenset("*?[")

HASH_CHUNK_BYTES = 8 * 1024 * 1024


def has_audio_extension(path: str, extensions: Collection[str]) -> bool:
    name = posixpath.basename(path)
    # Dot files are never audio: macOS "._x.wav" resource forks, editors' temporaries.
    return not name.startswith(".") and name.rpartition(".")[2].lower() in extensions


def discover_inputs(
    inputs: Iterable[str],
    extensions: Collection[str] = DEFAULT_AUDIO_EXTENSIONS,
    storage_options: StorageOptions | None = None,
) -> list[InputFile]:
    """Every input file named by `inputs`, sorted by source and without duplicates.

    - A file path or URL is kept whatever its extension: the user named it.
    - A directory or prefix (local, s3://bucket/prefix/, gs://, az://, abfs://, memory://)
      is searched recursively; a glob is expanded (``**`` recurses). Both keep only
      files with one of `extensions` (case-insensitive) and skip dot files.
    - A path that does not exist is still returned (size None), so that it ends up as a
      `failed` row in the files table instead of stopping discovery for everything else.
      A glob that matches nothing, or an empty directory, contributes nothing: on a nightly
      run an empty drop folder is normal.

    Sources are absolute paths for local files and full URLs otherwise.
    `storage_options` go to every remote filesystem (see steadyscribe.storage).
    """
    extensions = {e.lower().lstrip(".") for e in extensions}
    found: dict[str, InputFile] = {}
    for spec in inputs:
        for item in _expand(spec, extensions, storage_options):
            found.setdefault(item.source, item)
    return [found[s] for s in sorted(found)]


def _expand(spec: str, extensions: Collection[str], storage_options: StorageOptions | None) -> list[InputFile]:
    fs, path = filesystem_for(spec, storage_options)
    # Instances and their cached listings outlive a run in a served flow: look afresh every time.
    fs.invalidate_cache()
    try:
        return _list(fs, path, spec, extensions)
    except Exception as error:
        # Wrong credentials, or a storage outage that outlasted the retries: this input gets a
        # `failed` row saying why (decode meets the same error) and the other inputs go on.
        log.warning(
            "cannot look at %s, it will be recorded as failed: %r%s", spec, error,
            f"; {advice}" if (advice := missing_credentials_advice(spec, error)) else "",
        )
        return [InputFile(source=source_url(fs, path), size=None)]


def _list(fs: AbstractFileSystem, path: str, spec: str, extensions: Collection[str]) -> list[InputFile]:
    """What `path` names: itself, or the files under it or matching it that have an audio extension."""
    if GLOB_CHARS & set(path):
        matches = with_retries(lambda: fs.glob(path, detail=True))
        files: dict[str, dict] = {}
        for match, info in matches.items():
            if info["type"] == "directory":
                files.update(with_retries(lambda: fs.find(match, detail=True)))
            else:
                files[match] = info
        if not files:
            log.warning("no files match %s", spec)
    elif with_retries(lambda: fs.isdir(path)):
        files = with_retries(lambda: fs.find(path, detail=True))
    elif with_retries(lambda: fs.exists(path)):
        info = with_retries(lambda: fs.info(path))
        return [InputFile(source=source_url(fs, path), size=info.get("size"))]
    else:
        log.warning("input does not exist, it will be recorded as failed: %s", spec)
        return [InputFile(source=source_url(fs, path), size=None)]
    return [
        InputFile(source=source_url(fs, p), size=info.get("size"))
        for p, info in files.items()
        if info["type"] == "file" and has_audio_extension(p, extensions)
    ]


def content_sha256(
    source: str, chunk: int = HASH_CHUNK_BYTES, storage_options: StorageOptions | None = None
) -> str:
    """Hex sha256 of a file's bytes, streamed in chunks (remote files are never held whole).

    A transient storage error restarts the hash from the first byte.
    """
    fs, path = filesystem_for(source, storage_options)

    def digest() -> str:
        sha = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while block := f.read(chunk):
                sha.update(block)
        return sha.hexdigest()

    return with_retries(digest)


@task(name="discover", retries=2, retry_delay_seconds=[2, 10], timeout_seconds=15 * 60)
def discover_task(inputs: list[str]) -> list[InputFile]:
    return discover_inputs(inputs)
