"""The run summary: counts, real-time factor, and failures named with their reasons."""

from __future__ import annotations

import pytest

from steadyscribe.records import FileOutcome, StabilizationCounts
from steadyscribe.tasks.report import summarize, summary_markdown, summary_text

PLAN = {"engine": "whisper", "model": "tiny.en", "batch_size": 1, "quantization": "none"}


def test_summary_counts_files_and_audio_of_ok_files_only():
    outcomes = [
        FileOutcome("a.wav", "ok", 60.0, stabilization=StabilizationCounts(words_moved=3, words_dropped=1)),
        FileOutcome("b.wav", "ok", 30.0, stabilization=StabilizationCounts(words_moved=2)),
        FileOutcome("c.wav", "skipped", 45.0),
        FileOutcome("d.wav", "failed", 0.0, "d.wav: the file is empty (0 bytes)"),
    ]
    summary = summarize("run-1", "out", PLAN, outcomes, wall_s=45.0)
    assert (summary.files_ok, summary.files_skipped, summary.files_failed) == (2, 1, 1)
    assert summary.audio_s == 90.0
    assert summary.real_time_factor == 0.5
    assert summary.stabilization == StabilizationCounts(words_moved=5, words_dropped=1)
    assert summary.peak_rss_bytes > 0
    text = summary_text(summary)
    assert "FAILED d.wav: the file is empty (0 bytes)" in text
    assert "2 ok, 1 failed, 1 skipped" in text
    markdown = summary_markdown(summary)
    assert "| d.wav | d.wav: the file is empty (0 bytes) |" in markdown
    assert "| real-time factor | 0.500 |" in markdown


def test_a_run_with_no_audio_has_no_real_time_factor():
    summary = summarize("run-2", "out", PLAN, [FileOutcome("x.wav", "failed", 0.0, "missing")], wall_s=3.0)
    assert summary.real_time_factor == 0.0 and summary.files_failed == 1


def test_a_process_started_by_a_large_one_reports_its_own_peak():
    """getrusage's ru_maxrss survives exec: a run started from a large process (a test runner, a
    scheduler's worker) would otherwise report that process's size as its own peak."""
    import subprocess
    import sys

    import numpy as np

    block = np.ones(600 * 2**20 // 8)  # 600 MiB, touched, resident in the starting process
    code = "from steadyscribe.memory import process_peak_rss_bytes; print(process_peak_rss_bytes())"
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert block.size and child_peak < 300 * 2**20


def test_peak_memory_survives_the_engine_resetting_the_kernel_high_water_mark():
    import numpy as np

    from steadyscribe.memory import process_peak_rss_bytes, reset_peak_rss, vm_hwm_bytes

    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    peak_with_block = vm_hwm_bytes()
    del block
    if not reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert vm_hwm_bytes() < peak_with_block - 200 * 2**20  # the kernel forgot the block
    assert process_peak_rss_bytes() >= peak_with_block - 16 * 2**20  # the kernel counts RSS in per-CPU batches


def test_summary_lists_ok_files_with_warnings():
    outcomes = [
        FileOutcome("a.flac", "ok", 3.1, warnings=["truncated: 3.1 s of a declared 6.1 s decoded"]),
        FileOutcome("b.flac", "ok", 2.0),
    ]
    summary = summarize("r", "out", {}, outcomes, 1.0)
    assert [f.source for f in summary.warned] == ["a.flac"]
    assert "ok with warnings a.flac: truncated: 3.1 s of a declared 6.1 s decoded" in summary_text(summary)
    assert "| a.flac | truncated" in summary_markdown(summary)


def test_the_final_message_names_the_count_and_the_first_failures_and_the_summary_what_to_act_on():
    from steadyscribe.tasks.report import FAILURES_IN_MESSAGE, failed_message

    failed = [FileOutcome(f"s3://b/in/f{i}.wav", "failed", 0.0, f"s3://b/in/f{i}.wav: corrupt {i}") for i in range(5)]
    ok = [FileOutcome("s3://b/in/slow.wav", "ok", 60.0, processing_s=30.0), FileOutcome("s3://b/in/quick.wav", "ok", 60.0, processing_s=3.0)]
    summary = summarize("run-3", "s3://b/out", PLAN, [*ok, *failed], wall_s=40.0, inputs=["s3://b/in/"], profile="cpu-fast")
    message = failed_message(summary)
    assert message.startswith("5 of 7 files failed: s3://b/in/f0.wav: corrupt 0; s3://b/in/f1.wav: corrupt 1")
    assert "s3://b/in/f3.wav" not in message and f"and {5 - FAILURES_IN_MESSAGE} more" in message
    assert [f.source for f in summary.slowest] == ["s3://b/in/slow.wav", "s3://b/in/quick.wav"]
    markdown = summary_markdown(summary)
    for row in ("| run id | run-3 |", "| inputs | s3://b/in/ |", "| output | s3://b/out |", "| profile | cpu-fast |",
                "| s3://b/in/slow.wav | 60.0 | 30.0 |"):
        assert row in markdown


def test_names_cannot_break_the_ui_summary_table():
    """A newline or a `|` in a file name (users name files) would start a new row or a new cell in the Markdown."""
    crafted = "in/a|b\n| files ok / failed / skipped / duplicate | 99 / 0 / 0 / 0 |.wav"
    outcomes = [FileOutcome(crafted, "failed", None, f"{crafted}: not audio"), FileOutcome("in/ok.wav", "ok", 2.0)]
    markdown = summary_markdown(summarize("r", "out", PLAN, outcomes, wall_s=1.0, inputs=["in/x\ny"]))
    rows = markdown.splitlines()
    assert [r for r in rows if r.startswith("| files ok")] == ["| files ok / failed / skipped / duplicate | 1 / 1 / 0 / 0 |"]
    assert "| inputs | in/x\\ny |" in rows
    [failure] = [r for r in rows if r.startswith("| in/a")]
    assert failure.count(" | ") == 1 and "\\n" in failure
