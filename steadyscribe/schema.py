"""The three output tables (files, segments, words): Arrow schemas, on-storage layout, and reading them back.

docs/tables.md describes every column, the partitioning and the commit contract.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem

from steadyscribe.storage import StorageOptions, filesystem_for, join

# Bump when a column is removed, renamed or changes meaning; adding a nullable column is not a bump.
SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = "steadyscribe.schema_version"
TABLE_KEY = "steadyscribe.table"

TableName = Literal["files", "segments", "words"]
TABLES: tuple[TableName, ...] = ("files", "segments", "words")

# Hive-style directory partition: OUT/<table>/run_date=YYYY-MM-DD/<run_id>-<part>.parquet.
# The column lives in the path only, not inside the Parquet files.
PARTITION_COLUMN = "run_date"
PARTITIONING = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.date32())]), flavor="hive")

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _schema(table: TableName, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION, TABLE_KEY: table})


# Who spoke (profile audio.channels). Nullable: tables written before these columns existed lack them.
CHANNEL_FIELDS = [
    pa.field("channel", pa.int32()),  # the input channel the words were heard on; 0 when the channels were mixed
    pa.field("speaker", pa.string()),  # the channel's speaker name (audio.speakers, else ch0, ch1, ...); null when mixed
]

FILES_SCHEMA = _schema(
    "files",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("file_id", pa.string()),  # null only when the input could not be read at all
        pa.field("source", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("status", pa.string(), nullable=False),  # ok | failed | skipped | duplicate
        pa.field("error", pa.string()),
        # Whatever a reader of an `ok` row should know: truncated input, words kept against the filter.
        pa.field("warnings", pa.list_(pa.string())),
        pa.field("engine", pa.string()),
        pa.field("model", pa.string()),
        pa.field("profile", pa.string()),
        pa.field("quantization", pa.string()),
        pa.field("batch_size", pa.int32()),
        pa.field("language", pa.string()),
        pa.field("segments_n", pa.int32()),
        pa.field("words_n", pa.int32()),
        # Words the stabilization stage removed as hallucinations (VAD silence and weak model evidence).
        pa.field("words_dropped", pa.int32()),
        # Seconds left out of inference: windows the VAD judged, with confidence, to hold no speech.
        pa.field("skipped_s", pa.float64()),
        pa.field("decode_s", pa.float64()),
        pa.field("infer_s", pa.float64()),
        pa.field("started_at", UTC_TIMESTAMP),
        pa.field("finished_at", UTC_TIMESTAMP),
        pa.field("settings_key", pa.string(), nullable=False),
        pa.field("worker", pa.string()),  # host:pid that transcribed the file (null: skipped, or never reached a worker)
        pa.field("mode", pa.string()),  # transcribe | align (word times for a given text: `steadyscribe align`)
        # align mode: share of the text's words aligned with confidence (null when transcribed or failed).
        pa.field("aligned_share", pa.float64()),
        # status duplicate: the source whose `ok` row in the same run holds this content's transcription.
        pa.field("duplicate_of", pa.string()),
        # Seconds of VAD speech left without words even after decoding those stretches again (null unless ok).
        pa.field("speech_without_text_s", pa.float64()),
    ],
)

SEGMENTS_SCHEMA = _schema(
    "segments",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("avg_logprob", pa.float64()),
        pa.field("no_speech_prob", pa.float64()),
        pa.field("compression_ratio", pa.float64()),
        pa.field("language", pa.string()),
        *CHANNEL_FIELDS,
    ],
)

WORDS_SCHEMA = _schema(
    "words",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("word_index", pa.int32(), nullable=False),  # position within its segment
        pa.field("word", pa.string(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("probability", pa.float64()),
        *CHANNEL_FIELDS,
    ],
)

SCHEMAS: dict[TableName, pa.Schema] = {
    "files": FILES_SCHEMA,
    "segments": SEGMENTS_SCHEMA,
    "words": WORDS_SCHEMA,
}


def open_table(output: str, table: TableName, storage_options: StorageOptions | None = None) -> ds.Dataset:
    """One table as a pyarrow dataset, with `run_date` read from the path as a date.

    Only its Parquet files are read: anything else a person or a tool left in the table's
    directory (a README.txt, .DS_Store, an editor's backup) is ignored, as the documented
    `OUT/<table>/**/*.parquet` globs ignore it.
    """
    fs, root = filesystem_for(output, storage_options)
    directory = join(root, table)
    # fsspec reuses filesystem instances, and s3fs/gcsfs cache listings: a long-lived worker
    # would not see what other runs committed since it last looked.
    fs.invalidate_cache()
    schema = SCHEMAS[table].append(pa.field(PARTITION_COLUMN, pa.date32()))
    return ds.dataset(
        table_files(fs, directory), schema=schema, format="parquet", partitioning=PARTITIONING,
        partition_base_dir=directory, filesystem=fs,
    )


def table_files(fs: AbstractFileSystem, directory: str) -> list[str]:
    """The Parquet files under a table's directory, skipping names that start with "." or "_"
    (hidden files, writers' scratch) anywhere below it, as pyarrow's own discovery does."""
    if not fs.exists(directory):
        return []
    found = fs.find(directory)
    prefix = directory.rstrip("/") + "/"
    return sorted(
        path for path in found
        if path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in path.removeprefix(prefix).split("/"))
    )
