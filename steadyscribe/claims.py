"""Claims: each recording is transcribed once per output and settings, also by runs that overlap.

A recording is its content (`file_id`, the sha256 of its bytes). Before a group spends inference
on a decoded file, it claims (file_id, settings_key) in the output:

    OUT/_claims/<settings_key>/<file_id>/<attempt>.json

A claim file is created only if absent (a hard link of a complete temporary file on local disk;
a conditional PUT, `If-None-Match: *`, on S3), so of two runs that reach one recording at the
same time exactly one creates it. It names its run, the source it was made for and the process
holding it (host, pid namespace, pid, that process's start time), and it expires unless renewed:
the group renews its claims while it works. After the group commits its rows, a claim whose file ended
`ok` is marked committed and stays as the record that the key is done; any other is deleted.

What a group does with a decoded file, by the latest claim for its key:
- none, or a claim that is free (its holder is dead or its lease ran out, or it is committed but
  the `files` table holds no `ok` row for it, or this run is forced past committed work): it creates
  the next attempt and transcribes the file;
- held or committed by this run for another source: the file is a copy (or another name) of a
  recording this run transcribes: status `duplicate`, `duplicate_of` that source;
- held by a live process of another run: status `skipped`, its warning names that run;
- committed by another run whose `ok` row is in the table: status `skipped` (already transcribed).

Claims only coordinate: the `files` table stays the truth, and a committed claim is trusted only
when its `ok` row is there.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import psutil
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem

from steadyscribe.records import DecodedAudio, FileOutcome
from steadyscribe.schema import open_table
from steadyscribe.storage import (
    TEMP_DIR,
    StorageOptions,
    filesystem_for,
    is_local,
    join,
    with_retries,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)

CLAIMS_DIR = "_claims"

# A claim not renewed for this long is free: its holder is taken for dead. Renewed well within it.
LEASE_S = 600.0
RENEW_EVERY_S = 60.0

HELD, COMMITTED = "held", "committed"

# Claims created by another run between our look and our create, before a file is left to the next run.
MAX_CLAIM_TRIES = 10


@dataclass(frozen=True)
class Claim:
    """One claim file's content."""

    run_id: str
    source: str
    host: str
    pid: int
    process_started: float  # the holder's start time (epoch s): a reused pid is another process
    claimed_at: str  # UTC, ISO 8601
    expires_at: float  # epoch s
    state: str = HELD
    # The holder's pid namespace: containers that share a host name (host networking) do not share pids.
    pid_namespace: int = 0

    @property
    def worker(self) -> str:
        return f"{self.host}:{self.pid}"

    def holder_alive(self, now: float) -> bool:
        """Whether the process that holds the claim may still be working on it.

        On this host and in this pid namespace the process table says; elsewhere only the lease can.
        """
        if now >= self.expires_at:
            return False
        if self.host != socket.gethostname() or self.pid_namespace != pid_namespace():
            return True
        if self.pid == os.getpid():
            return True
        try:
            return abs(psutil.Process(self.pid).create_time() - self.process_started) < 1.0
        except psutil.Error:
            return False


def _own_start_time() -> float:
    return psutil.Process(os.getpid()).create_time()


def pid_namespace() -> int:
    """This process's pid namespace (0 where the system does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def claim_dir(root: str, settings_key: str, file_id: str) -> str:
    return join(root, CLAIMS_DIR, settings_key, file_id)


def attempt_path(directory: str, attempt: int) -> str:
    return join(directory, f"{attempt:06d}.json")


def create_exclusive(fs: AbstractFileSystem, path: str, data: bytes, temp_dir: str) -> bool:
    """Write `path` whole if nothing is there yet; False if something is. Atomic on local disk and S3."""
    if is_local(fs):
        os.makedirs(temp_dir, exist_ok=True)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        temp = join(temp_dir, f"{uuid.uuid4().hex}.claim")
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)  # fails if `path` exists; never shows a partial file
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
    try:
        # s3fs: a PUT with If-None-Match: *, which S3 refuses with 412 when the key exists.
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False


def latest_claim(fs: AbstractFileSystem, directory: str) -> tuple[int, Claim] | None:
    """The highest attempt under `directory` and its claim, or None when there is none."""
    fs.invalidate_cache(directory)
    try:
        names = [posixpath.basename(p) for p in fs.ls(directory, detail=False)]
    except FileNotFoundError:
        return None
    attempts = sorted(int(n.removesuffix(".json")) for n in names if n.removesuffix(".json").isdigit())
    for attempt in reversed(attempts):
        try:
            content = fs.cat_file(attempt_path(directory, attempt))
        except FileNotFoundError:  # released while we looked: an older attempt may still stand
            continue
        try:
            return attempt, Claim(**json.loads(content))
        except (ValueError, TypeError):  # not a claim this code wrote: it holds nothing
            return attempt, Claim("", "", "", 0, 0.0, "", 0.0)
    return None


class GroupClaims:
    """The claims of one group of files: made after decoding, renewed while it works, settled after its commit."""

    def __init__(
        self,
        output: str,
        run_id: str,
        settings_key: str,
        force: bool = False,
        storage_options: StorageOptions | None = None,
    ):
        self.fs, self.root = filesystem_for(output, storage_options)
        self.output, self.storage_options = output, storage_options
        self.run_id, self.settings_key, self.force = run_id, settings_key, force
        self.held: dict[str, tuple[str, int]] = {}  # file_id → (source, attempt)
        self._committed_elsewhere: frozenset[str] | None = None  # read once, when first needed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._process_started = _own_start_time()

    def resolve(self, decoded: Sequence[DecodedAudio]) -> list[DecodedAudio]:
        """Each decoded file claimed for this group, or turned into a `duplicate` or `skipped` record."""
        resolved = [self._resolve(d) if d.status == "ok" and d.file_id else d for d in decoded]
        if self.held and self._renewer is None:
            self._renewer = threading.Thread(target=self._renew_until_stopped, name="claims-renewer", daemon=True)
            self._renewer.start()
        return resolved

    def _resolve(self, item: DecodedAudio) -> DecodedAudio:
        assert item.file_id is not None
        directory = claim_dir(self.root, self.settings_key, item.file_id)
        for _ in range(MAX_CLAIM_TRIES):
            current = with_retries(lambda: latest_claim(self.fs, directory))
            attempt = 0 if current is None else current[0] + 1
            if current is not None:
                decided = self._decide(item, current[1])
                if decided is not None:
                    return decided
                if current[1].run_id == self.run_id and current[1].source == item.source:
                    attempt = current[0]  # this run's own claim, left by a lost try of this group: take it back
                    self._write(directory, attempt, item.source, overwrite=True)
                    self.held[item.file_id] = (item.source, attempt)
                    return item
            if self._write(directory, attempt, item.source, overwrite=False):
                self.held[item.file_id] = (item.source, attempt)
                return item
            # Another run created that attempt first: look again at what it holds.
        return replace(item, status="skipped", warnings=[*item.warnings, (
            f"not transcribed: other runs kept taking its claim ({MAX_CLAIM_TRIES} tries); the next run transcribes it"
        )])

    def _decide(self, item: DecodedAudio, claim: Claim) -> DecodedAudio | None:
        """What an existing claim makes of `item`; None when the claim is free to take."""
        alive = claim.state == HELD and claim.holder_alive(time.time())
        if claim.run_id == self.run_id:
            if claim.source != item.source and (alive or claim.state == COMMITTED):
                return replace(item, status="duplicate", duplicate_of=claim.source)
            return None
        if alive:
            return replace(item, status="skipped", warnings=[*item.warnings, (
                f"being transcribed by run {claim.run_id} (from {claim.source}, worker {claim.worker}, "
                f"claimed {claim.claimed_at}) into this output at the same time: that run's row holds the "
                "transcription; if it fails, the next run transcribes this file"
            )])
        if self.force:
            return None
        # Committed, or its holder died: the table says whether that run's `ok` row is in.
        if item.file_id in self.committed_elsewhere():
            return replace(item, status="skipped")
        return None

    def committed_elsewhere(self) -> frozenset[str]:
        """file_ids of `ok` rows with these settings by other runs, read from the table once."""
        if self._committed_elsewhere is None:
            self._committed_elsewhere = with_retries(self._read_committed)
        return self._committed_elsewhere

    def _read_committed(self) -> frozenset[str]:
        self.fs.invalidate_cache()
        if not self.fs.exists(join(self.root, "files")):
            return frozenset()
        condition = (ds.field("status") == "ok") & (ds.field("settings_key") == self.settings_key)
        rows = open_table(self.output, "files", self.storage_options).to_table(columns=["file_id", "run_id"], filter=condition)
        pairs = zip(rows["file_id"].to_pylist(), rows["run_id"].to_pylist(), strict=True)
        return frozenset(file_id for file_id, run_id in pairs if run_id != self.run_id)

    def _claim_bytes(self, source: str, state: str = HELD) -> bytes:
        now = time.time()
        claim = Claim(
            run_id=self.run_id,
            source=source,
            host=socket.gethostname(),
            pid=os.getpid(),
            process_started=self._process_started,
            claimed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            expires_at=now + LEASE_S,
            state=state,
            pid_namespace=pid_namespace(),
        )
        return json.dumps(asdict(claim)).encode()

    def _write(self, directory: str, attempt: int, source: str, overwrite: bool, state: str = HELD) -> bool:
        path, data = attempt_path(directory, attempt), self._claim_bytes(source, state)
        temp_dir = join(self.root, TEMP_DIR)
        if overwrite:  # only ever a claim this run holds
            with_retries(lambda: write_bytes_atomic(self.fs, path, data, temp_dir))
            return True
        return with_retries(lambda: create_exclusive(self.fs, path, data, temp_dir))

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            with self._lock:
                for file_id, (source, attempt) in list(self.held.items()):
                    directory = claim_dir(self.root, self.settings_key, file_id)
                    try:
                        self._write(directory, attempt, source, overwrite=True)
                    except Exception as error:  # the lease outlasts a few failed renewals
                        log.warning("could not renew the claim on %s: %r", source, error)

    def settle(self, outcomes: Sequence[FileOutcome]) -> None:
        """After the group's commit: claims of files now `ok` are marked committed, the others released."""
        ok = {o.source for o in outcomes if o.status == "ok"}
        self._stop.set()
        with self._lock:
            for file_id, (source, attempt) in list(self.held.items()):
                if source in ok:
                    directory = claim_dir(self.root, self.settings_key, file_id)
                    try:
                        self._write(directory, attempt, source, overwrite=True, state=COMMITTED)
                        self._remove_older(directory, attempt)
                    except Exception as error:
                        # The rows are committed: a claim left held dies with this process, and the
                        # table's `ok` row then tells other runs the file is done.
                        log.warning("could not mark the claim on %s committed: %r", source, error)
                    del self.held[file_id]
        self.release()

    def _remove_older(self, directory: str, attempt: int) -> None:
        """Attempts before the committed one are history: remove them (best effort; only the latest counts)."""
        try:
            self.fs.invalidate_cache(directory)
            names = [posixpath.basename(p) for p in self.fs.ls(directory, detail=False)]
            for name in names:
                stem = name.removesuffix(".json")
                if stem.isdigit() and int(stem) < attempt:
                    self.fs.rm_file(join(directory, name))
        except Exception as error:
            log.warning("could not remove old claims under %s: %r", directory, error)

    def release(self) -> None:
        """Delete the claims still held (the group failed, was cancelled, or its files did not end ok)."""
        self._stop.set()
        with self._lock:
            for file_id, (source, attempt) in list(self.held.items()):
                try:
                    self.fs.rm_file(attempt_path(claim_dir(self.root, self.settings_key, file_id), attempt))
                except FileNotFoundError:
                    pass
                except Exception as error:  # its lease runs out instead
                    log.warning("could not release the claim on %s: %r", source, error)
                del self.held[file_id]

