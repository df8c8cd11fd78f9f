"""Quantization side by side (issue 7): each mode in its own process, on the same files and weights.

    .venv/bin/python -m bench.quantization [--quick] [--models tiny.en,base] [--out DIR] [--only KEY,KEY]

Per model, steadyscribe's transformers engine at fp32, PyTorch dynamic int8, bitsandbytes int8
and bitsandbytes NF4 (a mode `quantization_support` refuses here is listed with its reason), and
for reference the ctranslate2 engine at float32 and int8. Every configuration runs the pipeline's
stages (decode -> chunk -> infer -> stabilize, as bench.systems.SteadyscribeRunner) at batch 8 on
the evaluation set's `varied` and `clips` parts (bench/dataset.py; --quick: the quick set's).

Columns: weight memory (`steadyscribe.models.quantize.weight_bytes` of the loaded model; "–" for
ctranslate2, whose weights live outside Python) and its share of the same model's fp32 weights;
the process's peak RSS (imports, load and decoding: ru_maxrss, kept across the transformers
engine's per-batch resets of it: steadyscribe.memory.process_peak_rss_bytes); load time from the cache (every
quantized model is quantized once and cached; a first-load step in a process of its own times
that one-off quantization into a fresh cache directory, with its own peak RSS); throughput
(audio s / wall s over both parts, decoding included); WER and words within 200 ms over both
parts (bench/score.py). Writes DIR/quantization.json and DIR/quantization.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import systems
from bench.common import DEFAULT_DATA, DEFAULT_OUT, machine_info, machine_line, package_versions, usable_threads
from bench.dataset import build_dataset, load_manifest
from bench.report import mib, pct
from bench.run import OFFLINE_ENV, available_models, run_module
from bench.score import accuracy
from steadyscribe.memory import process_peak_rss_bytes

BATCH = 8
PARTS = ("varied", "clips")
TIMEOUT_S = {"quick": 600, "full": 900}  # per configuration and model
# key -> (label, engine, plan quantization)
CONFIGS: dict[str, tuple[str, str, str]] = {
    "transformers-fp32": ("transformers fp32", "transformers", "none"),
    "transformers-dynamic-int8": ("transformers dynamic int8 (PyTorch)", "transformers", "dynamic-int8"),
    "transformers-int8": ("transformers bitsandbytes int8", "transformers", "int8"),
    "transformers-nf4": ("transformers bitsandbytes nf4", "transformers", "nf4"),
    "ctranslate2-float32": ("ctranslate2 float32 (reference)", "ctranslate2", "none"),
    "ctranslate2-int8": ("ctranslate2 int8 (reference)", "ctranslate2", "int8"),
}
REQUIRES = {"transformers": ("transformers",), "ctranslate2": ("ctranslate2",)}


class QuantizationRunner(systems.SteadyscribeRunner):
    """SteadyscribeRunner with the engine, quantization and batch size fixed (cpu-batched's other settings)."""

    def prepare(self) -> None:
        systems.Runner.prepare(self)
        from steadyscribe.engines import ENGINES
        from steadyscribe.models.cache import model_cache_dir
        from steadyscribe.profiles import load_profile, validate_profile_data
        from steadyscribe.tasks.probe import probe_resources
        from steadyscribe.tasks.select import select_plan

        engine, quantization = self.options["engine"], self.options["quantization"]
        data = {**load_profile("cpu-batched").model_dump(), "name": "bench-quantization", "model": [self.model_spec],
                "engine": [engine], "quantization": [quantization]}
        self.profile = validate_profile_data(data, source="bench.quantization")
        probe = probe_resources([str(model_cache_dir())])
        self.plan = select_plan(self.profile, probe, {engine}, {"batch_size": BATCH})
        importlib.import_module(ENGINES[self.plan.engine].module)


# ---- workers: one configuration in this process ----

def _unsupported(engine: str, quantization: str) -> str | None:
    if engine != "transformers":
        return None
    from steadyscribe.models.quantize import quantization_support

    return quantization_support(quantization, "cpu")


def run_config(key: str, model: str, data_dir: Path) -> dict:
    """Load from the cache (timed), transcribe each part; figures per part and over both."""
    label, engine, quantization = CONFIGS[key]
    if (reason := _unsupported(engine, quantization)) is not None:
        return {"key": key, "status": "skipped", "note": reason}
    files = [f for f in load_manifest(data_dir) if f.part in PARTS]
    runner = QuantizationRunner(model, usable_threads(), {"engine": engine, "quantization": quantization})
    runner.prepare()
    started = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - started
    weights = None
    if engine == "transformers":
        from steadyscribe.models.quantize import weight_bytes

        weights = weight_bytes(runner.engine.model)
    parts, words = {}, {}
    try:
        for part in PARTS:
            part_files = [f for f in files if f.part == part]
            started = time.perf_counter()
            outputs = runner.transcribe({f.name: f.absolute_path(data_dir) for f in part_files})
            wall_s = time.perf_counter() - started
            words.update({name: o["words"] for name, o in outputs.items()})
            figures, _ = accuracy(part_files, {f.name: words[f.name] for f in part_files})
            audio_s = sum(f.duration_s for f in part_files)
            parts[part] = {"files": len(part_files), "audio_s": audio_s, "wall_s": wall_s,
                           "throughput": audio_s / wall_s, **figures}
    finally:
        shutil.rmtree(runner.work_dir, ignore_errors=True)
    overall, _ = accuracy(files, words)
    audio_s, wall_s = sum(p["audio_s"] for p in parts.values()), sum(p["wall_s"] for p in parts.values())
    return {
        "key": key, "status": "ok", "model": model, "settings": dict(runner.settings), "load_s": load_s,
        "weight_bytes": weights,
        "peak_rss_bytes": process_peak_rss_bytes(),
        "overall": {"audio_s": audio_s, "wall_s": wall_s, "throughput": audio_s / wall_s, **overall},
        "parts": parts, "versions": package_versions(),
    }


def first_load(key: str, model: str) -> dict:
    """Quantize from the provisioned weights into a fresh cache directory (timed); then make sure
    the model cache holds the quantized model, so that run_config loads it from there."""
    import torch

    from steadyscribe.models.cache import model_cache_dir, quantized_model_dir
    from steadyscribe.models.provision import provision
    from steadyscribe.models.quantize import load_quantized_transformers

    _, engine, quantization = CONFIGS[key]
    if (reason := _unsupported(engine, quantization)) is not None:
        return {"key": key, "status": "skipped", "note": reason}
    model_dir = provision(model, "transformers")
    torch.set_num_threads(usable_threads())
    cache = model_cache_dir()
    fresh = Path(tempfile.mkdtemp(prefix=".bench-quantization-", dir=cache))  # same file system as the cache
    try:
        started = time.perf_counter()
        loaded = load_quantized_transformers(model_dir, quantization, "cpu", torch.float32, cache_dir=fresh)
        seconds = time.perf_counter() - started
        peak = process_peak_rss_bytes()
        del loaded
        entry = quantized_model_dir(model_dir, quantization, torch.float32, fresh)
        target = quantized_model_dir(model_dir, quantization, torch.float32, cache)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(entry, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return {"key": key, "status": "ok", "first_load_s": seconds, "first_load_peak_rss_bytes": peak}


# ---- parent ----

def _note(result: dict) -> str:
    settings = result["settings"]
    batch = settings.get("batch_size")
    return f"{settings.get('quantization')}, batch {batch}, plan's predicted peak {mib(settings.get('predicted_peak_bytes'))} MiB"


def write_markdown(run: dict, out: Path) -> None:
    m = run["machine"]
    lines = [
        "**Machine:** " + machine_line(m, run["date"], f"{run['mode']} mode"),
        "",
        "**Set:** " + ", ".join(f"{part}: {v['files']} files, {v['audio_s']:.0f} s, {v['words']} words"
                                for part, v in run["dataset"].items())
        + f". Batch {BATCH}, {m['usable_cores']} threads, every configuration in its own process.",
        "",
    ]
    for model in run["models"]:
        rows = [r for r in run["results"] if r["model"] == model]
        fp32 = next((r for r in rows if r["key"] == "transformers-fp32" and r["status"] == "ok"), None)
        lines += [
            f"**{model}**",
            "",
            "| configuration | weights (MiB) | weights / fp32 | peak RSS (MiB) | load (s) | first load (s) "
            "| first-load peak RSS (MiB) | throughput (audio s / s) | WER | words within 200 ms | load avg at start "
            "| note |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in rows:
            label = CONFIGS[r["key"]][0]
            if r["status"] != "ok":
                note = f"{r['status']}: {r['note']}".replace("|", "/").replace("\n", " ")[:300]
                lines.append(f"| {label} | " + " | ".join(["–"] * 9) + f" | {r['load_average_start'][0]:.1f} | {note} |")
                continue
            share = (r["weight_bytes"] / fp32["weight_bytes"]
                     if fp32 and r["weight_bytes"] is not None else None)
            first = r.get("first_load") or {}
            first_s = f"{first['first_load_s']:.1f}" if "first_load_s" in first else "–"
            o = r["overall"]
            lines.append(
                f"| {label} | {mib(r['weight_bytes'])} | {pct(share)} | {mib(r['peak_rss_bytes'])} | {r['load_s']:.1f} "
                f"| {first_s} | {mib(first.get('first_load_peak_rss_bytes'))} | {o['throughput']:.1f} "
                f"| {pct(o['wer'])} | {pct(o['within_200ms'])} | {r['load_average_start'][0]:.1f} | {_note(r)} |"
            )
        lines.append("")
    lines += [
        "Weights: parameters, buffers and quantized layers' packed weights and scales of the loaded model "
        "(`steadyscribe.models.quantize.weight_bytes`); ctranslate2 keeps its weights outside Python (–). "
        "Peak RSS: the high-water mark of the configuration's process over imports, loading the cached model "
        "and both parts (ru_maxrss, kept across the transformers engine's per-batch resets of it). First load: quantizing from the provisioned fp32 weights and writing the "
        "cache, in a process of its own (its peak RSS includes the imports). Throughput and the accuracy figures "
        "are over both parts; throughput includes decoding the audio, chunking and stabilization.",
        "",
        f"Command: `{run['command']}`; total {run['bench_wall_s']:.0f} s.",
        "",
    ]
    (out / "quantization.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick set's varied files and clips")
    parser.add_argument("--models", help="comma-separated (default: tiny.en,base; tiny.en with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--first-load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = first_load(args.worker, args.models) if args.first_load else run_config(args.worker, args.models, args.data)
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result))
        return 0

    started = time.perf_counter()
    os.environ.update(OFFLINE_ENV)  # inherited by the workers
    mode = "quick" if args.quick else "full"
    keys = args.only.split(",") if args.only else list(CONFIGS)
    if unknown := set(keys) - set(CONFIGS):
        parser.error(f"unknown configurations {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    machine = machine_info()
    data_dir = args.data / mode
    files = [f for f in build_dataset(data_dir, mode) if f.part in PARTS]
    models, notes = available_models(tuple(args.models.split(",")) if args.models else
                                     ("tiny.en",) if args.quick else ("tiny.en", "base"))
    if not models:
        parser.error("; ".join(notes))
    raw_dir = data_dir / "outputs"
    results = []
    for model in models:
        for key in keys:
            label, engine, quantization = CONFIGS[key]
            entry = {"key": key, "label": label, "model": model, "engine": engine, "quantization": quantization,
                     "load_average_start": os.getloadavg()}
            missing = [m for m in REQUIRES[engine] if importlib.util.find_spec(m) is None]
            if missing:
                entry.update(status="skipped", note=f"not installed: {', '.join(missing)}")
            else:
                first = None
                if engine == "transformers" and quantization != "none":
                    print(f"[quantization] {model} {key} first load ...", file=sys.stderr, flush=True)
                    first, why = run_module("bench.quantization", ["--worker", key, "--models", model, "--first-load"],
                                            raw_dir / f"quantization-{model}-{key}-first.json", TIMEOUT_S[mode])
                    if first is None:
                        first = {"status": "failed", "note": why}
                if first is not None and first["status"] != "ok":
                    entry.update(status=first["status"], note=first["note"])
                else:
                    print(f"[quantization] {model} {key} ...", file=sys.stderr, flush=True)
                    worker, why = run_module("bench.quantization", ["--worker", key, "--models", model, "--data", str(data_dir)],
                                             raw_dir / f"quantization-{model}-{key}.json", TIMEOUT_S[mode])
                    if worker is None:
                        entry.update(status="failed", note=why)
                    else:
                        entry.update(worker, first_load=first)
            o = entry.get("overall", {})
            print(f"[quantization] {model} {key}: {entry['status']} {entry.get('note', '')[:300]}"
                  + (f" {o['throughput']:.1f}x WER {pct(o['wer'])}" if o else ""), file=sys.stderr, flush=True)
            results.append(entry)
    machine["load_average_end"] = os.getloadavg()
    run = {
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.quantization" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": machine,
        "models": models,
        "notes": notes,
        "dataset": {part: {"files": sum(f.part == part for f in files),
                           "audio_s": sum(f.duration_s for f in files if f.part == part),
                           "words": sum(len(f.words) for f in files if f.part == part)} for part in PARTS},
        "batch_size": BATCH, "timeout_s": TIMEOUT_S[mode],
        "results": results,
        "bench_wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.json").write_text(json.dumps(run, indent=1))
    write_markdown(run, args.out)
    print(f"[quantization] wrote {args.out / 'quantization'}.json and .md in {run['bench_wall_s']:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
