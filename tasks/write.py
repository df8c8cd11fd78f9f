"""Commit transcripts to the Parquet tables (files, segments, words) and optional sidecars.

Table contract (docs/tables.md): each commit writes one Parquet file per table, words and
segments first, then sidecars, then the `files` rows last. A `files` row therefore means
that file's words and segments are complete; words/segments rows whose (run_id, file_id)
has no `files` row come from a commit that was interrupted and must be ignored.
Every Parquet file appears whole under its final name or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import date, datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from pydantic import BaseModel

from prefect import task

from steadyscribe.profiles import Output as OutputOptions
from steadyscribe.records import DecodedAudio, FileOutcome, Plan, Status, StabilizationCounts, Transcript
from steadyscribe.schema import PARTITION_COLUMN, SCHEMAS, TableName, open_table, table_files
from steadyscribe.storage import (
    TEMP_DIR,
    StorageOptions,
    filesystem_for,
    is_disk_full,
    join,
    source_url,
    with_retries,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)

# A commit writes its parts one after another within seconds (minutes, with storage retries): a
# `words` or `segments` file this old that still has no `files` file of its part is an orphan.
ORPHAN_AGE_S = 3600.0

# Default rows per row group (profiles set output.row_group_size): small enough for readers
# to skip groups by file_id statistics, large enough to compress well.
ROW_GROUP_ROWS = 10_000

# Plan fields that change what is transcribed. Batch size and device are left out: the batch
# size adapts to memory at run time, and neither should make a rerun transcribe everything again.
OUTPUT_AFFECTING_PLAN_FIELDS = ("engine", "model", "quantization", "dtype", "language", "chunk_s", "decoding")

SidecarFormat = Literal["srt", "vtt", "json"]
SIDECAR_FORMATS: tuple[SidecarFormat, ...] = ("srt", "vtt", "json")

_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def settings_key(plan: Plan, extra: Mapping[str, Any] | None = None) -> str:
    """Hash of the model and the settings that affect the output, for idempotent reruns.

    `extra` adds output-affecting options the plan does not hold (e.g. a weights digest,
    word-timestamp options).
    """
    settings = {name: getattr(plan, name) for name in OUTPUT_AFFECTING_PLAN_FIELDS} | dict(extra or {})
    canonical = json.dumps(settings, sort_keys=True, default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A record as JSON-able data: a dataclass as its fields, a pydantic model (the option blocks) as its dump."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    return asdict(value) if is_dataclass(value) else str(value)


@dataclass(frozen=True)
class RunInfo:
    """What every row of one run shares."""

    run_id: str  # becomes part of file names: letters, digits, '.', '_', '-'
    run_date: date
    plan: Plan
    settings_key: str
    mode: str = "transcribe"  # or "align": word times for a given text (tasks/align.py)

    def __post_init__(self) -> None:
        if not _SAFE_RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run_id must be letters, digits, '.', '_' or '-': {self.run_id!r}")


@dataclass
class FileResult:
    """The outcome for one input file: one `files` row, and its segments and words when ok."""

    source: str
    status: Status
    file_id: str | None = None
    duration_s: float | None = None
    decode_s: float | None = None
    infer_s: float | None = None
    started_at: datetime | None = None  # timezone-aware
    finished_at: datetime | None = None
    error: str | None = None
    transcript: Transcript | None = None
    warnings: list[str] = field(default_factory=list)
    worker: str | None = None  # host:pid of the process that transcribed it
    duplicate_of: str | None = None  # status duplicate: the source whose row holds the transcription

    @classmethod
    def from_decoded(
        cls,
        decoded: DecodedAudio,
        transcript: Transcript | None = None,
        *,
        infer_s: float | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        error: str | None = None,
        worker: str | None = None,
    ) -> FileResult:
        """A decoded file's result; `error` (e.g. an inference failure) makes it failed."""
        status, reason = decoded.status, decoded.error
        if status == "ok" and (error is not None or transcript is None):
            status, reason = "failed", error or "no transcript produced"
        return cls(
            source=decoded.source,
            status=status,
            file_id=decoded.file_id,
            duration_s=decoded.duration_s,
            decode_s=decoded.decode_s,
            infer_s=infer_s,
            started_at=started_at,
            finished_at=finished_at,
            error=reason,
            transcript=transcript if status == "ok" else None,
            warnings=[*decoded.warnings, *(transcript.warnings if transcript and status == "ok" else [])],
            worker=worker,
            duplicate_of=decoded.duplicate_of,
        )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware, got naive {moment}")
    return moment.astimezone(timezone.utc)


def file_row(run: RunInfo, result: FileResult) -> dict[str, Any]:
    transcript = result.transcript if result.status == "ok" else None
    return {
        "run_id": run.run_id,
        "file_id": result.file_id,
        "source": result.source,
        "duration_s": result.duration_s,
        "status": result.status,
        "error": result.error,
        "warnings": result.warnings,
        "engine": run.plan.engine,
        "model": run.plan.model,
        "profile": run.plan.profile,
        "quantization": run.plan.quantization,
        "batch_size": transcript.batch_size if transcript else None,
        "language": transcript.language if transcript else None,
        "segments_n": len(transcript.segments) if transcript else None,
        "words_n": len(transcript.words) if transcript else None,
        "words_dropped": transcript.stabilization.words_dropped if transcript else None,
        "skipped_s": transcript.stabilization.skipped_ms / 1000 if transcript else None,
        "decode_s": result.decode_s,
        "infer_s": result.infer_s,
        "started_at": _utc(result.started_at),
        "finished_at": _utc(result.finished_at),
        "settings_key": run.settings_key,
        "worker": result.worker,
        "mode": run.mode,
        "aligned_share": _aligned_share(transcript) if transcript and run.mode == "align" else None,
        "duplicate_of": result.duplicate_of,
        "speech_without_text_s": _speech_without_text_s(transcript),
    }


def _speech_without_text_s(transcript: Transcript | None) -> float | None:
    """Seconds of VAD speech left without words (engines/speech_gaps.py); None where not measured (align mode)."""
    if transcript is None or transcript.stabilization.speech_without_text_ms is None:
        return None
    return transcript.stabilization.speech_without_text_ms / 1000


def _aligned_share(transcript: Transcript) -> float:
    """Confidently aligned words over the text's words (tasks/align.py counts both)."""
    counts = transcript.stabilization
    return (counts.words_aligned or 0) / counts.text_words if counts.text_words else 0.0


def _transcribed(results: Iterable[FileResult]) -> Iterable[tuple[FileResult, Transcript]]:
    for result in results:
        if result.status == "ok":
            if result.transcript is None or result.file_id is None:
                raise ValueError(f"an ok result needs a file_id and a transcript: {result.source}")
            yield result, result.transcript


def segment_rows(run: RunInfo, results: Iterable[FileResult]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run.run_id,
            "file_id": result.file_id,
            "source": result.source,
            "segment_index": i,
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "avg_logprob": s.avg_logprob,
            "no_speech_prob": s.no_speech_prob,
            "compression_ratio": s.compression_ratio,
            "language": transcript.language,
            "channel": s.channel,
            "speaker": s.speaker,
        }
        for result, transcript in _transcribed(results)
        for i, s in enumerate(transcript.segments)
    ]


def word_rows(run: RunInfo, results: Iterable[FileResult]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run.run_id,
            "file_id": result.file_id,
            "source": result.source,
            "segment_index": i,
            "word_index": j,
            "word": w.word,
            "start": w.start,
            "end": w.end,
            "probability": w.probability,
            "channel": s.channel,
            "speaker": s.speaker,
        }
        for result, transcript in _transcribed(results)
        for i, s in enumerate(transcript.segments)
        for j, w in enumerate(s.words)
    ]


def parquet_bytes(table: pa.Table, row_group_size: int = ROW_GROUP_ROWS) -> bytes:
    """The table as one complete Parquet file (zstd; schema version in key-value metadata)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def table_path(root: str, table: TableName, run_date: date, part: str) -> str:
    return join(root, table, f"{PARTITION_COLUMN}={run_date.isoformat()}", f"{part}.parquet")


def write_file_results(
    output: str,
    run: RunInfo,
    results: Sequence[FileResult],
    *,
    sidecar_formats: Iterable[SidecarFormat] = (),
    row_group_size: int = ROW_GROUP_ROWS,
    storage_options: StorageOptions | None = None,
    part: str | None = None,
) -> list[str]:
    """Commit a small group of files' results: words, segments, sidecars, then the files rows.

    Each table gets one new Parquet file named `part` (default <run_id>-<random>), so concurrent
    runs and repeated commits never overwrite one another; a commit repeated under the same
    `part` (a retried group) replaces the earlier one. A failure part-way leaves no partial
    file: a storage error (a full disk) removes the words and segments this commit wrote and
    raises CommitFailed; a killed process leaves at worst words/segments without their files
    rows, which readers ignore, which a rerun replaces (the file is transcribed again because it
    has no ok files row) and a later run removes (remove_orphan_parts).
    Returns what was written, in commit order, as URLs (plain paths for local output).
    """
    formats = tuple(sidecar_formats)
    if unknown := set(formats) - set(SIDECAR_FORMATS):
        raise ValueError(f"unknown sidecar formats {sorted(unknown)}; choose from {SIDECAR_FORMATS}")
    fs, root = filesystem_for(output, storage_options)
    temp_dir = join(root, TEMP_DIR)
    part = part or f"{run.run_id}-{uuid.uuid4().hex[:12]}"
    written: list[str] = []
    table_parts: list[str] = []  # this commit's words and segments files, named after `part` alone

    def put(path: str, data: bytes) -> None:
        with_retries(lambda: write_bytes_atomic(fs, path, data, temp_dir))
        written.append(source_url(fs, path))

    try:
        for table, rows in (("words", word_rows(run, results)), ("segments", segment_rows(run, results))):
            if rows:
                table_bytes = parquet_bytes(pa.Table.from_pylist(rows, SCHEMAS[table]), row_group_size)
                table_parts.append(table_path(root, table, run.run_date, part))
                put(table_parts[-1], table_bytes)
        for result, transcript in _transcribed(results):
            for fmt in formats:
                put(sidecar_path(root, run.run_date, result, fmt), render_sidecar(fmt, run, result, transcript).encode())
        files = pa.Table.from_pylist([file_row(run, r) for r in results], SCHEMAS["files"])
        if files.num_rows:
            put(table_path(root, "files", run.run_date, part), parquet_bytes(files, row_group_size))
    except Exception as error:
        _remove_uncommitted(fs, table_path(root, "files", run.run_date, part), table_parts)
        if isinstance(error, OSError):  # the storage refused; anything else is a bug, raised as it is
            raise CommitFailed(output, f"{type(error).__name__}: {error}", is_disk_full(error)) from error
        raise
    return written


class CommitFailed(Exception):
    """A commit to the output failed part-way; the words and segments it had written were removed.

    Says whether the output's device (or quota) was full: that crosses process boundaries
    (a Dask worker's exception reaches the flow pickled, without its cause).
    """

    def __init__(self, output: str, reason: str, disk_full: bool):
        super().__init__(output, reason, disk_full)
        self.output, self.reason, self.disk_full = output, reason, disk_full

    def __str__(self) -> str:
        full = "no space left on its device: " if self.disk_full else ""
        return f"could not commit to {self.output}: {full}{self.reason}"


def _remove_uncommitted(fs: AbstractFileSystem, files_part: str, table_parts: list[str]) -> None:
    """After a commit failed part-way (a full disk, say), remove the words and segments files it
    wrote before its `files` rows, so that they do not linger as orphans. Kept when an earlier
    commit of the same part (a group run again) stands: its `files` rows need them. Sidecars stay:
    their names are not the commit's own, and readers find files through the tables."""
    try:
        if fs.exists(files_part):
            return
        for path in table_parts:
            if fs.exists(path):
                fs.rm_file(path)
    except Exception as error:  # best effort: the next run removes what is left (remove_orphan_parts)
        log.warning("could not remove the parts of an unfinished commit %s: %r", table_parts, error)


def remove_orphan_parts(
    output: str, storage_options: StorageOptions | None = None, older_than_s: float = ORPHAN_AGE_S
) -> list[str]:
    """Remove what interrupted commits left behind: `words` and `segments` files with no `files` file
    of the same part name, and writers' temporary files under OUT/_tmp/, once older than
    `older_than_s` (a concurrent run's commit in progress is younger). Returns what was removed."""
    fs, root = filesystem_for(output, storage_options)
    fs.invalidate_cache()
    try:
        committed = {posixpath.basename(path) for path in table_files(fs, join(root, "files"))}
        candidates = [
            path for table in ("words", "segments") for path in table_files(fs, join(root, table))
            if posixpath.basename(path) not in committed
        ]
        temp_dir = join(root, TEMP_DIR)
        if fs.exists(temp_dir):
            candidates += [path for path in fs.find(temp_dir) if path.endswith(".tmp")]
    except Exception as error:  # housekeeping: a listing that fails now is tried again by the next run
        log.warning("could not look for orphans of interrupted commits in %s: %r", output, error)
        return []
    removed = []
    now = time.time()
    for path in candidates:
        try:
            if now - fs.modified(path).timestamp() >= older_than_s:
                fs.rm_file(path)
                removed.append(source_url(fs, path))
        except Exception as error:  # a backend without modification times, a file gone meanwhile: leave it
            log.warning("could not check or remove %s: %r", path, error)
    return removed


def write_file_result(
    output: str,
    run: RunInfo,
    result: FileResult,
    *,
    sidecar_formats: Iterable[SidecarFormat] = (),
    row_group_size: int = ROW_GROUP_ROWS,
    storage_options: StorageOptions | None = None,
) -> list[str]:
    """Commit one input file's rows (see write_file_results)."""
    return write_file_results(
        output,
        run,
        [result],
        sidecar_formats=sidecar_formats,
        row_group_size=row_group_size,
        storage_options=storage_options,
    )


def completed_file_keys(output: str, storage_options: StorageOptions | None = None) -> set[tuple[str, str]]:
    """(file_id, settings_key) of every file some run transcribed successfully into `output`.

    The flow skips an input whose content hash and settings are in this set (writing a
    `skipped` row for it) unless forced.
    """
    fs, root = filesystem_for(output, storage_options)
    files_dir = join(root, "files")

    def read() -> set[tuple[str, str]]:
        fs.invalidate_cache()
        if not fs.exists(files_dir):
            return set()
        ok = open_table(output, "files", storage_options).to_table(
            columns=["file_id", "settings_key"], filter=ds.field("status") == "ok"
        )
        return set(zip(ok["file_id"].to_pylist(), ok["settings_key"].to_pylist(), strict=True))

    return with_retries(read)


# ---- sidecars ----------------------------------------------------------------------------------


def sidecar_path(root: str, run_date: date, result: FileResult, fmt: SidecarFormat) -> str:
    stem = posixpath.basename(result.source.rstrip("/")).rpartition(".")[0] or "audio"
    return join(root, "sidecars", run_date.isoformat(), f"{stem}-{(result.file_id or '')[:12]}.{fmt}")


def _timestamp(seconds: float, decimal_separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_separator}{ms:03d}"


def _cues(transcript: Transcript, decimal_separator: str) -> list[tuple[str, str]]:
    """(timing line, text) per segment that has text, led by its speaker where channels were split;
    '-->' would end a cue's text early."""
    return [
        (
            f"{_timestamp(s.start, decimal_separator)} --> {_timestamp(s.end, decimal_separator)}",
            (f"{s.speaker}: " if s.speaker else "") + s.text.strip().replace("-->", "->"),
        )
        for s in transcript.segments
        if s.text.strip()
    ]


def to_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues, times as HH:MM:SS,mmm."""
    return "".join(f"{n}\n{timing}\n{text}\n\n" for n, (timing, text) in enumerate(_cues(transcript, ","), 1))


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: header, then cues with times as HH:MM:SS.mmm."""
    return "WEBVTT\n\n" + "".join(f"{timing}\n{text}\n\n" for timing, text in _cues(transcript, "."))


def to_json(run: RunInfo, result: FileResult, transcript: Transcript) -> str:
    return json.dumps(
        {
            "run_id": run.run_id,
            "file_id": result.file_id,
            "source": result.source,
            "duration_s": result.duration_s,
            "language": transcript.language,
            "segments": [asdict(s) for s in transcript.segments],
        },
        ensure_ascii=False,
    )


def render_sidecar(fmt: SidecarFormat, run: RunInfo, result: FileResult, transcript: Transcript) -> str:
    if fmt == "srt":
        return to_srt(transcript)
    if fmt == "vtt":
        return to_vtt(transcript)
    return to_json(run, result, transcript)


def _retry_unless_disk_full(task, task_run, state) -> bool:
    """Retry a failed commit, but not onto a full disk: it stays full for the seconds between tries."""
    try:
        state.result()
    except CommitFailed as error:
        return not error.disk_full
    except Exception:
        pass
    return True


# No timeout: the group task runs this in a worker thread, where Prefect cannot interrupt it (it only warns).
@task(name="write", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_unless_disk_full)
def write_task(
    output: str,
    run: RunInfo,
    decoded: list[DecodedAudio],
    transcript_paths: dict[str, str],
    infer_s: dict[str, float],
    started_at: datetime,
    options: OutputOptions,
    worker: str | None = None,
    part: str | None = None,
) -> list[FileOutcome]:
    """Commit one group of files (one Parquet file per table, named `part`) and say how each ended."""
    finished_at = datetime.now(timezone.utc)
    transcripts = {file_id: Transcript.load(path) for file_id, path in transcript_paths.items()}
    results = [
        FileResult.from_decoded(
            d, transcripts.get(d.file_id) if d.status == "ok" else None,
            infer_s=infer_s.get(d.file_id), started_at=started_at, finished_at=finished_at,
            worker=worker,
        )
        for d in decoded
    ]
    write_file_results(
        output, run, results, sidecar_formats=options.sidecars, row_group_size=options.row_group_size, part=part
    )
    return [
        FileOutcome(
            r.source, r.status, r.duration_s or 0.0, r.error, r.transcript.stabilization if r.transcript else StabilizationCounts(), r.warnings,
            processing_s=(r.decode_s or 0.0) + (r.infer_s or 0.0),
        )
        for r in results
    ]
