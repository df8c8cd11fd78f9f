"""Names with control characters are escaped wherever a person reads them: the summary, progress lines, logs.

A file name may hold a newline or an escape sequence; printed raw, a crafted name would add a
fake line such as `files: 99 ok` to the run summary a nightly job mails out. The tables keep
the real names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli
from steadyscribe.printable import printable
from steadyscribe.schema import open_table

FAKE_LINE = "files: 99 ok, 0 failed, 0 skipped"


def test_printable_escapes_controls_separators_and_bidi_overrides_only():
    assert printable("/data/réunion 2026 (1).flac") == "/data/réunion 2026 (1).flac"
    assert printable("a\nb\rc\td\x1b[2Je\x7ff\x85g\u2028h\u202ei\u200bj") == r"a\nb\rc\td\x1b[2Je\x7ff\x85g\u2028h\u202ei\u200bj"


@pytest.mark.slow
def test_a_newline_in_a_file_name_cannot_forge_a_summary_line(prefect_server, tmp_path):
    inputs, output, log_file = tmp_path / "in", tmp_path / f"out\n{FAKE_LINE}", tmp_path / "run.log"
    inputs.mkdir()
    crafted = inputs / f"notes\n{FAKE_LINE}\n\x1b[2J.wav"
    crafted.write_text("not audio\n")
    missing = f"{inputs}/gone\n{FAKE_LINE}\n.flac"
    result = run_cli(
        [str(inputs), missing, "--output", str(output), "--log-file", str(log_file)], env={"PREFECT_LOGGING_LEVEL": "INFO"}
    )
    assert result.returncode == 1, result.stdout + result.stderr

    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("files:")] == ["files: 0 ok, 2 failed, 0 skipped"]
    assert all(f"\\n{FAKE_LINE}" in line for line in lines if FAKE_LINE in line), result.stdout  # never a line's start
    failed = [line for line in lines if line.startswith("FAILED ")]
    assert len(failed) == 2 and all("\\n" + FAKE_LINE + "\\n" in line for line in failed), failed
    assert "\x1b" not in result.stdout + result.stderr
    logged = log_file.read_text()
    assert not any(line.startswith(FAKE_LINE) for line in logged.splitlines()) and "\x1b" not in logged
    assert f"gone\\n{FAKE_LINE}\\n.flac" in logged  # discovery's warning, escaped
    # The flow run's name holds the output's name: escaped, it stays inside its log lines (checked above).
    assert f"{FAKE_LINE} (cpu-small, " in logged

    rows = open_table(str(output), "files").to_table().to_pylist()
    assert sorted(row["source"] for row in rows) == sorted([str(crafted), missing])  # the real names
