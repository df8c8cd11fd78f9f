"""A Dask cluster of separate processes on loopback, started the way an operator starts one.

`dask scheduler` and one `dask worker` process per worker (no nanny, so a killed worker stays
dead). Each worker has a private temporary directory (TMPDIR), model cache and Prefect home:
nothing is shared with the flow or the other worker but the output location the test passes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Worker:
    process: subprocess.Popen
    temp_dir: Path  # its TMPDIR: group work directories appear here
    log: Path

    @property
    def name(self) -> str:
        """As the `files.worker` column writes it: host and process id."""
        return f"{socket.gethostname()}:{self.process.pid}"

    def busy_with_a_group(self) -> bool:
        """A group's decoded audio is on its disk: it is between decoding and committing."""
        return any(self.temp_dir.glob("steadyscribe-*/*.f32"))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


class DaskCluster:
    def __init__(self, root: Path, workers: int, prefect_api_url: str, threads_per_worker: int = 1):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        base_env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
        self.scheduler = self._start(
            "scheduler", [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            base_env,
        )
        self.workers: list[Worker] = []
        for index in range(workers):
            private = root / f"worker-{index}"
            temp_dir = private / "tmp"
            temp_dir.mkdir(parents=True)
            env = {
                **base_env,
                "TMPDIR": str(temp_dir),
                "STEADYSCRIBE_MODEL_CACHE": str(private / "models"),
                "PREFECT_HOME": str(private / "prefect-home"),
            }
            command = [
                BIN / "dask", "worker", self.address, "--no-nanny", "--nthreads", str(threads_per_worker),
                "--name", f"worker-{index}", "--local-directory", str(private / "dask"), "--dashboard-address", ":0",
            ]
            process = self._start(f"worker-{index}", command, env)
            self.workers.append(Worker(process, temp_dir, root / f"worker-{index}.log"))
        self._wait_for_workers(workers)

    def _start(self, name: str, command: list, env: dict) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(self.address, timeout=10) as client:
                    client.wait_for_workers(n, timeout=max(1, deadline - time.monotonic()))
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the Dask cluster did not start:\n{self.logs()}") from None
                time.sleep(1)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(self.root.glob("*.log")))

    def close(self) -> None:
        for process in [w.process for w in self.workers] + [self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [w.process for w in self.workers] + [self.scheduler]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
