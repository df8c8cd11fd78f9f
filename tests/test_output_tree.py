"""The output tree as people and disks leave it: files that are not ours, orphans of killed commits, no space left.

Runs go through the real CLI in a subprocess, against the test session's Prefect server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES
from steadyscribe.tasks.write import open_table

ROOT = Path(__file__).resolve().parents[1]
SPEECH = FIXTURES / "fast_speaker.flac"


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`steadyscribe run ARGS` in its own process, reporting to the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "steadyscribe.cli", "run", *args], capture_output=True, text=True, env=environment, timeout=timeout_s
    )


def files_rows(output: Path) -> list[dict]:
    return open_table(str(output), "files").to_table().to_pylist()


def readme_duckdb_words(output: Path) -> list[tuple]:
    """The README's DuckDB query: each committed file's words."""
    import duckdb

    return duckdb.sql(f"""
        SELECT f.source, w.word, w.start, w."end", w.probability
        FROM read_parquet('{output}/words/**/*.parquet', hive_partitioning = true) AS w
        JOIN read_parquet('{output}/files/**/*.parquet', hive_partitioning = true) AS f USING (run_id, file_id)
        WHERE f.status = 'ok'
        ORDER BY f.source, w.segment_index, w.word_index
    """).fetchall()


def readme_polars_words(output: Path) -> list[tuple]:
    """The README's Polars query."""
    import polars as pl

    table = lambda name: pl.scan_parquet(f"{output}/{name}/**/*.parquet", hive_partitioning=True)  # noqa: E731
    words = table("words").join(
        table("files").filter(pl.col("status") == "ok").select("run_id", "file_id"), on=["run_id", "file_id"]
    ).collect()
    return sorted(words.select("source", "word", "start", "end").rows())


@pytest.mark.slow
def test_foreign_files_in_the_output_break_neither_runs_nor_the_documented_queries(prefect_server, tmp_path):
    output = tmp_path / "out"
    strays = {
        output / "files" / "README.txt": b"transcripts of the support line, see the wiki\n",
        output / "files" / "run_date=2026-01-01" / "notes.md": b"# notes\n",
        output / "words" / ".DS_Store": b"\x00\x00\x00\x01Bud1",
        output / "segments" / "run_date=2026-01-01" / "x.parquet.tmp": b"PAR1 half-copied",
        output / "segments" / "copy.parquet~": b"PAR1 an editor's backup",
    }
    for path, data in strays.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    first = run_cli([str(SPEECH), "--output", str(output)])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "files: 1 ok, 0 failed, 0 skipped" in first.stdout
    # The rerun reads the files table past the strays: the file is done, so it is skipped.
    rerun = run_cli([str(SPEECH), "--output", str(output)])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "files: 0 ok, 0 failed, 1 skipped" in rerun.stdout
    assert sorted(r["status"] for r in files_rows(output)) == ["ok", "skipped"]
    assert all(path.read_bytes() == data for path, data in strays.items())  # not ours: left alone

    duckdb_words, polars_words = readme_duckdb_words(output), readme_polars_words(output)
    assert len(duckdb_words) == [r["words_n"] for r in files_rows(output) if r["status"] == "ok"][0] > 0
    assert sorted((source, word, start, end) for source, word, start, end, _ in duckdb_words) == polars_words
