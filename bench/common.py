"""What every benchmark shares: the machine it ran on, where its data is, and writing audio files.

The real-speech recordings (README there) are found, in this order, at the folder a script's
`--realspeech` option names, at $STEADYSCRIBE_REALSPEECH, or at `../shared/realspeech` beside the
repository.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from steadyscribe import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "bench" / "data"
DEFAULT_OUT = ROOT / "bench" / "results"
FIXTURES_DIR = ROOT / "tests" / "fixtures"
REALSPEECH_ENV = "STEADYSCRIBE_REALSPEECH"
# Versions worth recording with each result: the systems' own packages and what they run on.
PACKAGES = ("openai-whisper", "torch", "transformers", "ctranslate2", "faster-whisper", "stable-ts", "numpy")


# ---- the machine -------------------------------------------------------------------------------


def usable_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict:
    """The machine and commit a result was measured on; callers add `load_average_end` when done."""
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD"),
        # Uncommitted changes make the commit an approximation of what ran (results of earlier runs aside).
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")),
        "load_average_start": os.getloadavg(),
    }


def machine_line(machine: dict, date: str, detail: str = "") -> str:
    """The header line of a results file: the machine, the commit, the date, `detail`, the load."""
    dirty = " (uncommitted changes)" if machine["dirty"] else ""
    load = ", ".join(f"{x:.1f}" for x in machine["load_average_start"])
    if "load_average_end" in machine:
        load += ", at end " + ", ".join(f"{x:.1f}" for x in machine["load_average_end"])
    return (
        f"{machine['cpu']}, {machine['usable_cores']} cores used of {machine['logical_cores']}, {machine['ram_gib']} GiB RAM; "
        f"commit `{machine['commit'][:10]}`{dirty}; {date}; {detail + '; ' if detail else ''}load average at start {load}"
    )


def package_versions() -> dict[str, str]:
    """Installed versions of PACKAGES (those not installed are left out)."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git(*args: str) -> str:
    """`git ARGS` in the repository: its output, or "unknown"."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


# ---- the data ----------------------------------------------------------------------------------


def add_realspeech_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--realspeech", type=Path, default=None,
                        help=f"the real-speech recordings (default: ${REALSPEECH_ENV}, else ../shared/realspeech "
                             "beside the repository)")


def realspeech_dir(option: Path | None = None) -> Path:
    """The real-speech folder: the option, else $STEADYSCRIBE_REALSPEECH, else the repository's sibling."""
    folder = option or Path(os.environ.get(REALSPEECH_ENV) or ROOT.parent / "shared" / "realspeech")
    if not folder.is_dir():
        raise SystemExit(f"real-speech folder {folder} not found: pass --realspeech DIR or set {REALSPEECH_ENV}")
    return folder.resolve()


# ---- audio -------------------------------------------------------------------------------------


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """A 16 kHz mono 16-bit WAV: int16 samples as they are, float samples in [-1, 1] scaled."""
    if samples.dtype != np.int16:
        samples = np.clip(samples, -1, 1) * 32767
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


@contextmanager
def flac_writer(path: Path) -> Iterator[Callable[[np.ndarray], None]]:
    """A 16 kHz mono 16-bit FLAC written as a stream: yields `put(samples)` for float samples in [-1, 1]."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        stream.format = "s16"

        def put(samples: np.ndarray) -> None:
            pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            container.mux(stream.encode(frame))

        yield put
        container.mux(stream.encode(None))


def pink_noise(length: int, signal_power: float, snr_db: float, seed: int) -> np.ndarray:
    """Seeded pink (1/f) noise, float64, `snr_db` below `signal_power` (a mean square)."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(length))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, length)
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / float(np.mean(np.square(noise))))
    return noise
