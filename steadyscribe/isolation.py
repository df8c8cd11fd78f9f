"""Native code in child processes that die with their parent.

Decoding runs FFmpeg (through PyAV) on whatever bytes an input holds, and inference runs an
engine's native code (CTranslate2, torch); a crash there would take the whole run with it, and a
hang would stall it. So the decode and inference stages call their functions in a child process
(ChildProcess): a crash or a hang costs that call, which the caller turns into failed rows, and
the next call gets a fresh child. Only small records cross: the function, its arguments, the
messages it sends on the way (`tell_parent`) and its result, pickled; audio and transcripts go
to files in the group's work directory.

Every child started here, the temporary Prefect server too, is killed by the kernel when the
thread that started it ends (PR_SET_PDEATHSIG on Linux), so a run killed with SIGKILL leaves
no process behind. A child shared by several threads is started by a thread that lives as long
as the process (`ChildProcess(shared=True)`).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import runpy
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

_PR_SET_PDEATHSIG = 1
_LENGTH = struct.Struct("<Q")
# How often a waiting call checks whether its child still reads or writes.
_POLL_S = 1.0
# In a child: where its answers and messages go (set by _serve_calls).
_to_parent: BinaryIO | None = None
# Starts the children that outlive the thread that first needed them: the kernel's parent-death
# signal follows the thread that forked, and this one ends only with the process.
_process_lifetime_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steadyscribe-child-starter")


class ChildCrashed(RuntimeError):
    """The child process died during the call (a signal, or an exit)."""

    def __init__(self, returncode: int):
        self.returncode = returncode
        how = f"crashed ({signal.Signals(-returncode).name})" if returncode < 0 else f"exited with status {returncode}"
        super().__init__(how)


class ChildHung(RuntimeError):
    """The child neither answered nor read or wrote a byte for `idle_s` seconds, and was killed."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        super().__init__(f"hung (it read and wrote nothing for {idle_s:.0f} s)")


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent thread ends; exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def command_dying_with_parent(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args...` in a child that dies with this process (see die_with_parent)."""
    return [sys.executable, "-m", __name__, "run-module", str(os.getpid()), module, *args]


def tell_parent(message: Any) -> None:
    """From a function running in a ChildProcess: send `message` to the caller's `on_message`, now."""
    if _to_parent is None:
        raise RuntimeError("tell_parent is for functions that ChildProcess.call runs in a child")
    _write(_to_parent, pickle.dumps(("message", message)))


class ChildProcess:
    """A long-lived Python child that runs one function call at a time: `call(fn, *args)`.

    `fn` must be importable by name (a module-level function). A call raises ChildCrashed when
    the child dies during it, and ChildHung when the child neither answers nor reads or writes
    a byte for `hang_s` seconds (where /proc does not show a process's I/O: when it does not
    answer within `hang_s`); either way the next call starts a new child. The child dies with
    the thread that started it; with `shared=True`, with the process (for a child that several
    threads call in turn: serialize the calls).
    """

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.process: subprocess.Popen | None = None
        self._unread = bytearray()

    @property
    def started(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def call(self, fn: Callable[..., Any], *args: Any, hang_s: float, on_message: Callable[[Any], None] | None = None) -> Any:
        """`fn(*args)` in the child; each `tell_parent(message)` there calls `on_message(message)` here.

        When `on_message` raises, the child is killed (it is mid-call) and the error propagates.
        """
        if not self.started:
            self.process, self._unread = self._start(), bytearray()
        request = pickle.dumps((fn, args))
        try:
            self.process.stdin.write(_LENGTH.pack(len(request)) + request)
            self.process.stdin.flush()
            while True:
                outcome, value = pickle.loads(self._receive(hang_s))
                if outcome != "message":
                    break
                if on_message is not None:
                    try:
                        on_message(value)
                    except BaseException:
                        self.kill()
                        raise
        except (BrokenPipeError, EOFError):
            raise ChildCrashed(self.process.wait()) from None
        if outcome == "raised":
            raise value
        return value

    def _start(self) -> subprocess.Popen:
        command = [sys.executable, "-m", __name__, "serve-calls", str(os.getpid())]
        start = lambda: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: E731
        return _process_lifetime_starter.submit(start).result() if self.shared else start()

    def kill(self) -> None:
        """End the child now, mid-call or not."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        """End the child (it exits when its input closes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def _receive(self, hang_s: float) -> bytes:
        """One frame from the child; EOFError when it died first. Kills it and raises ChildHung when it stalls."""
        fd = self.process.stdout.fileno()
        data = self._unread  # what the last read brought beyond the last frame
        io_seen, idle_since = self._io_bytes(), time.monotonic()
        while len(data) < _LENGTH.size or len(data) < _LENGTH.size + _LENGTH.unpack_from(data)[0]:
            if select.select([fd], [], [], _POLL_S)[0]:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError
                data += chunk
                idle_since = time.monotonic()
                continue
            io_now = self._io_bytes()
            if io_now != io_seen:
                io_seen, idle_since = io_now, time.monotonic()
            elif time.monotonic() - idle_since >= hang_s:
                self.kill()
                raise ChildHung(hang_s)
        end = _LENGTH.size + _LENGTH.unpack_from(data)[0]
        self._unread = data[end:]
        return bytes(data[_LENGTH.size : end])

    def _io_bytes(self) -> int | None:
        """Bytes the child has read and written so far (files, pipes and sockets), where /proc shows them."""
        try:
            with open(f"/proc/{self.process.pid}/io") as io:
                counters = dict(line.split(": ") for line in io.read().splitlines())
        except OSError:
            return None
        return int(counters["rchar"]) + int(counters["wchar"])


def _write(stream: BinaryIO, frame: bytes) -> None:
    stream.write(_LENGTH.pack(len(frame)) + frame)
    stream.flush()


def _serve_calls(parent_pid: int) -> None:
    """The child's side of ChildProcess: answer pickled calls on stdin until it closes."""
    global _to_parent
    die_with_parent(parent_pid)
    # Answers go to the original stdout; anything the code prints goes to stderr instead.
    _to_parent = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while header := requests.read(_LENGTH.size):
        fn, args = pickle.loads(requests.read(_LENGTH.unpack(header)[0]))
        try:
            answer = pickle.dumps(("returned", fn(*args)))
        except Exception as error:
            try:
                answer = pickle.dumps(("raised", error))
            except Exception:  # an exception that does not pickle still says what it was
                answer = pickle.dumps(("raised", RuntimeError(repr(error))))
        _write(_to_parent, answer)


def main(argv: list[str]) -> None:
    """`serve-calls PARENT_PID`, or `run-module PARENT_PID MODULE ARGS...` (as `python -m MODULE ARGS...`)."""
    mode, parent_pid = argv[0], int(argv[1])
    if mode == "serve-calls":
        _serve_calls(parent_pid)
    elif mode == "run-module":
        die_with_parent(parent_pid)
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    # Serve from the module's importable copy, not this __main__ one: the functions a child runs
    # import steadyscribe.isolation, and its tell_parent must find the channel to the parent.
    from steadyscribe import isolation

    isolation.main(sys.argv[1:])
