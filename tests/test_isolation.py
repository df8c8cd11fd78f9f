"""Child processes for native code (steadyscribe/isolation.py) and scratch folders (steadyscribe/scratch.py).

A crash or hang in a child costs only its call; children die with their parent, SIGKILL
included; scratch folders of dead processes are removed by the next process that makes one.
"""

from __future__ import annotations

import ctypes
import operator
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import wait_until
from steadyscribe.inference import report_windows
from steadyscribe.isolation import ChildCrashed, ChildHung, ChildProcess
from steadyscribe.scratch import LOCK_NAME, ScratchDir, remove_abandoned


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def child():
    process = ChildProcess()
    yield process
    process.close()


def test_a_call_returns_or_raises_as_it_would_here(child):
    assert child.call(operator.add, 2, 3, hang_s=60) == 5
    with pytest.raises(ValueError, match="invalid literal"):
        child.call(int, "seven", hang_s=60)
    assert child.call(os.getppid, hang_s=60) == os.getpid()


def test_a_crash_fails_its_call_and_the_next_call_gets_a_new_child(child):
    first = child.call(os.getpid, hang_s=60)
    with pytest.raises(ChildCrashed, match=r"crashed \(SIGSEGV\)"):
        child.call(ctypes.string_at, 0, hang_s=60)  # reads address 0
    assert not alive(first)
    assert child.call(operator.mul, 6, 7, hang_s=60) == 42
    assert child.call(os.getpid, hang_s=60) != first


def test_a_child_that_neither_answers_nor_reads_or_writes_is_killed_as_hung(child):
    first = child.call(os.getpid, hang_s=60)
    with pytest.raises(ChildHung, match=r"hung \(it read and wrote nothing for 2 s\)"):
        child.call(time.sleep, 3600, hang_s=2)
    assert not alive(first)
    assert child.call(operator.add, 1, 1, hang_s=60) == 2


def test_messages_sent_during_a_call_reach_the_caller_before_its_answer(child):
    messages = []
    assert child.call(report_windows, 3, 1.5, hang_s=60, on_message=messages.append) is None
    [(kind, count, audio_s, peak_rss_bytes)] = messages
    assert (kind, count, audio_s) == ("windows", 3, 1.5) and peak_rss_bytes > 0


def test_a_caller_that_stops_on_a_message_kills_the_child_mid_call(child):
    first = child.call(os.getpid, hang_s=60)

    def stop(message):
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        child.call(report_windows, 1, 1.0, hang_s=60, on_message=stop)
    assert not alive(first)
    assert child.call(operator.add, 1, 2, hang_s=60) == 3


def test_a_shared_child_outlives_the_thread_that_started_it():
    shared = ChildProcess(shared=True)
    pids = []
    starter = threading.Thread(target=lambda: pids.append(shared.call(os.getpid, hang_s=60)))
    starter.start()
    starter.join()
    try:
        time.sleep(0.5)  # the kernel's parent-death signal would have come by now
        assert alive(pids[0]) and shared.call(os.getpid, hang_s=60) == pids[0]
    finally:
        shared.close()


PARENT = """
import sys, time
from steadyscribe.isolation import ChildProcess, command_dying_with_parent
import os, subprocess
child = ChildProcess()
server = subprocess.Popen(command_dying_with_parent("http.server", "0", "--bind", "127.0.0.1"), stdout=subprocess.DEVNULL)
print(child.call(os.getpid, hang_s=60), server.pid, flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_children_die_with_their_parent(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        parent.send_signal(how)
        parent.wait(timeout=30)
        assert wait_until(lambda: not any(alive(pid) for pid in children), timeout_s=15)
    finally:
        parent.kill()
        parent.wait()


OWNER = """
import sys, time
from steadyscribe.scratch import ScratchDir
print(ScratchDir("owner").path, flush=True)
time.sleep(3600)
"""


def test_scratch_folders_of_dead_owners_are_removed_and_no_others(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = ScratchDir("live")
    killed = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    abandoned = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    unlocked = tmp_path / "steadyscribe-not-a-scratch-folder"  # no lock file: somebody else's, left alone
    unlocked.mkdir()
    assert abandoned.parent == tmp_path and (abandoned / LOCK_NAME).exists()

    assert remove_abandoned() == [str(abandoned)]
    assert not abandoned.exists() and Path(live.path).is_dir() and unlocked.is_dir()
    live.remove()
    assert not Path(live.path).exists()
