"""The output tree as people and disks leave it: files that are not ours, orphans of killed commits, no space left.

Runs go through the real CLI in a subprocess, against the test session's Prefect server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import FIXTURES, files_rows, run_cli
from steadyscribe.schema import SCHEMAS
from steadyscribe.tasks.discover import content_sha256
from steadyscribe.tasks.write import ORPHAN_AGE_S

SPEECH = FIXTURES / "fast_speaker.flac"


# Mounts a tmpfs of each given size (PATH SIZE ... --), runs the command, copies $KEEP to
# $KEEP_COPY before the namespace and its mounts end, and exits with the command's status.
SMALL_DISKS_SCRIPT = """
while [ "$1" != "--" ]; do mount -t tmpfs -o "size=$2" tmpfs "$1" || exit 97; shift 2; done
shift
"$@"
status=$?
if [ -n "${KEEP:-}" ]; then cp -a "$KEEP/." "$KEEP_COPY/"; fi
exit $status
"""


def run_cli_on_small_disks(
    args: list[str], disks: dict[Path, str], env: dict[str, str] | None = None, keep: tuple[Path, Path] | None = None
) -> subprocess.CompletedProcess:
    """run_cli where each of `disks` (an existing empty folder) is a tmpfs of the given size ("12k"), in a
    mount namespace of its own: a user namespace needs no privilege. `keep` = (folder, copy): the
    folder's contents are copied out before the tmpfs goes away."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    mounts = [str(item) for path, size in disks.items() for item in (path, size)]
    wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SMALL_DISKS_SCRIPT, "sh", *mounts, "--"]
    kept = {"KEEP": str(keep[0]), "KEEP_COPY": str(keep[1])} if keep else {}
    result = run_cli(args, env={**(env or {}), **kept}, wrapper=wrapper)
    if result.returncode == 97 or "unshare failed" in result.stderr:
        pytest.skip(f"this machine allows no tmpfs in a user namespace: {result.stderr.strip()[-300:]}")
    return result


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


def part_names(output: Path, table: str) -> set[str]:
    return {path.name for path in (output / table).glob("**/*.parquet")}


@pytest.mark.slow
def test_a_full_output_disk_fails_the_file_with_a_summary_and_the_next_run_cleans_up_and_finishes(prefect_server, tmp_path):
    output, saved = tmp_path / "out", tmp_path / "saved"
    output.mkdir()
    saved.mkdir()
    # Three pages: the write check fits, and so does the words file (two pages), but not the segments after it.
    full = run_cli_on_small_disks([str(SPEECH), "--output", str(output)], {output: "12k"}, keep=(output, saved))
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stdout + full.stderr
    assert "files: 0 ok, 1 failed, 0 skipped" in full.stdout
    [failed_line] = [line for line in full.stdout.splitlines() if line.startswith("FAILED ")]
    assert f"FAILED {SPEECH}: could not commit to {output}: no space left on its device: OSError: " in failed_line
    assert failed_line.endswith("; free space there, then rerun") or "could not be written either" in failed_line
    rows = files_rows(saved) if (saved / "files").exists() else []
    if rows:  # the failed row fitted once the commit's own words were removed
        assert [(r["source"], r["status"]) for r in rows] == [(str(SPEECH), "failed")] and "no space left" in rows[0]["error"]
    else:
        assert "could not be written either" in failed_line
    # No orphans: every words or segments file belongs to a commit whose files rows were written.
    assert part_names(saved, "words") | part_names(saved, "segments") <= part_names(saved, "files")
    assert not list((saved / "_tmp").glob("*.tmp"))

    # What a killed commit leaves (its words without files rows, a temporary file) is removed by the next run.
    orphan = saved / "words" / "run_date=2026-01-01" / "20260101T000000Z-0badc0de-g00000.parquet"
    stale = saved / "_tmp" / "0123456789abcdef.tmp"
    orphan.parent.mkdir(parents=True)
    stale.parent.mkdir(exist_ok=True)
    word = {"run_id": "20260101T000000Z-0badc0de", "file_id": content_sha256(str(SPEECH)), "source": str(SPEECH),
            "segment_index": 0, "word_index": 0, "word": " orphaned", "start": 0.0, "end": 0.5, "probability": 0.9}
    pq.write_table(pa.Table.from_pylist([word], SCHEMAS["words"]), orphan)
    stale.write_bytes(b"PAR1")
    long_ago = time.time() - 2 * ORPHAN_AGE_S
    for path in (orphan, stale):
        os.utime(path, (long_ago, long_ago))

    rerun = run_cli([str(SPEECH), "--output", str(saved)])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "files: 1 ok, 0 failed, 0 skipped" in rerun.stdout
    assert not orphan.exists() and not stale.exists()
    ok = [r for r in files_rows(saved) if r["status"] == "ok"]
    assert len(ok) == 1 and len(readme_duckdb_words(saved)) == ok[0]["words_n"] > 0  # each word once


@pytest.mark.slow
def test_a_full_temporary_directory_is_reported_as_such(prefect_server, tmp_path):
    output, temp = tmp_path / "out", tmp_path / "tmp"
    temp.mkdir()
    # 64 KiB: the run's folders fit, the decoded audio (64 KiB a second) does not.
    result = run_cli_on_small_disks([str(SPEECH), "--output", str(output)], {temp: "64k"}, env={"TMPDIR": str(temp)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "please report it" not in result.stdout
    expected = f"{SPEECH}: could not be decoded: no space left in the temporary directory {temp} ("
    assert f"FAILED {expected}" in result.stdout
    [row] = files_rows(output)
    assert row["status"] == "failed" and row["error"].startswith(expected) and "TMPDIR" in row["error"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, where every write fails with ENOSPC")
def test_a_full_disk_under_the_log_file_or_the_summary_json_is_one_clear_line(prefect_server, tmp_path):
    output = tmp_path / "out"
    result = run_cli(
        [str(SPEECH), "--output", str(output), "--log-file", "/dev/full", "--summary-json", "/dev/full"],
        env={"PREFECT_LOGGING_LEVEL": "INFO"},  # lines for the log file to lose
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "files: 1 ok, 0 failed, 0 skipped" in result.stdout  # the run itself went through
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr
    assert result.stderr.count("steadyscribe: cannot write the log file /dev/full ([Errno 28] No space left on device)") == 1
    assert "steadyscribe: could not write the summary to /dev/full: [Errno 28] No space left on device" in result.stderr
