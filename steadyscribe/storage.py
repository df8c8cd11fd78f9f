"""Where bytes live: local paths and fsspec URLs (s3://, gs://, az://, abfs://, memory://).

Credentials are resolved the standard way for each backend, never by this module:
s3fs uses the AWS chain (AWS_* environment variables, ~/.aws config and profiles,
instance or container roles), gcsfs uses Google application-default credentials
(GOOGLE_APPLICATION_CREDENTIALS, gcloud), adlfs uses AZURE_STORAGE_* variables or
DefaultAzureCredential. fsspec's own configuration (FSSPEC_<PROTOCOL>_<OPTION>
variables, ~/.config/fsspec/*.json) is applied as well. Anything else (an endpoint,
a key pair taken from a Prefect block) is passed as ``storage_options``, the keyword
arguments of the backend's filesystem class.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

T = TypeVar("T")

StorageOptions = Mapping[str, Any]

# Which `pip install steadyscribe[...]` extra brings each protocol's fsspec backend.
EXTRA_FOR_PROTOCOL = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}

# Backends whose uploads become visible only once complete (a put, or a multipart
# upload that is committed at the end), so writing the final key once is atomic.
OBJECT_STORE_PROTOCOLS = frozenset({*EXTRA_FOR_PROTOCOL, "memory"})

# Scratch directory under an output root for temporary files and write probes. It sits outside
# every table directory: DuckDB's and Polars' globs do not skip "_" or "." names.
TEMP_DIR = "_tmp"

# errno values the storage backends use for throttling, server errors and dropped connections.
TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.EAGAIN,
        errno.EBUSY,  # s3fs: SlowDown, ServiceUnavailable, 503
        getattr(errno, "EREMOTEIO", None),  # s3fs: InternalError, 500
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
    )
    if code is not None
)

# Transient error classes of optional backends, matched by name so that none needs importing.
TRANSIENT_ERROR_NAMES = frozenset(
    {
        "EndpointConnectionError",  # botocore
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ResponseStreamingError",
        "ClientConnectionError",  # aiohttp
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServiceUnavailable",  # google.api_core
        "TooManyRequests",
        "InternalServerError",
        "ServiceRequestError",  # azure.core
        "ServiceResponseError",
    }
)


# Exceptions the cloud backends raise when they found no credentials at all, by class name (their
# packages are optional), and what to set for each protocol.
MISSING_CREDENTIALS_ERRORS = frozenset(
    {"NoCredentialsError", "DefaultCredentialsError", "ClientAuthenticationError", "CredentialUnavailableError"}
)
CREDENTIALS_TO_SET = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials, or an instance role)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or gcloud auth application-default login",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or gcloud auth application-default login",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_CONNECTION_STRING",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_CONNECTION_STRING",
}


def missing_credentials_advice(url: str, error: BaseException) -> str | None:
    """What to set when `error` says the storage of `url` found no credentials; None for other errors."""
    if not any(type(e).__name__ in MISSING_CREDENTIALS_ERRORS for e in _causes(error)):
        return None
    what = CREDENTIALS_TO_SET.get(protocol_of(url), "the credentials its fsspec backend reads")
    return (
        f"no credentials for {protocol_of(url)}:// were found; set {what} in the environment of the process that "
        "reads it (the worker's, for a deployment; see docs/operations.md, Credentials)"
    )


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


class StorageError(Exception):
    """A storage configuration problem the user must fix before a run can start."""


class MissingStorageExtra(StorageError, ImportError):
    """The fsspec backend for a URL's protocol is not installed."""


class OutputNotWritable(StorageError):
    """The output location cannot be written (missing bucket, credentials, permissions)."""


def protocol_of(url: str) -> str:
    """The URL's protocol ("file" for plain paths)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "file"


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_object_store(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in OBJECT_STORE_PROTOCOLS for p in protocols)


def filesystem_for(
    url: str, storage_options: StorageOptions | None = None
) -> tuple[AbstractFileSystem, str]:
    """The filesystem for a path or URL and the path within it.

    Raises MissingStorageExtra naming the extra to install when the backend is missing.
    """
    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        protocol = protocol_of(url)
        extra = EXTRA_FOR_PROTOCOL.get(protocol)
        hint = f"pip install 'steadyscribe[{extra}]'" if extra else f"install the fsspec backend for {protocol}://"
        raise MissingStorageExtra(f"cannot open {url}: {protocol}:// support is not installed; {hint}") from exc


def source_url(fs: AbstractFileSystem, path: str) -> str:
    """How a file is named in tables and logs: a plain path for local files, a URL otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def is_transient_io_error(exc: BaseException) -> bool:
    """Whether retrying the operation may succeed (throttling, 5xx, timeouts, dropped connections)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    return any(cls.__name__ in TRANSIENT_ERROR_NAMES for cls in type(exc).__mro__)


# errno values of a full disk or an exhausted quota: retrying does not help until someone frees space.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) says the device or the quota is full."""
    for _ in range(8):  # the chain is short; the bound guards against a cycle
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def no_space_in_temp_dir(temp_dir: str | os.PathLike, error: BaseException) -> str:
    """What to say when decoded audio or transcripts no longer fit in the temporary directory."""
    return (
        f"no space left in the temporary directory {temp_dir} ({error}); free space there, or point TMPDIR "
        "at a folder on a larger disk, then rerun"
    )


def with_retries(
    fn: Callable[[], T],
    attempts: int = 5,
    base_delay: float = 0.5,
    retry_on: Callable[[BaseException], bool] = is_transient_io_error,
    max_delay: float = 30.0,
) -> T:
    """Call fn until it succeeds, sleeping base_delay * 2**n (jittered) after each transient error.

    fn must be safe to repeat: whole reads, or writes of a whole object.
    Errors that retry_on rejects, and the last transient one, propagate.
    """
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not retry_on(exc):
                raise
            # Jitter keeps concurrent runs that were throttled together from retrying in lockstep.
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("transient storage error (attempt %d/%d), retrying in %.2fs: %r", attempt, attempts, delay, exc)
            time.sleep(delay)
            attempt += 1


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes, temp_dir: str) -> None:
    """Make `path` hold exactly `data`; readers see the old state or the whole new file, never a part.

    On object stores the final key is written once, whole. Elsewhere the bytes go to a
    temporary file in temp_dir (which must be on the same filesystem and outside every
    reader's glob) and are renamed into place.
    """
    if is_object_store(fs):
        fs.pipe_file(path, data)
        return
    temp = join(temp_dir, f"{uuid.uuid4().hex}.tmp")
    fs.makedirs(temp_dir, exist_ok=True)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    try:
        if is_local(fs):
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                # The data must be on disk before the rename makes it visible under its final name.
                os.fsync(f.fileno())
            os.replace(temp, path)
        else:
            fs.pipe_file(temp, data)
            fs.mv(temp, path)
    finally:
        if fs.exists(temp):
            fs.rm_file(temp)


def check_writable(output_url: str, storage_options: StorageOptions | None = None) -> None:
    """Fail fast, before any work, when the output location cannot be written.

    Writes and deletes a small probe under OUT/_tmp/ (outside every table).
    """
    fs, path = filesystem_for(output_url, storage_options)
    probe_dir = join(path, TEMP_DIR)
    probe = join(probe_dir, f"write-check-{uuid.uuid4().hex}")
    try:
        if is_local(fs):
            fs.makedirs(probe_dir, exist_ok=True)
        with_retries(lambda: fs.pipe_file(probe, b"steadyscribe write check\n"), attempts=3)
    except Exception as exc:
        advice = missing_credentials_advice(output_url, exc)
        raise OutputNotWritable(
            f"cannot write to output {output_url!r}: {type(exc).__name__}: {exc}. "
            + (f"{advice[0].upper()}{advice[1:]}." if advice else
               "Check that the directory or bucket exists and that the credentials allow writing.")
        ) from exc
    try:
        fs.rm_file(probe)
    except Exception as exc:  # write-only credentials: the probe stays in _tmp/, where readers never look
        log.warning("could not delete write probe %s: %r", probe, exc)
