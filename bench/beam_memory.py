"""Peak RSS of the batched engines at beam 1 and beam 5, one batch of real speech (issue 18).

Each configuration runs in a fresh process: load the engine, decode one batch of 8 windows of
real speech (the first 8 windows the chunk stage makes of the real-speech folder, see
bench/common.py), as the pipeline does (greedy or beam, fallback, alignment). The peak is the process's high-water mark
(steadyscribe.memory.process_peak_rss_bytes: kept across the transformers engine's per-batch
resets), beside the estimate of steadyscribe.memory for the same plan.

    .venv/bin/python -m bench.beam_memory                 # tiny.en, batch 8, both engines, beams 1 and 5
    .venv/bin/python -m bench.beam_memory --model base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, SAMPLE_RATE, add_realspeech_option, realspeech_dir

MIB = 2**20


def windows_of_real_speech(realspeech: Path, count: int) -> list:
    from steadyscribe.engines.base import WindowAudio
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    work = Path(tempfile.mkdtemp(prefix="beam-memory-"))
    windows = []
    for path in sorted(realspeech.glob("*.flac")):
        samples = load_pcm(decode_input(InputFile(str(path)), work).pcm_path)
        for window in plan_windows(samples, path.stem):
            windows.append(WindowAudio(window, samples[round(window.start * SAMPLE_RATE) : round(window.end * SAMPLE_RATE)]))
    return windows[:count]


def measure_one(realspeech: Path, engine: str, model: str, batch: int, beam: int) -> dict:
    windows = windows_of_real_speech(realspeech, batch)  # decoded before the engine loads: not in its peak
    from steadyscribe.engines import load_engine
    from steadyscribe.memory import estimate_peak_bytes, process_peak_rss_bytes
    from steadyscribe.records import DecodingOptions, Plan

    plan = Plan(engine=engine, model=model, batch_size=batch, threads=2, language="en",
                decoding=DecodingOptions(beam_size=beam, language="en"))
    started = time.process_time()
    results = list(load_engine(plan).transcribe(windows))
    return {
        "engine": engine, "model": model, "batch": batch, "beam_size": beam, "windows": len(windows),
        "words": sum(len(s.words) for r in results for s in r.segments),
        "peak_rss_mib": round(process_peak_rss_bytes() / MIB),
        "estimate_mib": round(estimate_peak_bytes(model, engine=engine, batch_size=batch, beam_size=beam) / MIB),
        "process_cpu_s": round(time.process_time() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--engines", default="ctranslate2,transformers")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "BEAM"))
    add_realspeech_option(parser)
    args = parser.parse_args()
    realspeech = realspeech_dir(args.realspeech)
    if args.one:
        print(json.dumps(measure_one(realspeech, args.one[0], args.model, args.batch_size, int(args.one[1]))))
        return
    for engine in args.engines.split(","):
        for beam in args.beams.split(","):
            done = subprocess.run(
                [sys.executable, "-m", "bench.beam_memory", "--model", args.model, "--batch-size", str(args.batch_size),
                 "--realspeech", str(realspeech), "--one", engine, beam],
                capture_output=True, text=True, cwd=ROOT,
            )
            print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else f"FAILED {engine} {beam}: {done.stderr[-500:]}",
                  flush=True)


if __name__ == "__main__":
    main()
