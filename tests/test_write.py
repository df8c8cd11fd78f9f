"""Writing the tables: layout, schema metadata, atomic commits, idempotence, sidecars, docs examples."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import posixpath
import re
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import steadyscribe.tasks.write
from steadyscribe import storage
from steadyscribe.records import DecodedAudio, DecodingOptions, Plan, Segment, StabilizationCounts, Transcript, Word
from steadyscribe.schema import SCHEMA_VERSION, SCHEMAS
from steadyscribe.storage import filesystem_for
from steadyscribe.tasks.discover import content_sha256, discover_inputs
from steadyscribe.tasks.write import (
    ORPHAN_AGE_S,
    CommitFailed,
    FileResult,
    RunInfo,
    completed_file_keys,
    open_table,
    remove_orphan_parts,
    settings_key,
    to_srt,
    to_vtt,
    write_file_result,
    write_file_results,
)

DOCS = Path(__file__).parent.parent / "docs" / "tables.md"
PLAN = Plan(engine="whisper", model="tiny.en", profile="cpu-small")
RUN_DATE = date(2026, 3, 14)
T0 = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


def make_run(run_id: str = "run-1", plan: Plan = PLAN, run_date: date = RUN_DATE) -> RunInfo:
    return RunInfo(run_id=run_id, run_date=run_date, plan=plan, settings_key=settings_key(plan))


def transcript(file_id: str, texts: list[str]) -> Transcript:
    segments = []
    t = 0.0
    for text in texts:
        words = []
        for w in text.split():
            words.append(Word(word=" " + w, start=t, end=t + 0.4, probability=0.3 if w == "three" else 0.9))
            t += 0.5
        segments.append(Segment(start=words[0].start, end=words[-1].end, text=" " + text, words=words,
                                avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.1))
    return Transcript(file_id=file_id, language="en", segments=segments, batch_size=4,
                      stabilization=StabilizationCounts(words_dropped=len(texts), skipped_ms=1500))


def ok_result(source: str, content: bytes, texts: list[str]) -> FileResult:
    file_id = hashlib.sha256(content).hexdigest()
    return FileResult.from_decoded(
        DecodedAudio(source=source, status="ok", file_id=file_id, duration_s=12.5, decode_s=0.3),
        transcript(file_id, texts),
        infer_s=1.5,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=2),
    )


def failed_result(source: str) -> FileResult:
    return FileResult.from_decoded(DecodedAudio(source=source, status="failed", error="No such file"))


def sample_results(prefix: str = "/data") -> list[FileResult]:
    return [
        ok_result(f"{prefix}/meeting.wav", b"meeting", ["hello world", "second segment here"]),
        ok_result(f"{prefix}/call.flac", b"call", ["one two three"]),
        failed_result(f"{prefix}/gone.wav"),
    ]


def read_words_duckdb(out: Path) -> list[tuple]:
    return duckdb.sql(
        f"""SELECT file_id, segment_index, word_index, word, run_date
            FROM read_parquet('{out}/words/**/*.parquet', hive_partitioning = true)
            ORDER BY ALL"""
    ).fetchall()


def test_local_layout_schema_and_readers(tmp_path):
    out = tmp_path / "out"
    run = make_run()
    written = [write_file_result(str(out), run, r) for r in sample_results()]

    # Words, then segments, then the files row, each in its table's run_date partition.
    tables = [[Path(p).parent.parent.name for p in commit] for commit in written]
    assert tables == [["words", "segments", "files"], ["words", "segments", "files"], ["files"]]
    for path in sum(written, []):
        assert re.fullmatch(r"run-1-[0-9a-f]{12}\.parquet", Path(path).name)
        assert Path(path).parent.name == "run_date=2026-03-14"
        meta = pq.read_metadata(path)
        assert meta.metadata[b"steadyscribe.schema_version"] == SCHEMA_VERSION.encode()
        assert meta.row_group(0).column(0).compression == "ZSTD"
    assert list((out / "_tmp").iterdir()) == []  # no temporary file left behind

    words = ds.dataset(out / "words", partitioning="hive").to_table()
    assert words.num_rows == 8
    assert words.schema.remove(words.schema.get_field_index("run_date")).equals(SCHEMAS["words"])
    files = open_table(str(out), "files").to_table()
    assert sorted(files["status"].to_pylist()) == ["failed", "ok", "ok"]
    assert files.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert files.schema.field("run_date").type == pa.date32()
    ok = files.filter(pa.compute.equal(files["status"], "ok")).to_pylist()
    assert {(r["segments_n"], r["words_n"], r["batch_size"], r["language"]) for r in ok} == {(2, 5, 4, "en"), (1, 3, 4, "en")}
    assert sorted((r["words_dropped"], r["skipped_s"]) for r in ok) == [(1, 1.5), (2, 1.5)]
    failed = files.filter(pa.compute.equal(files["status"], "failed")).to_pylist()[0]
    assert failed["file_id"] is None and failed["error"] == "No such file" and failed["source"] == "/data/gone.wav"
    assert failed["duration_s"] is None and {r["duration_s"] for r in ok} == {12.5}

    rows = read_words_duckdb(out)
    assert len(rows) == 8 and rows[0][4] == date(2026, 3, 14)


def test_group_commit_writes_one_file_per_table(tmp_path):
    written = write_file_results(str(tmp_path), make_run(), sample_results(), row_group_size=3)
    assert [Path(p).parent.parent.name for p in written] == ["words", "segments", "files"]
    assert open_table(str(tmp_path), "words").count_rows() == 8
    assert pq.read_metadata(written[0]).num_row_groups == 3


@pytest.fixture
def memory_output():
    """A fresh memory:// output (the memory filesystem is one global store per process)."""
    out = f"memory://out-{uuid.uuid4().hex[:12]}"
    yield out
    fs, path = filesystem_for(out)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_memory_roundtrip_with_duckdb_over_arrow(memory_output):
    out = memory_output
    for r in sample_results():
        write_file_result(out, make_run(), r)
    words = open_table(out, "words").to_table()
    segments = open_table(out, "segments").to_table()
    joined = duckdb.sql(
        'SELECT s.text, w.word FROM words w JOIN segments s USING (run_id, file_id, segment_index) ORDER BY w.start'
    ).fetchall()
    assert len(joined) == 8 == words.num_rows
    assert all(word in text for text, word in joined)
    assert segments.num_rows == 3


def test_s3_inputs_to_s3_tables(s3_server, s3_options):
    """Inputs discovered and hashed in one bucket, tables written to another and read back."""
    fs, _ = filesystem_for("s3://", s3_options)
    fs.mkdir("steadyscribe-in")
    fs.mkdir("steadyscribe-out")
    contents = {"steadyscribe-in/day1/a.wav": b"AAAA", "steadyscribe-in/day1/b.mp3": b"BBBBBB"}
    for key, data in contents.items():
        fs.pipe_file(key, data)

    inputs = discover_inputs(["s3://steadyscribe-in/day1/"], storage_options=s3_options)
    results = []
    for item in inputs:
        file_id = content_sha256(item.source, storage_options=s3_options)
        results.append(FileResult.from_decoded(
            DecodedAudio(source=item.source, status="ok", file_id=file_id, duration_s=1.0),
            transcript(file_id, [f"text of {item.source.rsplit('/', 1)[1]}"]),
            started_at=T0, finished_at=T0,
        ))
    out = "s3://steadyscribe-out/transcripts"
    storage.check_writable(out, s3_options)
    for r in results:
        write_file_result(out, make_run(), r, sidecar_formats=["srt", "vtt", "json"], storage_options=s3_options)

    files = open_table(out, "files", s3_options).to_table()
    assert sorted(files["file_id"].to_pylist()) == sorted(hashlib.sha256(d).hexdigest() for d in contents.values())
    # The plain pyarrow + s3fs way a data team would read it (docs/tables.md).
    words = ds.dataset("steadyscribe-out/transcripts/words", filesystem=fs, format="parquet", partitioning="hive").to_table()
    per_source = duckdb.sql(
        "SELECT f.source, count(*) FROM words w JOIN files f USING (run_id, file_id) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert per_source == [("s3://steadyscribe-in/day1/a.wav", 3), ("s3://steadyscribe-in/day1/b.mp3", 3)]
    fs.invalidate_cache()
    sidecars = sorted(p.rsplit("/", 1)[1] for p in fs.find("steadyscribe-out/transcripts/sidecars"))
    assert [s.rsplit(".", 1)[1] for s in sidecars] == ["json", "srt", "vtt"] * 2
    assert not fs.exists("steadyscribe-out/transcripts/_tmp") or fs.find("steadyscribe-out/transcripts/_tmp") == []
    assert completed_file_keys(out, s3_options) == {(r.file_id, make_run().settings_key) for r in results}


def test_s3_writes_retry_transient_errors(s3_bucket, s3_options, monkeypatch):
    fs, _ = filesystem_for(f"s3://{s3_bucket}", s3_options)  # the same cached instance the writer gets
    real_pipe = fs.pipe_file
    failures = [OSError(errno.EBUSY, "SlowDown"), ConnectionResetError("reset")]

    def flaky_pipe(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real_pipe(*args, **kwargs)

    # s3fs binds its sync methods per instance.
    monkeypatch.setattr(fs, "pipe_file", flaky_pipe)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    out = f"s3://{s3_bucket}/out"
    write_file_result(out, make_run(), sample_results()[0], storage_options=s3_options)
    assert failures == []
    assert open_table(out, "words", s3_options).count_rows() == 5


def test_interrupted_local_commit_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, second, _ = sample_results()
    write_file_result(str(out), make_run(), first)

    real_write = pq.write_table

    def crash_while_writing(table, where, **kwargs):
        real_write(table, where, **kwargs)
        if table.schema.metadata[b"steadyscribe.table"] == b"segments":
            raise KeyboardInterrupt("killed while writing segments")

    monkeypatch.setattr(pq, "write_table", crash_while_writing)
    with pytest.raises(KeyboardInterrupt):
        write_file_result(str(out), make_run("run-2"), second)
    monkeypatch.undo()

    # The words of the interrupted commit are complete but orphaned: no segments, no files row.
    assert sorted(p.name.split("-")[1] for p in out.glob("*/run_date=*/*.parquet")) == ["1"] * 3 + ["2"]
    assert completed_file_keys(str(out)) == {(first.file_id, make_run().settings_key)}
    assert len(read_words_duckdb(out)) == 8  # 5 committed + 3 orphaned, all readable
    committed = duckdb.sql(
        f"""SELECT count(*) FROM read_parquet('{out}/words/**/*.parquet', hive_partitioning = true) w
            JOIN read_parquet('{out}/files/**/*.parquet', hive_partitioning = true) f USING (run_id, file_id)
            WHERE f.status = 'ok'"""
    ).fetchall()
    assert committed == [(5,)]


def test_crash_between_temp_write_and_rename(tmp_path, monkeypatch):
    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(storage.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_file_result(str(tmp_path), make_run(), sample_results()[0])
    monkeypatch.undo()
    assert list(tmp_path.rglob("*.parquet")) == [] and list((tmp_path / "_tmp").iterdir()) == []
    assert open_table(str(tmp_path), "words").count_rows() == 0


def test_object_store_final_key_is_written_once_whole(memory_output, monkeypatch):
    out = memory_output
    fs, _ = filesystem_for(out)
    puts: list[tuple[str, bytes]] = []
    real_pipe = type(fs).pipe_file

    def record(self, path, value, **kwargs):
        puts.append((path, bytes(value)))
        return real_pipe(self, path, value, **kwargs)

    monkeypatch.setattr(type(fs), "pipe_file", record)
    write_file_result(out, make_run(), sample_results()[0])
    # One put per final key, of a complete Parquet file; no temporary keys.
    assert [p.split("/")[2] for p, _ in puts] == ["words", "segments", "files"]
    assert sorted(fs.find(out)) == sorted(p for p, _ in puts)
    for path, data in puts:
        assert fs.cat_file(path) == data and data[:4] == data[-4:] == b"PAR1"


def test_crash_on_object_store_leaves_earlier_tables_only(memory_output, monkeypatch):
    out = memory_output
    fs, _ = filesystem_for(out)
    real_pipe = type(fs).pipe_file

    def fail_files(self, path, value, **kwargs):
        if "/files/" in path:
            raise KeyboardInterrupt("killed")
        return real_pipe(self, path, value, **kwargs)

    monkeypatch.setattr(type(fs), "pipe_file", fail_files)
    with pytest.raises(KeyboardInterrupt):
        write_file_result(out, make_run(), sample_results()[0])
    monkeypatch.undo()
    assert completed_file_keys(out) == set()
    assert open_table(out, "words").count_rows() == 5


def simulate_flow(out: str, run: RunInfo, results: list[FileResult], force: bool = False) -> None:
    """What the flow does with completed_file_keys: skip what is done, write the rest."""
    done = set() if force else completed_file_keys(out)
    for r in results:
        if (r.file_id, run.settings_key) in done:
            r = FileResult(source=r.source, status="skipped", file_id=r.file_id)
        write_file_result(out, run, r)


def test_rerun_adds_only_skipped_rows(tmp_path):
    out = str(tmp_path)
    simulate_flow(out, make_run("run-1"), sample_results())
    simulate_flow(out, make_run("run-2"), sample_results())
    files = duckdb.sql(
        f"""SELECT run_id, status, count(*) FROM read_parquet('{out}/files/**/*.parquet', hive_partitioning = true)
            GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    # The missing input fails again (nothing to skip); the two transcribed ones are skipped.
    assert files == [("run-1", "failed", 1), ("run-1", "ok", 2), ("run-2", "failed", 1), ("run-2", "skipped", 2)]
    assert len(read_words_duckdb(tmp_path)) == 8

    # New output-affecting settings transcribe again; so does force.
    small = Plan(engine="whisper", model="small.en")
    assert settings_key(small) != settings_key(PLAN)
    simulate_flow(out, make_run("run-3", plan=small), sample_results())
    simulate_flow(out, make_run("run-4"), sample_results(), force=True)
    assert len(read_words_duckdb(tmp_path)) == 24
    assert len(completed_file_keys(out)) == 4


def test_concurrent_runs_never_overwrite_each_other(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    result = sample_results()[0]
    with ThreadPoolExecutor(4) as pool:
        commits = list(pool.map(lambda i: write_file_result(str(tmp_path), make_run(f"run-{i % 2}"), result), range(8)))
    paths = [p for commit in commits for p in commit]
    assert len(set(paths)) == len(paths) == 24
    assert open_table(str(tmp_path), "words").count_rows() == 40


def test_settings_key_ignores_batch_size_and_device():
    assert settings_key(PLAN) == settings_key(Plan(engine="whisper", model="tiny.en", batch_size=16, device="cuda"))
    assert settings_key(PLAN) != settings_key(PLAN, extra={"word_timestamps": "dtw-v2"})
    assert settings_key(PLAN) != settings_key(Plan(engine="whisper", model="tiny.en", language="de"))


def test_settings_key_changes_with_the_decoding_options():
    """A beam-5 run must not skip the files a beam-1 run transcribed."""
    beam5 = Plan(engine="whisper", model="tiny.en", decoding=DecodingOptions(beam_size=5))
    prompted = Plan(engine="whisper", model="tiny.en", decoding=DecodingOptions(initial_prompt="Minutes."))
    assert len({settings_key(PLAN), settings_key(beam5), settings_key(prompted)}) == 3
    assert settings_key(beam5) == settings_key(Plan(engine="whisper", model="tiny.en", decoding=DecodingOptions(beam_size=5)))


def test_result_and_run_validation(memory_output):
    decoded = DecodedAudio(source="/a.wav", status="ok", file_id="f" * 64)
    assert FileResult.from_decoded(decoded, None).status == "failed"
    crashed = FileResult.from_decoded(decoded, transcript("f" * 64, ["hi"]), error="CUDA out of memory")
    assert (crashed.status, crashed.error, crashed.transcript) == ("failed", "CUDA out of memory", None)
    with pytest.raises(ValueError, match="run_id"):
        make_run("../escape")
    naive = FileResult(source="/a.wav", status="failed", started_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        write_file_result(memory_output, make_run(), naive)
    with pytest.raises(ValueError, match="sidecar"):
        write_file_result(memory_output, make_run(), sample_results()[0], sidecar_formats=["txt"])


SIDECAR_TRANSCRIPT = Transcript(
    file_id="f",
    language="en",
    segments=[
        Segment(start=1.2344, end=3.5, text=" Hello there."),
        Segment(start=3.5, end=3.6, text="  "),
        Segment(start=3661.0015, end=3662.9999, text=" An hour --> later."),
    ],
)


def test_srt():
    assert to_srt(SIDECAR_TRANSCRIPT) == (
        "1\n00:00:01,234 --> 00:00:03,500\nHello there.\n\n"
        "2\n01:01:01,002 --> 01:01:03,000\nAn hour -> later.\n\n"
    )


def test_vtt():
    assert to_vtt(SIDECAR_TRANSCRIPT) == (
        "WEBVTT\n\n"
        "00:00:01.234 --> 00:00:03.500\nHello there.\n\n"
        "01:01:01.002 --> 01:01:03.000\nAn hour -> later.\n\n"
    )


def test_sidecars_are_written_before_the_files_row(tmp_path):
    result = ok_result("s3://in/talks/keynote.final.wav", b"keynote", ["hello world"])
    written = write_file_result(str(tmp_path), make_run(), result, sidecar_formats=["srt", "vtt", "json"])
    stem = f"keynote.final-{result.file_id[:12]}"
    assert [Path(p).name for p in written[2:5]] == [f"{stem}.srt", f"{stem}.vtt", f"{stem}.json"]
    assert [Path(p).parent.parent.name for p in written[:2] + written[5:]] == ["words", "segments", "files"]
    sidecars = tmp_path / "sidecars" / "2026-03-14"
    assert (sidecars / f"{stem}.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:00,900\nhello world")
    data = json.loads((sidecars / f"{stem}.json").read_text())
    assert data["file_id"] == result.file_id and data["segments"][0]["words"][1]["word"] == " world"


# ---- docs/tables.md: every example runs against tables written here ----------------------------


def docs_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.fixture
def docs_output(tmp_path, monkeypatch):
    """A realistic `out/`: two runs, a failure, skipped reruns, and an orphan from a killed commit."""
    out = tmp_path / "out"
    today = datetime.now(timezone.utc).date()
    simulate_flow(str(out), make_run("run-1", run_date=today - timedelta(days=1)), sample_results())
    simulate_flow(str(out), make_run("run-2", run_date=today), sample_results())
    orphan = ok_result("/data/orphan.wav", b"orphan", ["never committed"])
    write_file_results(str(out), make_run("run-2", run_date=today), [orphan])
    for files_part in (out / "files").glob("*/*.parquet"):
        if "orphan" in str(pq.read_table(files_part)["source"].to_pylist()):
            files_part.unlink()  # as if killed before the files row
    monkeypatch.chdir(tmp_path)
    return out


def test_docs_sql_examples_run(docs_output):
    # The speaker queries (titled `-- ...`) are tested on split channels in test_channels_e2e.py,
    # the one on duplicate rows in test_input_identity.py; here they must run on mixed transcripts too.
    blocks = [block for block in docs_blocks("sql") if not block.startswith("-- ")]
    speaker_blocks = [block for block in docs_blocks("sql") if block.startswith("-- ")]
    assert len(blocks) == 5 and len(speaker_blocks) == 4  # three on speakers, one on duplicate rows
    for block in speaker_blocks:
        duckdb.sql(block).fetchall()
    results = [duckdb.sql(block).fetchall() for block in blocks]
    words, transcripts, runs, failures, low_confidence = results
    assert len(words) == 8 and "/data/orphan.wav" not in {r[0] for r in words}
    assert transcripts == [("/data/call.flac", " one two three"), ("/data/meeting.wav", " hello world  second segment here")]
    assert [r[2:4] for r in runs] == [("failed", 1), ("ok", 2), ("failed", 1), ("skipped", 2)]
    assert len(failures) == 2 and low_confidence == [("/data/call.flac", 1.0, " three", 0.3)]


def test_docs_polars_example_runs(docs_output, capsys):
    [polars_block] = [b for b in docs_blocks("python") if "polars" in b]
    namespace: dict = {}
    exec(polars_block, namespace)
    assert namespace["words"].height == 8


def test_docs_object_storage_example_runs(s3_bucket, s3_options, capsys):
    for r in sample_results():
        write_file_result(f"s3://{s3_bucket}/steadyscribe", make_run(), r, storage_options=s3_options)
    [block] = [b for b in docs_blocks("python") if "s3fs" in b]
    block = block.replace("s3fs.S3FileSystem()", "s3fs.S3FileSystem(**s3_options)")
    block = block.replace("analytics/steadyscribe", f"{s3_bucket}/steadyscribe")
    exec(block, {"s3_options": s3_options})
    assert "/data/meeting.wav" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["local", "memory"])
def test_readers_skip_files_that_are_not_the_tables_parquet(where, tmp_path, memory_output):
    out = str(tmp_path / "out") if where == "local" else memory_output
    results = sample_results()
    write_file_results(out, make_run(), results)
    fs, root = filesystem_for(out)
    for stray in ("files/README.txt", "files/run_date=2026-03-14/notes.md", "words/.DS_Store",
                  "segments/run_date=2026-03-14/x.parquet.tmp", "words/_scratch/old.parquet", "words/.trash/old.parquet"):
        fs.makedirs(posixpath.dirname(f"{root}/{stray}"), exist_ok=True)
        fs.pipe_file(f"{root}/{stray}", b"not a table's part")
    assert open_table(out, "words").count_rows() == 8
    assert open_table(out, "segments").count_rows() == 3
    assert completed_file_keys(out) == {(r.file_id, make_run().settings_key) for r in results if r.status == "ok"}


def test_a_commit_onto_a_full_disk_removes_what_it_wrote(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = steadyscribe.tasks.write.write_bytes_atomic

    def full_at_segments(fs, path, data, temp_dir):
        if "/segments/" in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(fs, path, data, temp_dir)

    monkeypatch.setattr(steadyscribe.tasks.write, "write_bytes_atomic", full_at_segments)
    with pytest.raises(CommitFailed) as full:
        write_file_results(str(out), make_run(), sample_results(), part="run-1-g00000")
    assert full.value.disk_full and str(full.value).startswith(f"could not commit to {out}: no space left on its device: ")
    assert pickle.loads(pickle.dumps(full.value)).disk_full  # as a Dask worker's error reaches the flow
    assert list(out.rglob("*.parquet")) == []  # the words written before the segments are gone

    # A group run again over its own earlier commit: the words it replaced stay with the files rows that need them.
    monkeypatch.undo()
    write_file_results(str(out), make_run(), sample_results(), part="run-1-g00000")
    monkeypatch.setattr(steadyscribe.tasks.write, "write_bytes_atomic", full_at_segments)
    with pytest.raises(CommitFailed):
        write_file_results(str(out), make_run(), sample_results(), part="run-1-g00000")
    assert sorted(p.parent.parent.name for p in out.rglob("*.parquet")) == ["files", "segments", "words"]
    assert open_table(str(out), "words").count_rows() == 8


def test_the_next_run_removes_the_orphans_of_interrupted_commits(tmp_path):
    out = tmp_path / "out"
    written = [Path(p) for p in write_file_results(str(out), make_run(), sample_results())]
    words, segments = written[0], written[1]
    old_orphans = [words.with_name("run-0-killed.parquet"), segments.with_name("run-0-killed.parquet"), out / "_tmp" / "0a1b.tmp"]
    fresh_orphan = words.with_name("run-2-committing.parquet")  # a concurrent run between its words and its files
    for orphan, source in zip([*old_orphans, fresh_orphan], [words, segments, words, words]):
        orphan.write_bytes(source.read_bytes())
    long_ago = time.time() - 2 * ORPHAN_AGE_S
    for orphan in old_orphans:
        os.utime(orphan, (long_ago, long_ago))
    os.utime(words, (long_ago, long_ago))  # committed: old, but its files rows need it

    assert sorted(remove_orphan_parts(str(out))) == sorted(str(p) for p in old_orphans)
    assert all(p.exists() for p in [*written, fresh_orphan]) and not any(p.exists() for p in old_orphans)
    assert open_table(str(out), "words").count_rows() == 2 * 8  # the fresh orphan's rows too: readers join them away
    assert remove_orphan_parts(str(out)) == []
