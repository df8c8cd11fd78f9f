"""Chaos: runs killed at random points (SIGKILL or SIGTERM), then a run to completion.

The real CLI, with its own temporary Prefect server, over a mixed folder: recordings, two
truncated files, an 8-channel file (channels split), and a file named on the command line that
is deleted while each run goes on. Groups of two files, so that kills land between commits.
Signals, and kill times (a random time, or just after a commit) come from a seeded generator.
After each kill no process of the run may be alive 15 s later; after the final run every input
has exactly one final row (the rows of the run that completed, as docs/tables.md's "latest
committed row" reads them), no scratch folder is left, and the README's join gives each word once.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from helpers import (
    FIXTURES, ROOT, cut_at_packet_boundary, encode, resampled_mono, session_processes, wait_until, write_eight_channels,
)
from steadyscribe import SAMPLE_RATE
from steadyscribe.schema import open_table

SEED = 29
KILLS = 3
KILL_AFTER_S = (2.0, 30.0)
# Generous: a run on two busy cores loads the model and transcribes seven short files.
RUN_TIMEOUT_S = 240


def committed(output: Path) -> int:
    """How many `files` Parquet files are committed under `output` (one per group)."""
    return len(list((output / "files").glob("**/*.parquet")))


def readme_join(output: Path) -> list[tuple]:
    """The README's DuckDB query over `output`."""
    readme = (ROOT / "README.md").read_text()
    [sql] = [block for block in re.findall(r"```sql\n(.*?)```", readme, re.S) if block.startswith("-- duckdb\n")]
    return duckdb.sql(sql.replace("'out/", f"'{output}/")).fetchall()


@pytest.mark.slow
def test_killed_runs_leave_nothing_behind_and_the_rerun_completes(tmp_path):
    inputs, output, temp = tmp_path / "inputs", tmp_path / "out", tmp_path / "tmp"
    for folder in (inputs, temp):
        folder.mkdir()
    def clip(name: str, seconds: float = 3.0):
        return resampled_mono(FIXTURES / "real" / f"{name}.flac")[: int(seconds * SAMPLE_RATE)]

    for name in ("r26_goforward", "r13_libri_61", "r15_ljspeech"):
        encode(inputs / f"{name}.flac", clip(name))
    cut_at_packet_boundary(encode(tmp_path / "whole.flac", clip("r09_librivox_austen", 6.0)), inputs / "truncated.flac")
    whole_wav = encode(tmp_path / "whole.wav", clip("r05_mfa_cold"), codec="pcm_s16le").read_bytes()
    (inputs / "truncated.wav").write_bytes(whole_wav[: len(whole_wav) // 2])
    write_eight_channels(inputs / "eight_channels.wav", clip("r01_jfk", 4.0))
    vanishing = tmp_path / "vanishing.flac"
    vanishing_bytes = encode(tmp_path / "r04.flac", clip("r04_mfa_acoustic")).read_bytes()
    profile = tmp_path / "chaos.yaml"
    profile.write_text("extends: cpu-small\nrunner: {files_per_group: 2}\n")
    summary = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "steadyscribe.app.cli", "run", str(inputs), str(vanishing), "--output", str(output),
        "--profile", str(profile), "--channels", "split", "--summary-json", str(summary),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TMPDIR=str(temp), PYTHONPATH=str(ROOT))
    rng = random.Random(SEED)

    def start(vanish_after_s: float) -> subprocess.Popen:
        vanishing.write_bytes(vanishing_bytes)
        log = (tmp_path / "runs.log").open("a")
        run = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        vanish = threading.Timer(vanish_after_s, vanishing.unlink, kwargs={"missing_ok": True})
        vanish.daemon = True
        vanish.start()
        return run

    killed_with_children = 0
    for _ in range(KILLS):
        how, after_commit = rng.choice([signal.SIGKILL, signal.SIGTERM]), rng.random() < 0.5
        kill_after_s = rng.uniform(*KILL_AFTER_S)
        commits = committed(output)
        run = start(vanish_after_s=rng.uniform(0, kill_after_s))
        # At a random time, or just after the run's first commit (a random fraction of a second).
        deadline = time.monotonic() + (RUN_TIMEOUT_S if after_commit else kill_after_s)
        while run.poll() is None and time.monotonic() < deadline and not (after_commit and committed(output) > commits):
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1) if after_commit else 0)
        if run.poll() is None:
            killed_with_children += len(session_processes(run.pid)) > 1
            run.send_signal(how)
            run.wait(timeout=60)
        assert wait_until(lambda: not session_processes(run.pid), timeout_s=15), (how, session_processes(run.pid))
    assert killed_with_children  # a kill found the run's server and children up

    run = start(vanish_after_s=rng.uniform(0, 20))
    assert run.wait(timeout=RUN_TIMEOUT_S) in (0, 1), (tmp_path / "runs.log").read_text()[-4000:]
    assert wait_until(lambda: not session_processes(run.pid), timeout_s=15)

    final_run = json.loads(summary.read_text())["run_id"]
    rows = open_table(str(output), "files").to_table().to_pylist()
    final = [r for r in rows if r["run_id"] == final_run]
    assert sorted(r["source"] for r in final) == sorted([*map(str, inputs.iterdir()), str(vanishing)])
    assert any(r["status"] == "skipped" for r in final)  # a killed run had committed files, which the rerun skipped
    assert not [p.name for p in temp.iterdir() if p.name.startswith("steadyscribe-")]
    joined = readme_join(output)
    assert len(joined) == len(set(joined)) == sum(r["words_n"] for r in rows if r["status"] == "ok") > 0
    # Each recording was transcribed once over all the runs: later runs skip it.
    ok = [r["source"] for r in rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok))
