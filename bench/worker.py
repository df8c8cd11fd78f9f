"""One system in its own process: load the model, transcribe each part of the set, report.

    python -m bench.worker SYSTEM --model tiny.en --data DIR --result RESULT.json

A fresh process per system keeps one system's memory and threads from touching another's, and
makes the process's peak RSS that system's peak. Model load and each part are timed apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import psutil

from bench import systems
from bench.common import package_versions, usable_threads
from bench.dataset import load_manifest
from steadyscribe.memory import process_peak_rss_bytes


def run_system(name: str, model: str, data_dir: Path) -> dict:
    system = systems.SYSTEMS_BY_NAME[name]
    files = load_manifest(data_dir)
    runner = getattr(systems, system.runner)(model, usable_threads(), system.options)
    runner.prepare()
    started = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - started
    rss_after_load = psutil.Process().memory_info().rss

    parts: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    try:
        for part in dict.fromkeys(f.part for f in files):
            paths = {f.name: f.absolute_path(data_dir) for f in files if f.part == part}
            started = time.perf_counter()
            outputs.update(runner.transcribe(paths))
            parts[part] = {
                "wall_s": time.perf_counter() - started,
                "audio_s": sum(f.duration_s for f in files if f.part == part),
            }
    finally:
        shutil.rmtree(runner.work_dir, ignore_errors=True)
    return {
        "system": name,
        "model": model,
        "settings": runner.settings,
        "load_s": load_s,
        "stabilize_s": getattr(runner, "stabilize_s", None),
        "rss_after_load_bytes": rss_after_load,
        # The high-water mark of this whole process, kept across the transformers engine's
        # per-batch resets of it (steadyscribe.memory.process_peak_rss_bytes).
        "peak_rss_bytes": process_peak_rss_bytes(),
        # What selection estimated for the plan (steadyscribe systems only): compare with peak_rss_bytes.
        "estimated_peak_bytes": getattr(getattr(runner, "plan", None), "estimated_peak_bytes", None),
        "parts": parts,
        "versions": package_versions(),
        "outputs": outputs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(systems.SYSTEMS_BY_NAME))
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run_system(args.system, args.model, args.data)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
