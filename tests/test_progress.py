"""What a person sees of a run: the reporter the stages feed, and log lines kept off the terminal."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from rich.console import Console

from steadyscribe.progress import PlainProgress, RichProgress, RunProgress, format_duration, reporter, reporting
from steadyscribe.run_log import logs_to_file


def feed_two_groups(progress: RunProgress) -> None:
    """A run of 5 files in groups of 3 and 2, as the flow, inference and writing report it."""
    progress.run_started(5, "tiny.en with whisper, batch 1")
    progress.group_started(3, 4)
    for _ in range(4):
        progress.windows_done(1, 30.0)
    progress.group_started(2, 2)  # two groups in flight: the first commits after the second starts
    progress.files_done("files 1–3 of 5", 2, 1, 0)
    for _ in range(2):
        progress.windows_done(1, 15.0)
    progress.files_done("files 4–5 of 5", 1, 0, 1)


def test_plain_progress_prints_one_line_per_group():
    out = io.StringIO()
    feed_two_groups(PlainProgress(out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "transcribing 5 files: tiny.en with whisper, batch 1"
    assert lines[1].startswith("files 1–3 of 5: 2 ok, 1 failed, 0 skipped · 3/5 files · 4/6 windows · ")
    assert lines[2].startswith("files 4–5 of 5: 1 ok, 0 failed, 1 skipped · 5/5 files · 6/6 windows · ")
    assert all("audio-h/h · ETA " in line for line in lines[1:])


def test_an_alignment_run_says_it_aligns():
    out = io.StringIO()
    PlainProgress(out).run_started(1, "tiny.en with ctranslate2, batch 8", "aligning")
    assert out.getvalue() == "aligning 1 file: tiny.en with ctranslate2, batch 8\n"


def test_fraction_counts_the_running_groups_windows_and_the_eta_follows():
    progress = RunProgress()
    progress.run_started(4, "plan")
    assert progress.fraction_done() == 0.0 and progress.eta_s() is None
    progress.group_started(2, 4)
    progress.windows_done(1, 30.0)
    progress.windows_done(1, 30.0)
    assert progress.fraction_done() == pytest.approx(0.25)  # half of a group holding half the files
    progress.started -= 100.0  # 100 s in, a quarter done
    assert progress.eta_s() == pytest.approx(300.0, rel=0.01)
    assert progress.audio_hours_per_hour() == pytest.approx(60.0 / 100.0, rel=0.01)
    progress.files_done("files 1–2 of 4", 2, 0, 0)
    assert progress.fraction_done() == pytest.approx(0.5)


def test_rich_progress_draws_one_bar_with_the_counts():
    screen = io.StringIO()
    progress = RichProgress(Console(file=screen, force_terminal=True, width=160))
    feed_two_groups(progress)
    progress.close()
    drawn = screen.getvalue()
    assert "tiny.en with whisper, batch 1" in drawn and "5/5 files · 6/6 windows" in drawn and "ETA" in drawn


def test_the_stages_report_to_the_installed_reporter_and_then_to_none():
    default = reporter()
    out = io.StringIO()
    with reporting(PlainProgress(out)) as installed:
        assert reporter() is installed
        feed_two_groups(reporter())
    assert reporter() is default
    assert len(out.getvalue().splitlines()) == 3


def test_a_broken_display_does_not_fail_the_run(caplog):
    class Broken(RunProgress):
        def _show_progress(self) -> None:
            raise RuntimeError("terminal gone")

    progress = Broken()
    with caplog.at_level(logging.ERROR, logger="steadyscribe.progress"):
        feed_two_groups(progress)
    assert progress.files_finished == 5 and progress.windows_finished == 6
    assert len([r for r in caplog.records if "progress display failed" in r.getMessage()]) == 1


def test_terminal_log_lines_go_to_the_file_for_the_block(tmp_path, capsys):
    logger = logging.getLogger("steadyscribe.test_progress")
    console = logging.StreamHandler(sys.stderr)
    logger.addHandler(console)
    logger.setLevel(logging.INFO)
    try:
        with logs_to_file(tmp_path / "logs" / "run.log") as path:
            logger.info("Task run 'decode x.flac' - Finished in state Completed()")
        logger.info("after the run")
    finally:
        logger.removeHandler(console)
    assert "decode x.flac" in path.read_text() and "after the run" not in path.read_text()
    terminal = capsys.readouterr().err
    assert "decode x.flac" not in terminal and "after the run" in terminal


@pytest.mark.parametrize(("seconds", "text"), [(None, "–"), (42.4, "42 s"), (125, "2 min 05 s"), (7260, "2 h 01 min")])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text
