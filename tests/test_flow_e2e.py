"""The real pipeline end to end: the flow, the bundled tiny.en weights and the committed fixtures."""

from __future__ import annotations

import json
import shutil

import duckdb
import pyarrow.dataset as ds
import pytest

from helpers import FIXTURES
from steadyscribe.flows.transcribe import transcribe
from steadyscribe.metrics import boundary_errors, corpus_wer

pytestmark = pytest.mark.slow

SPEECH = sorted(p.stem for p in FIXTURES.glob("*.flac") if json.loads(p.with_suffix(".json").read_text())["words"])


def words_table(output) -> list[dict]:
    return ds.dataset(output / "words", partitioning="hive").to_table().to_pylist()


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("inputs")
    for flac in FIXTURES.glob("*.flac"):
        shutil.copy(flac, inputs)
    output = tmp_path_factory.mktemp("out")
    summary = transcribe(inputs=[str(inputs)], output=str(output), profile="cpu-small")
    return inputs, output, summary


def test_every_file_has_one_ok_row(first_run):
    inputs, output, summary = first_run
    files = duckdb.sql(
        f"SELECT source, status, engine, model, words_n, duration_s "
        f"FROM read_parquet('{output}/files/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert sorted(row[0].rsplit("/", 1)[-1] for row in files) == sorted(p.name for p in inputs.iterdir())
    assert {row[1] for row in files} == {"ok"}
    assert {(row[2], row[3]) for row in files} == {("whisper", "tiny.en")}
    assert summary.files_ok == len(files) and summary.files_failed == 0


def test_transcripts_are_accurate_and_times_land_on_speech(first_run):
    _, output, _ = first_run
    words = words_table(output)
    pairs, reference_words, hypothesis_words = [], [], []
    for name in SPEECH:
        truth = json.loads((FIXTURES / f"{name}.json").read_text())
        mine = sorted((w for w in words if w["source"].endswith(f"/{name}.flac")), key=lambda w: w["start"])
        pairs.append((truth["text"], " ".join(w["word"] for w in mine)))
        reference_words += [{**w, "key": name} for w in truth["words"]]
        hypothesis_words.append((truth["words"], mine))
    assert corpus_wer(pairs) <= 0.15
    within = sum(boundary_errors(ref, hyp).within_tolerance_rate * len(ref) for ref, hyp in hypothesis_words)
    assert within / len(reference_words) >= 0.85


def test_words_are_monotonic_and_inside_the_audio(first_run):
    _, output, _ = first_run
    durations = dict(
        duckdb.sql(
            f"SELECT file_id, duration_s FROM read_parquet('{output}/files/**/*.parquet', hive_partitioning = true)"
        ).fetchall()
    )
    by_file: dict[str, list[dict]] = {}
    for word in words_table(output):
        by_file.setdefault(word["file_id"], []).append(word)
    for file_id, words in by_file.items():
        words.sort(key=lambda w: (w["segment_index"], w["word_index"]))
        for before, after in zip(words, words[1:]):
            assert before["end"] <= after["start"] + 1e-6
        assert all(0 <= w["start"] < w["end"] <= durations[file_id] + 1e-6 for w in words)


def test_no_speech_file_yields_no_words(first_run):
    _, output, _ = first_run
    assert not [w for w in words_table(output) if w["source"].endswith("/no_speech.flac")]
    # Its one window was skipped as confidently silent, and the row says how much was.
    ((skipped_s, duration_s, words_dropped),) = duckdb.sql(
        f"SELECT skipped_s, duration_s, words_dropped FROM read_parquet('{output}/files/**/*.parquet', "
        f"hive_partitioning = true) WHERE source LIKE '%/no_speech.flac'"
    ).fetchall()
    assert skipped_s == pytest.approx(duration_s, abs=1e-3) and words_dropped == 0


def test_rerun_skips_everything_and_force_redoes_it(first_run):
    inputs, output, _ = first_run
    again = transcribe(inputs=[str(inputs)], output=str(output), profile="cpu-small")
    assert again.files_skipped == again.files_ok + again.files_skipped + again.files_failed
    words_before = len(words_table(output))
    forced = transcribe(inputs=[str(inputs / "clean_gb.flac")], output=str(output), profile="cpu-small", force=True)
    assert forced.files_ok == 1
    runs = duckdb.sql(
        f"SELECT run_id, count(*) FROM read_parquet('{output}/words/**/*.parquet', hive_partitioning = true) "
        f"WHERE source LIKE '%clean_gb.flac' GROUP BY run_id"
    ).fetchall()
    assert len(runs) == 2 and runs[0][1] == runs[1][1]
    assert len(words_table(output)) == words_before + runs[0][1]
