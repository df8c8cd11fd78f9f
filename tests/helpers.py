"""What the test modules share besides fixtures: where the committed audio is, the speech fixtures as
the pipeline windows them, running the real CLI and reading the tables it writes, audio files a test
makes, polling, and a machine as tasks.select sees it.

steadyscribe is imported inside the functions: conftest.py points Prefect at a throwaway home
before anything imports Prefect.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    from steadyscribe.tasks.probe import Probe

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# Real recordings (scripts/make_real_fixtures.py), some with word times.
REAL = FIXTURES / "real"
SAMPLE_RATE = 16000


def fixture_truth(name: str) -> dict:
    """The JSON truth (text, per-word start/end) of a committed fixture."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fixture_script(name: str) -> ModuleType:
    """scripts/NAME.py, the script that made some fixtures, loaded as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


# --- the speech fixtures as the pipeline windows them: shared by the engine tests -----------------

# straddle_40s first: its two windows and two other files make the first batch of four.
SPEECH = ["straddle_40s", "clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy"]
# How far a batched engine's corpus WER may trail openai-whisper's at batch 1 with the same weights.
WER_MARGIN = 0.02


def decode_fixture(name: str, work_dir: Path):
    """A fixture decoded as the pipeline decodes it (tasks.decode): 16 kHz mono float32 samples."""
    from steadyscribe.pcm import load_pcm
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.decode import decode_input

    return load_pcm(decode_input(InputFile(str(FIXTURES / f"{name}.flac")), work_dir).pcm_path)


def window_audio(window, samples):
    """The WindowAudio of `window` cut from its file's samples."""
    from steadyscribe.engines.base import WindowAudio

    return WindowAudio(window, samples[round(window.start * SAMPLE_RATE) : round(window.end * SAMPLE_RATE)])


def speech_fixture_windows(work_dir: Path, names: list[str] = SPEECH) -> list:
    """The pipeline's windows (tasks.chunk) of each named fixture, in order."""
    from steadyscribe.tasks.chunk import plan_windows

    windows = []
    for name in names:
        samples = decode_fixture(name, work_dir)
        windows += [window_audio(window, samples) for window in plan_windows(samples, name)]
    return windows


def transcript_text(results: list, name: str) -> str:
    """A file's segment texts, in window order."""
    ordered = sorted((r for r in results if r.window.file_id == name), key=lambda r: r.window.index)
    return " ".join(segment.text for r in ordered for segment in r.segments)


def speech_wer(results: list, names: list[str] = SPEECH) -> float:
    """Corpus WER of the results against the fixtures' truth."""
    from steadyscribe.metrics import corpus_wer

    return corpus_wer((fixture_truth(name)["text"], transcript_text(results, name)) for name in names)


# --- the real CLI and its tables ------------------------------------------------------------------


def api_env(**extra: str) -> dict[str, str]:
    """Environment for a `steadyscribe` subprocess that reports to this session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT), **extra}


def run_command(*args: str) -> list[str]:
    """The command line of `steadyscribe run ARGS` with this interpreter."""
    return [sys.executable, "-m", "steadyscribe.app.cli", "run", *args]


def run_cli(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
    wrapper: list[str] = (),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """`steadyscribe run ARGS` in its own process (started through `wrapper`), reporting to the session's Prefect API."""
    return subprocess.run(
        [*wrapper, *run_command(*args)],
        capture_output=True, text=True, env=api_env(**(env or {})), timeout=timeout_s, cwd=cwd,
    )


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session: a run started in a session of its own, and all it started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _pgrp, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except OSError:
            continue
        if int(sid) == session and state != "Z":
            found.append(int(stat.parent.name))
    return found


def files_rows(output: Path) -> list[dict]:
    """Every row of the `files` table under `output`, as the pipeline reads it."""
    from steadyscribe.schema import open_table

    return open_table(str(output), "files").to_table().to_pylist()


def documented_query(title: str, output: Path) -> str:
    """The ```sql block of docs/tables.md that starts with `-- {title}`, reading `output` instead of out/."""
    docs = (ROOT / "docs" / "tables.md").read_text()
    [sql] = [block for block in re.findall(r"```sql\n(.*?)```", docs, re.S) if block.startswith(f"-- {title}\n")]
    return sql.replace("'out/", f"'{output}/")


# --- audio files a test makes -----------------------------------------------------------------


def encode(path: Path, samples: np.ndarray, *, rate: int = SAMPLE_RATE, codec: str = "flac",
           container_format: str | None = None, channels: int = 1) -> Path:
    """16 kHz mono float samples encoded with PyAV at `rate` Hz with `channels` channels."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(
            format=stream.format.name, layout=layout, rate=rate, frame_size=stream.codec_context.frame_size or None
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def cut_at_packet_boundary(source: Path, target: Path) -> Path:
    """`source` cut cleanly between two packets halfway through: a copy that did not finish."""
    with av.open(str(source)) as container:
        positions = [p.pos for p in container.demux(container.streams.audio[0]) if p.pos]
    target.write_bytes(source.read_bytes()[: positions[len(positions) // 2]])
    return target


def write_eight_channels(path: Path, channel0: np.ndarray, rate: int = 48000) -> Path:
    """A 7.1 WAV at `rate` Hz: `channel0` (16 kHz float samples) on its first channel, silence on the seven others."""
    upsampled = np.repeat(channel0, rate // SAMPLE_RATE)
    samples = np.zeros((len(upsampled), 8), np.float32)
    samples[:, 0] = upsampled
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="7.1")
        frame = av.AudioFrame.from_ndarray((samples.reshape(1, -1) * 32767).astype("<i2"), format="s16", layout="7.1")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def resampled_mono(path: Path) -> np.ndarray:
    """Any audio file as 16 kHz mono float32 samples, mixed and resampled by PyAV (not by tasks.decode)."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


# The clean real recordings, twice in different orders: about four minutes.
LONG_REAL_ROUNDS = 2


def long_real_speech(work_dir: Path) -> tuple[np.ndarray, str]:
    """The clean real recordings end to end, 0.5-2 s of digital silence apart (seeded), as decoded
    16 kHz samples; their reference text."""
    import random

    from steadyscribe.pcm import load_pcm
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.decode import decode_input

    names = sorted(p.stem for p in REAL.glob("*.flac") if "__" not in p.stem)
    rng = random.Random(28)
    pieces, texts = [], []
    for round_ in range(LONG_REAL_ROUNDS):
        for name in names if round_ == 0 else rng.sample(names, len(names)):
            decoded = decode_input(InputFile(str(REAL / f"{name}.flac")), work_dir)
            if pieces:
                pieces.append(np.zeros(round(rng.uniform(0.5, 2.0) * SAMPLE_RATE), dtype=np.float32))
            pieces.append(np.asarray(load_pcm(decoded.pcm_path)))
            texts.append(json.loads((REAL / f"{name}.json").read_text())["text"])
    return np.concatenate(pieces), " ".join(texts)


def long_real_file(path: Path) -> tuple[Path, str]:
    """long_real_speech as a 16-bit FLAC at `path`; its reference text."""
    samples, text = long_real_speech(path.parent)
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path, text


# --- waiting and machines ---------------------------------------------------------------------


def wait_until(condition, timeout_s: float) -> bool:
    """Poll `condition` until it holds or `timeout_s` has passed; whether it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def machine(ram_gib: float = 24, gpu_gib: float | None = None, bitsandbytes: bool = True,
            cgroup_limit_gib: float | None = None, cpus: int = 8) -> Probe:
    """The probe of a machine with these resources, as tasks.select reads it."""
    from steadyscribe.memory import GiB
    from steadyscribe.tasks.probe import GpuInfo, Probe

    gpus = [GpuInfo(0, f"GPU {gpu_gib:g} GB", int(gpu_gib * GiB), int(gpu_gib * 0.95 * GiB), "8.0")] if gpu_gib else []
    available = int(min(ram_gib, cgroup_limit_gib or ram_gib) * GiB)
    return Probe(
        cpu_count=cpus, cpu_affinity=cpus, cgroup_cpu_quota=None, usable_cpus=cpus,
        ram_total_bytes=int(ram_gib * GiB), ram_available_bytes=int(ram_gib * GiB),
        cgroup_memory_limit_bytes=int(cgroup_limit_gib * GiB) if cgroup_limit_gib else None,
        cgroup_memory_usage_bytes=0 if cgroup_limit_gib else None,
        memory_available_bytes=available, cuda_available=bool(gpus), gpus=gpus,
        bitsandbytes_version="0.50.2" if bitsandbytes else None,
        bitsandbytes_int8_cpu=bitsandbytes, bitsandbytes_cuda=bitsandbytes and bool(gpus),
    )
