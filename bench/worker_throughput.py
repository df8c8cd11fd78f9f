"""Per-worker throughput for the capacity model (docs/operations.md): audio hours per CPU-hour, per profile.

A worker's steady state: its engine is loaded once (load time reported apart), then groups of
files go through the plain stage functions the group task calls (decode, chunk, infer,
stabilize). The first pass warms up; the second is measured. Throughput is CPU time (user +
system, every thread of the process), not wall time: the machine this runs on is shared, and
wall time would measure the neighbours too.

    python -m bench.worker_throughput [--profile cpu-fast --profile cpu-small] [INPUT_DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REALSPEECH_ENV, realspeech_dir



def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(profile_name: str, inputs: Path) -> dict:
    """One profile in this process: plan, load the engine once, two passes over the inputs."""
    from steadyscribe.engines import available_engines, load_engine, provisioning_error
    from steadyscribe.profiles import load_profile
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input
    from steadyscribe.inference import transcribe_files
    from steadyscribe.tasks.probe import probe_resources
    from steadyscribe.tasks.select import select_plan
    from steadyscribe.records import Transcript
    from steadyscribe.tasks.stabilize import options_from_profile, stabilize

    profile = load_profile(profile_name)
    plan = select_plan(
        profile, probe_resources([]), available_engines(),
        model_unavailable=lambda model, engine: provisioning_error(model, engine, profile.model_cache_dir),
    )
    started = cpu_s()
    engine = load_engine(plan)
    load_cpu_s = cpu_s() - started
    files = sorted(str(p) for p in inputs.iterdir() if p.suffix in (".flac", ".wav", ".mp3"))
    passes = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as work_dir:
            cpu_started, wall_started = cpu_s(), time.perf_counter()
            decoded = {d.file_id: d for d in (decode_input(InputFile(f), work_dir) for f in files) if d.status == "ok"}
            windows = {fid: plan_windows(load_pcm(d.pcm_path), fid, plan.chunk_s, profile.chunking.min_pause_s)
                       for fid, d in decoded.items()}
            results = transcribe_files(engine, decoded, [w for ws in windows.values() for w in ws], work_dir)
            options = options_from_profile(profile.stabilization)
            for fid, d in decoded.items():
                stabilize(Transcript.load(results[fid].transcript_path), load_pcm(d.pcm_path), options, windows[fid])
            passes.append({"cpu_s": cpu_s() - cpu_started, "wall_s": time.perf_counter() - wall_started,
                           "audio_s": sum(d.duration_s for d in decoded.values())})
    steady = passes[-1]
    return {
        "profile": profile_name, "engine": plan.engine, "model": plan.model, "quantization": plan.quantization,
        "batch_size": plan.batch_size, "threads": plan.threads, "files": len(files), "audio_s": steady["audio_s"],
        "cpu_s": steady["cpu_s"], "wall_s_shared_machine": steady["wall_s"], "engine_load_cpu_s": load_cpu_s,
        "audio_hours_per_cpu_hour": steady["audio_s"] / steady["cpu_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="?", type=Path,
                        help=f"folder of audio files (default: the real-speech folder: ${REALSPEECH_ENV}, else ../shared/realspeech)")
    parser.add_argument("--profile", action="append", dest="profiles")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.inputs = args.inputs or realspeech_dir()
    profiles = args.profiles or ["cpu-fast", "cpu-small"]
    if args.in_process:
        print(json.dumps(measure(profiles[0], args.inputs)))
        return
    for name in profiles:  # each profile in a fresh process: no engine or import is shared
        result = subprocess.run(
            [sys.executable, "-m", "bench.worker_throughput", "--in-process", "--profile", name, str(args.inputs)],
            capture_output=True, text=True, check=True,
        )
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
