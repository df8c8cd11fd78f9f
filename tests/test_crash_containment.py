"""A file that crashes or hangs the decoder fails alone; a crash in the engine fails only its
group; an 8-channel file splits into its channels.

One `steadyscribe run --channels split` (the real CLI, tiny.en) over a good recording, an
8-channel 48 kHz WAV (the channel split once segfaulted the run on it), and two files whose
decoding crashes with SIGSEGV or hangs. The faults come from tests/native_faults/sitecustomize.py,
loaded into every process of the run: had the run decoded in its own process, the crash would
have ended the run (exit -11) with no row at all.

A second run, one file per group, crashes the engine (SIGSEGV in the process that runs the model)
on its middle group: that group's file fails, the groups before and after it are transcribed, and
the summary is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, resampled_mono, run_cli, write_eight_channels
from steadyscribe import SAMPLE_RATE
from steadyscribe.schema import open_table

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parent / "native_faults"


def run_with_faults(inputs: Path, output: Path, summary: Path, *options: str) -> tuple:
    """`steadyscribe run` with tests/native_faults on its path: the process, the files and words rows, the summary."""
    done = run_cli([str(inputs), "--output", str(output), "--summary-json", str(summary), *options],
                   env={"PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}"})
    rows = open_table(str(output), "files").to_table().to_pylist()
    words = open_table(str(output), "words").to_table().to_pylist()
    return done, rows, words, json.loads(summary.read_text()) if summary.exists() else None


@pytest.fixture(scope="module")
def faulty_run(prefect_server, tmp_path_factory):
    inputs, output = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("out")
    summary = tmp_path_factory.mktemp("summary") / "summary.json"
    shutil.copy(FIXTURES / "real" / "r26_goforward.flac", inputs / "good.flac")
    write_eight_channels(inputs / "eight_channels.wav", resampled_mono(FIXTURES / "real" / "r01_jfk.flac")[: 4 * SAMPLE_RATE])
    shutil.copy(FIXTURES / "real" / "r13_libri_61.flac", inputs / "segfault.flac")
    shutil.copy(FIXTURES / "real" / "r15_ljspeech.flac", inputs / "hang.flac")
    return run_with_faults(inputs, output, summary, "--channels", "split")


def row_of(rows: list[dict], name: str) -> dict:
    [row] = [r for r in rows if r["source"].endswith(f"/{name}")]
    return row


def test_the_run_ends_with_one_row_per_input_and_its_summary(faulty_run):
    done, rows, _, summary = faulty_run
    assert done.returncode == 1, done.stdout + done.stderr
    names = sorted(r["source"].rsplit("/", 1)[-1] for r in rows)
    assert names == ["eight_channels.wav", "good.flac", "hang.flac", "segfault.flac"]
    assert (summary["files_ok"], summary["files_failed"]) == (2, 2)
    assert "files: 2 ok, 2 failed, 0 skipped" in done.stdout


def test_a_decoder_crash_fails_its_file_with_the_signal(faulty_run):
    row = row_of(faulty_run[1], "segfault.flac")
    assert row["status"] == "failed"
    assert "the decoder crashed (SIGSEGV) on this file" in row["error"]


def test_a_decoder_hang_fails_its_file(faulty_run):
    row = row_of(faulty_run[1], "hang.flac")
    assert row["status"] == "failed"
    assert "the decoder hung (it read and wrote nothing for 5 s) on this file" in row["error"]


def test_the_good_file_is_transcribed(faulty_run):
    _, rows, words, _ = faulty_run
    row = row_of(rows, "good.flac")
    assert row["status"] == "ok" and row["words_n"] > 0
    assert "forward" in " ".join(w["word"].lower() for w in words if w["source"] == row["source"])


def test_an_eight_channel_file_splits_into_its_channels(faulty_run):
    _, rows, words, _ = faulty_run
    row = row_of(rows, "eight_channels.wav")
    assert row["status"] == "ok", row["error"]
    assert row["duration_s"] == pytest.approx(4.0, abs=0.01)
    assert sum(f"channel {c} (ch{c}) is silent" in w for c in range(1, 8) for w in row["warnings"]) == 7
    said = [w for w in words if w["source"] == row["source"]]
    assert said and {w["channel"] for w in said} == {0}
    assert "americans" in " ".join(w["word"].lower() for w in said)  # "And so, my fellow Americans"


@pytest.fixture(scope="module")
def engine_crash_run(prefect_server, tmp_path_factory):
    inputs, output = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("out")
    summary = tmp_path_factory.mktemp("summary") / "summary.json"
    shutil.copy(FIXTURES / "real" / "r01_jfk.flac", inputs / "a_before.flac")
    shutil.copy(FIXTURES / "real" / "r13_libri_61.flac", inputs / "enginecrash.flac")
    shutil.copy(FIXTURES / "real" / "r26_goforward.flac", inputs / "z_after.flac")
    profile = tmp_path_factory.mktemp("profile") / "one-file-groups.yaml"
    profile.write_text("extends: cpu-small\nrunner: {files_per_group: 1}\n")
    return run_with_faults(inputs, output, summary, "--profile", str(profile))


def test_an_engine_crash_fails_only_its_group(engine_crash_run):
    done, rows, words, summary = engine_crash_run
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in rows) == ["a_before.flac", "enginecrash.flac", "z_after.flac"]
    crashed = row_of(rows, "enginecrash.flac")
    assert crashed["status"] == "failed"
    assert "the engine's process crashed (SIGSEGV) during inference" in crashed["error"]
    assert "the other groups went on" in crashed["error"]
    assert (summary["files_ok"], summary["files_failed"]) == (2, 1)
    assert "FAILED" in done.stdout and "enginecrash.flac" in done.stdout


def test_the_groups_around_an_engine_crash_are_transcribed(engine_crash_run):
    _, rows, words, _ = engine_crash_run
    # The group after the crash started a new engine process: its words are as good as the one's before.
    for name, said in (("a_before.flac", "americans"), ("z_after.flac", "forward")):
        row = row_of(rows, name)
        assert row["status"] == "ok" and row["words_n"] > 0, row["error"]
        assert said in " ".join(w["word"].lower() for w in words if w["source"] == row["source"])
