"""The memory budget holds: `steadyscribe run` with a budget stays under it, measured on the run's own processes.

Two runs of the real CLI (each in a fresh subprocess, against the session's Prefect server) with the
cpu-batched profile and two budgets that force different batch sizes. Each run reports the peak RSS
of its process plus its engine process's (`--summary-json`, steadyscribe.memory.run_peak_rss_bytes,
which keeps each peak across the transformers engine's per-batch resets of the kernel's high-water
mark). The budgets come from docs/memory-calibration.md ("Inside the flow process").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from helpers import FIXTURES, fixture_truth
from steadyscribe.metrics import corpus_wer
from steadyscribe.profiles import parse_size

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Six short files (eight windows): the smaller budget's batch runs more than once.
SPEECH = ["clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy", "straddle_40s"]
# The smaller budget fits tiny.en at batch 4 (not 8), the larger at batch 24 (see the calibration doc).
BUDGETS = ("1.5GiB", "2.6GiB")
MAX_WER = 0.15  # as tests/test_flow_e2e.py asks of tiny.en

@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory) -> dict[str, dict]:
    from prefect.settings import PREFECT_API_URL

    # The session's server: no ephemeral server start per run. A model cache of the test's own, so
    # that what earlier tests left in the session's cache cannot change what the runs load.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "STEADYSCRIBE_MODEL_CACHE": str(tmp_path_factory.mktemp("budget-model-cache"))}
    inputs = [str(FIXTURES / f"{name}.flac") for name in SPEECH]
    results = {}
    for budget in BUDGETS:
        work = tmp_path_factory.mktemp(f"budget-{budget}")
        summary_path = work / "summary.json"
        done = subprocess.run(
            [sys.executable, "-m", "steadyscribe.app.cli", "run", *inputs, "--output", str(work / "out"),
             "--profile", "cpu-batched", "--memory-budget", budget, "--summary-json", str(summary_path)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, f"budget {budget}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        results[budget] = {
            "summary": json.loads(summary_path.read_text()),
            "output": work / "out",
        }
    return results


def test_budgets_force_different_plans(runs):
    plans = [runs[budget]["summary"]["plan"] for budget in BUDGETS]
    assert {plan["engine"] for plan in plans} == {"transformers"}, [plan["reason"] for plan in plans]
    small, large = plans
    assert small["batch_size"] < large["batch_size"], [plan["reason"] for plan in plans]
    for budget, plan in zip(BUDGETS, plans):
        assert plan["memory_budget_bytes"] <= parse_size(budget)  # less only when less is free
        assert plan["estimated_peak_bytes"] <= plan["memory_budget_bytes"]


@pytest.mark.parametrize("budget", BUDGETS)
def test_run_stays_under_its_budget(runs, budget):
    run = runs[budget]
    summary, plan = run["summary"], run["summary"]["plan"]
    limit = plan["memory_budget_bytes"]  # the budget asked for (less only when less memory is free)
    detail = (
        f"budget {budget}: batch {plan['batch_size']}, estimated {plan['estimated_peak_bytes'] / 2**20:.0f} MiB, "
        f"measured peak {summary['peak_rss_bytes'] / 2**20:.0f} MiB"
    )
    assert summary["files_ok"] == len(SPEECH) and summary["files_failed"] == 0, detail
    # The run's process (Prefect, the probe's imports, the run's bookkeeping) and its engine
    # process, their peaks added.
    assert summary["peak_rss_bytes"] <= limit, detail


@pytest.mark.parametrize("budget", BUDGETS)
def test_transcripts_are_still_good(runs, budget):
    words = ds.dataset(runs[budget]["output"] / "words", partitioning="hive").to_table().to_pylist()
    pairs = []
    for name in SPEECH:
        mine = sorted((w for w in words if w["source"].endswith(f"/{name}.flac")), key=lambda w: w["start"])
        pairs.append((fixture_truth(name)["text"], " ".join(w["word"] for w in mine)))
    assert corpus_wer(pairs) <= MAX_WER
