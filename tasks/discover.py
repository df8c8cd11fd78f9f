"""Turn the user's inputs (paths, directories, globs, fsspec URLs) into the list of files to transcribe.

Names are taken as given wherever they can be: a path that exists is never a pattern, a URL is
never a pattern, and a name found in a folder is never expanded again. What discovery leaves out
of a folder or a glob (another extension, a hidden file, a link loop, something that is not a
file) is counted by reason, so the run summary can say so (records.PassedOver).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from fsspec import AbstractFileSystem
from prefect import task

from steadyscribe.printable import printable
from steadyscribe.records import InputFile, PassedOver
from steadyscribe.storage import (
    StorageOptions, filesystem_for, missing_credentials_advice, protocol_of, source_url, with_retries,
)

log = logging.getLogger(__name__)

# Audio formats, and video containers whose audio track is transcribed.
DEFAULT_AUDIO_EXTENSIONS = frozenset(
    {"wav", "flac", "mp3", "ogg", "opus", "m4a", "aac", "wma", "webm", "mp4", "mkv", "mov"}
)

GLOB_CHARS = frozenset("*?[")

HASH_CHUNK_BYTES = 8 * 1024 * 1024

# Names kept per reason in the summary's "passed over" lines.
PASSED_OVER_EXAMPLES = 5

# Reasons discovery leaves an entry out.
NOT_AUDIO = "not an audio extension"
HIDDEN = "hidden (dot) file"
NOT_A_FILE = "not a regular file"
LINK_SEEN = "link to a folder already searched (a loop, or a second name for it)"
NAMED_TWICE = "named twice (another spelling of the same path, or overlapping inputs)"


def has_audio_extension(path: str, extensions: Collection[str]) -> bool:
    name = posixpath.basename(path)
    # Dot files are never audio: macOS "._x.wav" resource forks, editors' temporaries.
    return not name.startswith(".") and name.rpartition(".")[2].lower() in extensions


@dataclass
class Discovery:
    """The inputs found, sorted by source, and what was passed over, by reason."""

    files: list[InputFile]
    passed_over: list[PassedOver] = field(default_factory=list)


class _PassedOverLog:
    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        names = self.names.setdefault(reason, [])
        if len(names) < PASSED_OVER_EXAMPLES:
            names.append(name)

    def summary(self) -> list[PassedOver]:
        return [PassedOver(reason, count, tuple(self.names[reason])) for reason, count in self.counts.items()]


def discover_inputs(
    inputs: Iterable[str],
    extensions: Collection[str] = DEFAULT_AUDIO_EXTENSIONS,
    storage_options: StorageOptions | None = None,
) -> list[InputFile]:
    """Every input file named by `inputs`, sorted by source and without duplicates (see discover)."""
    return discover(inputs, extensions, storage_options).files


def discover(
    inputs: Iterable[str],
    extensions: Collection[str] = DEFAULT_AUDIO_EXTENSIONS,
    storage_options: StorageOptions | None = None,
) -> Discovery:
    """Every input file named by `inputs`, sorted by source and without duplicates.

    - A path or URL that names a file is kept whatever its extension: the user named it.
    - A path that exists is taken literally, whatever characters it holds (`take[1].flac`,
      `[2026] calls/`); only a path that names nothing is a glob (``**`` recurses). An http(s)
      URL is never a glob, and keeps its query string.
    - A directory or prefix (local, s3://bucket/prefix/, gs://, az://, abfs://, memory://)
      is searched recursively, local links followed (each folder once, so a loop ends); a
      folder or a glob keeps only files with one of `extensions` (case-insensitive) that are
      not dot files, and counts the rest in `passed_over`.
    - A path that does not exist is still returned (size None), so that it ends up as a
      `failed` row in the files table instead of stopping discovery for everything else.
      A glob that matches nothing, or an empty directory, contributes nothing: on a nightly
      run an empty drop folder is normal.

    Sources are absolute, normalised local paths (`in/a/../x.flac`, `in/./x.flac`, `in//x.flac`
    are all `/…/in/x.flac`; a link keeps its own name) and full URLs otherwise (http(s) URLs
    normalised as RFC 3986 says: scheme and host in lower case, no default port, no dot segments).
    `storage_options` go to every remote filesystem (see steadyscribe.storage).
    """
    extensions = {e.lower().lstrip(".") for e in extensions}
    passed = _PassedOverLog()
    found: dict[str, InputFile] = {}
    for spec in inputs:
        expanded = _expand(spec, extensions, storage_options, passed)
        for item in expanded:
            if item.source in found:
                passed.add(NAMED_TWICE, spec if len(expanded) == 1 else item.source)
            found.setdefault(item.source, item)
    return Discovery([found[s] for s in sorted(found)], passed.summary())


def local_path(spec: str) -> str:
    """An absolute, normalised local path for `spec` that names the same file.

    `..` is taken textually (as a shell's `cd` does) unless a link before it makes that name
    another file; then the folder part is resolved and the file keeps its name.
    """
    raw = os.path.join(os.getcwd(), os.path.expanduser(spec))
    normal = os.path.normpath(raw)
    if normal != raw and ".." in raw.split(os.sep) and os.path.lexists(raw):
        try:
            same = os.path.lexists(normal) and os.path.samestat(os.lstat(raw), os.lstat(normal))
        except OSError:
            same = False
        if not same:
            return os.path.join(os.path.realpath(os.path.dirname(raw)), os.path.basename(raw))
    return normal


def normalise_url(url: str) -> str:
    """An http(s) URL in RFC 3986's normal form; query and fragment kept as given. Other URLs unchanged."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return url
    host = parts.hostname or ""
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}[scheme]:
        netloc += f":{parts.port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    path = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), parts.path)
    path = _remove_dot_segments(path) or "/"
    return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: `.` and `..` segments of a URL path resolved; `//` kept (it is a name)."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def _expand(
    spec: str, extensions: Collection[str], storage_options: StorageOptions | None, passed: _PassedOverLog
) -> list[InputFile]:
    protocol = protocol_of(spec)
    if protocol == "file":
        path = local_path(spec.removeprefix("file://"))
        try:
            return _expand_local(path, spec, extensions, passed)
        except OSError as error:  # a folder removed or locked while it was searched
            log.warning("cannot look at %s, it will be recorded as failed: %r", printable(spec), error)
            return [InputFile(source=path, size=None)]
    if protocol in ("http", "https"):
        # A web address names one file, query string and all: never a glob, never a listing.
        url = normalise_url(spec)
        try:
            fs, path = filesystem_for(url, storage_options)
            size = with_retries(lambda: fs.info(path)).get("size")
        except Exception as error:
            log.warning("cannot look at %s, it will be recorded as failed: %r", printable(spec), error)
            size = None
        return [InputFile(source=url, size=size)]
    fs, path = filesystem_for(spec, storage_options)
    # Instances and their cached listings outlive a run in a served flow: look afresh every time.
    fs.invalidate_cache()
    try:
        return _list(fs, path, spec, extensions, passed)
    except Exception as error:
        # Wrong credentials, or a storage outage that outlasted the retries: this input gets a
        # `failed` row saying why (decode meets the same error) and the other inputs go on.
        log.warning(
            "cannot look at %s, it will be recorded as failed: %r%s", printable(spec), error,
            f"; {advice}" if (advice := missing_credentials_advice(spec, error)) else "",
        )
        return [InputFile(source=source_url(fs, path), size=None)]


def _expand_local(path: str, spec: str, extensions: Collection[str], passed: _PassedOverLog) -> list[InputFile]:
    """A local file or folder by its name, else the glob `path`, else a missing file."""
    if os.path.lexists(path):
        return _local_entry(path, extensions, passed, named=True)
    if GLOB_CHARS & set(path):
        # fsspec's glob does not follow links inside `**` (a loop would never end); a folder it
        # matches is searched below, links and all.
        fs, _ = filesystem_for(path)
        matches = sorted(with_retries(lambda: fs.glob(path)))
        if not matches:
            log.warning("no files match %s", printable(spec))
        return [item for match in matches for item in _local_entry(match, extensions, passed, named=False)]
    log.warning("input does not exist, it will be recorded as failed: %s", printable(spec))
    return [InputFile(source=path, size=None)]


def _local_entry(path: str, extensions: Collection[str], passed: _PassedOverLog, named: bool) -> list[InputFile]:
    """What one local name gives: a folder's files, a file, or (named by the user) a failed row.

    `named`: the user gave this very name, so a file is kept whatever its extension.
    """
    try:
        info = os.stat(path)  # follows links
    except OSError:  # a dangling link: its row says the file is not found
        return [InputFile(source=path, size=None)] if named or _is_audio(path, extensions, passed) else []
    if stat.S_ISDIR(info.st_mode):
        return _walk_local(path, extensions, passed)
    if not stat.S_ISREG(info.st_mode):
        passed.add(NOT_A_FILE, path)
        return []
    if named or _is_audio(path, extensions, passed):
        return [InputFile(source=path, size=info.st_size)]
    return []


def _is_audio(path: str, extensions: Collection[str], passed: _PassedOverLog) -> bool:
    """Whether a file found in a folder or by a glob is kept; if not, it is counted as passed over."""
    if has_audio_extension(path, extensions):
        return True
    passed.add(HIDDEN if posixpath.basename(path).startswith(".") else NOT_AUDIO, path)
    return False


def _walk_local(root: str, extensions: Collection[str], passed: _PassedOverLog) -> list[InputFile]:
    """Files under a local folder, following links; each folder is searched once, so a link loop ends."""
    found: list[InputFile] = []
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        folder_stat = os.stat(folder)
        if (folder_stat.st_dev, folder_stat.st_ino) in seen:
            passed.add(LINK_SEEN, folder)
            continue
        seen.add((folder_stat.st_dev, folder_stat.st_ino))
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():  # follows links
                        pending.append(entry.path)
                    else:
                        found += _local_entry(entry.path, extensions, passed, named=False)
        except OSError as error:
            passed.add(f"folder cannot be read ({error.strerror or type(error).__name__})", folder)
    return found


def _list(
    fs: AbstractFileSystem, path: str, spec: str, extensions: Collection[str], passed: _PassedOverLog
) -> list[InputFile]:
    """What `path` names on a remote store: itself, the files under it, or the files matching it as a glob."""
    if with_retries(lambda: fs.isdir(path)):
        files = with_retries(lambda: fs.find(path, detail=True))
    elif with_retries(lambda: fs.exists(path)):
        info = with_retries(lambda: fs.info(path))
        return [InputFile(source=source_url(fs, path), size=info.get("size"))]
    elif GLOB_CHARS & set(path):
        matches = with_retries(lambda: fs.glob(path, detail=True))
        files = {}
        for match, info in matches.items():
            if info["type"] == "directory":
                files.update(with_retries(lambda: fs.find(match, detail=True)))
            else:
                files[match] = info
        if not files:
            log.warning("no files match %s", printable(spec))
    else:
        log.warning("input does not exist, it will be recorded as failed: %s", printable(spec))
        return [InputFile(source=source_url(fs, path), size=None)]
    kept = []
    for p, info in files.items():
        if info["type"] != "file":
            passed.add(NOT_A_FILE, source_url(fs, p))
        elif _is_audio(source_url(fs, p), extensions, passed):
            kept.append(InputFile(source=source_url(fs, p), size=info.get("size")))
    return kept


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
def discover_task(inputs: list[str]) -> Discovery:
    return discover(inputs)
