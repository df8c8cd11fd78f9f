"""Batching comparisons (issues 5 and 8), each configuration in its own process.

    .venv/bin/python -m bench.batching [--model tiny.en] [--out DIR] [--only KEY,KEY]

1. Issues 5 and 17, batch sweeps: steadyscribe's transformers engine at batch 1, 4, 8, 24 and its
   ctranslate2 engine (int8) at batch 1, 2, 4, 8, 16, 24 on the same windows (the ten-minute
   file, then the folder of 30 short clips): peak RSS and throughput.
2. Issue 5, cross-file batching: on the 30 short clips at batch 8, steadyscribe's transformers
   engine (windows of all files share batches) against transformers' ASR pipeline called file by
   file (word timestamps; a short clip is one chunk, so each of its batches holds one window).
3. Issue 8: steadyscribe's ctranslate2 engine at int8 against faster-whisper's
   BatchedInferencePipeline at int8, same CTranslate2 weights (provision(model, "ctranslate2")),
   batch 8, on the 30 clips and the ten-minute file. Without onnxruntime faster-whisper has no
   Silero VAD, so its batched pipeline gets fixed 30 s clip_timestamps (bench.systems).

The folder of 30 clips: the full set's 19 one-sentence clips, then the first 11 again with 0.25 s
of digital silence in front (truth shifted), so no two files have the same bytes (steadyscribe
keys files by content hash). Writes DIR/batching.json and DIR/batching.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil

from bench import systems
from bench.common import DEFAULT_DATA, DEFAULT_OUT, SAMPLE_RATE, machine_info, machine_line, package_versions, usable_threads
from bench.dataset import BenchFile, Piece, build_dataset, load_manifest, write_piece
from bench.report import mib, pct
from bench.run import OFFLINE_ENV, available_models, run_module
from bench.score import accuracy
from steadyscribe.memory import process_peak_rss_bytes

CLIP_COUNT = 30
PAD_S = 0.25
BATCH = 8
SWEEP = (1, 4, 8, 24)
CT2_SWEEP = (1, 2, 4, 8, 16, 24)
TIMEOUT_S = 600  # per configuration; the transformers pipeline is the slow one

TRANSFORMERS = {"profile": "cpu-batched", "engine": "transformers"}
CT2 = {"profile": "cpu-fast", "engine": "ctranslate2"}
# key -> (label, runner, options, parts in order, comparison)
CONFIGS: dict[str, tuple[str, str, dict, tuple[str, ...], str]] = {
    **{f"ss-transformers-b{b}": (f"steadyscribe transformers b{b}", "SteadyscribeRunner",
                                 {**TRANSFORMERS, "batch_size": b}, ("long", "clips"), "sweep") for b in SWEEP},
    "hf-pipeline-per-file-b8": ("transformers pipeline, file by file, b8", "HFPipelineRunner",
                                {"chunk_length_s": 30, "batch_size": BATCH, "per_file": True}, ("clips",), "issue5"),
    **{f"ss-ctranslate2-b{b}": (f"steadyscribe ctranslate2 int8 b{b}", "SteadyscribeRunner",
                                {**CT2, "batch_size": b}, ("long", "clips"), "sweep") for b in CT2_SWEEP},
    "faster-whisper-batched-b8": ("faster-whisper BatchedInferencePipeline int8 b8", "FasterWhisperRunner",
                                  {"compute_type": "int8", "batched": True, "batch_size": BATCH}, ("clips", "long"),
                                  "issue8"),
    "faster-whisper-batched-b8-beam1": ("faster-whisper BatchedInferencePipeline int8 b8, beam 1",
                                        "FasterWhisperRunner",
                                        {"compute_type": "int8", "batched": True, "batch_size": BATCH, "beam_size": 1},
                                        ("clips", "long"), "issue8"),
}


def build_set(data_dir: Path) -> list[BenchFile]:
    """The full set's ten-minute file and 30 short clips, under data_dir/batching (manifest.json)."""
    full = build_dataset(data_dir / "full", "full")
    out = data_dir / "batching"
    recipe = json.loads((data_dir / "full" / "manifest.json").read_text())["recipe"] + f"-{CLIP_COUNT}-{PAD_S}"
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("recipe") == recipe:
        return load_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    long_file = next(f for f in full if f.part == "long")
    shutil.copyfile(long_file.absolute_path(data_dir / "full"), out / "long.wav")
    files.append(BenchFile(**{**asdict(long_file), "path": "long.wav"}))
    clips = [f for f in full if f.part == "clips"]
    pad = np.zeros(round(PAD_S * SAMPLE_RATE), np.int16)
    for i in range(CLIP_COUNT):
        clip = clips[i % len(clips)]
        samples = _read_wav(clip.absolute_path(data_dir / "full"))
        words = clip.words
        name = clip.name
        if i >= len(clips):
            samples = np.concatenate([pad, samples])
            words = [{**w, "start": round(w["start"] + PAD_S, 7), "end": round(w["end"] + PAD_S, 7)} for w in words]
            name = f"{clip.name}_pad"
        files.append(write_piece(out, f"clips/{name}.wav", "clips", Piece(samples, words)))
    manifest.write_text(json.dumps({"recipe": recipe, "files": [asdict(f) for f in files]}, indent=1))
    return files


def _read_wav(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").copy()


# ---- worker: one configuration in this process ----

def run_config(key: str, model: str, data_dir: Path) -> dict:
    label, runner_name, options, parts, _ = CONFIGS[key]
    files = load_manifest(data_dir)
    runner = getattr(systems, runner_name)(model, usable_threads(), options)
    runner.prepare()
    started = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - started
    rss_after_load = psutil.Process().memory_info().rss
    results = {}
    try:
        for part in parts:
            part_files = [f for f in files if f.part == part]
            paths = {f.name: f.absolute_path(data_dir) for f in part_files}
            started = time.perf_counter()
            outputs = runner.transcribe(paths)
            wall_s = time.perf_counter() - started
            audio_s = sum(f.duration_s for f in part_files)
            figures, _ = accuracy(part_files, {name: o["words"] for name, o in outputs.items()})
            results[part] = {"files": len(part_files), "audio_s": audio_s, "wall_s": wall_s,
                             "throughput": audio_s / wall_s, **figures}
    finally:
        shutil.rmtree(runner.work_dir, ignore_errors=True)
    settings = dict(runner.settings)
    engine = getattr(runner, "engine", None)
    if engine is not None:  # the batch size the engine ended with (it may lower it under memory pressure)
        settings["batch_size_final"] = getattr(engine, "batch_size", None)
    return {
        "key": key, "label": label, "model": model, "settings": settings, "load_s": load_s,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": process_peak_rss_bytes(),
        "parts": results, "versions": package_versions(),
    }


# ---- parent ----

def _segmentation(by_key: dict) -> str:
    """How faster-whisper's batched pipeline cut the audio in this run (Silero VAD needs onnxruntime)."""
    ran = by_key.get("faster-whisper-batched-b8")
    if ran is None or ran["status"] != "ok":
        return "Silero VAD when onnxruntime is installed (it did not run here)"
    if ran["settings"].get("segmentation") == "Silero VAD":
        return "its Silero VAD (onnxruntime installed): speech regions merged into clips of at most 30 s"
    return "fixed 30 s clip_timestamps: onnxruntime is not installed, so there is no Silero VAD"


def write_markdown(run: dict, out: Path) -> None:
    lines = [
        "**Machine:** " + machine_line(run["machine"], run["date"], f"model {run['model']}"),
        "",
        "**Set:** " + ", ".join(f"{k}: {v['files']} files, {v['audio_s']:.0f} s" for k, v in run["dataset"].items())
        + f". The 30 clips are the full set's {run['distinct_clips']} one-sentence clips plus the first "
          f"{CLIP_COUNT - run['distinct_clips']} again behind {PAD_S} s of silence.",
        "",
    ]
    by_key = {r["key"]: r for r in run["results"]}

    def row(key: str, parts: tuple[str, ...], extra: bool = True) -> str:
        r = by_key.get(key)
        label = CONFIGS[key][0]
        if r is None or r["status"] != "ok":
            return f"| {label} | " + " | ".join(["–"] * (len(parts) * 3 + 3)) + f" | {r['note'][:120] if r else 'not run'} |"
        cells = []
        for p in parts:
            q = r["parts"].get(p)
            cells += [f"{q['throughput']:.1f}", pct(q["wer"]), pct(q["within_200ms"])] if q else ["–"] * 3
        batch = r["settings"].get("batch_size")
        estimated = r["settings"].get("predicted_peak_bytes")  # the plan's estimate: steadyscribe rows only
        return (f"| {label} | " + " | ".join(cells) + f" | {mib(r['peak_rss_bytes'])} | "
                f"{mib(estimated)} | {r['load_s']:.1f} | "
                f"batch {batch}{'' if r['settings'].get('batch_size_final') in (None, batch) else ' -> ' + str(r['settings']['batch_size_final'])}"
                f"{' ' + r['note'] if r.get('note') else ''} |")

    def table(title: str, keys: list[str], parts: tuple[str, ...], names: dict[str, str]) -> None:
        lines.append(f"**{title}**")
        lines.append("")
        head = ["system"] + [f"{names[p]} {h}" for p in parts for h in ("throughput (audio s / s)", "WER", "within 200 ms")]
        lines.append("| " + " | ".join(head + ["peak RSS (MiB)", "estimated peak (MiB)", "load (s)", "note"]) + " |")
        lines.append("|---|" + "--:|" * (len(head) - 1 + 3) + "---|")
        lines.extend(row(k, parts) for k in keys)
        lines.append("")

    names = {"long": "10-min file", "clips": "30 clips"}
    table("Issue 5: steadyscribe transformers engine, batch sweep (each in its own process, same windows)",
          [f"ss-transformers-b{b}" for b in SWEEP], ("long", "clips"), names)
    table("Issue 17: steadyscribe ctranslate2 engine (int8), batch sweep (each in its own process, same windows)",
          [f"ss-ctranslate2-b{b}" for b in CT2_SWEEP], ("long", "clips"), names)
    table("Issue 5: cross-file batching on 30 short clips, batch 8",
          ["ss-transformers-b8", "hf-pipeline-per-file-b8"], ("clips",), names)
    table("Issue 8: ctranslate2 int8, batch 8, same CTranslate2 weights",
          ["ss-ctranslate2-b8", "faster-whisper-batched-b8", "faster-whisper-batched-b8-beam1"], ("clips", "long"), names)
    lines += [
        "Peak RSS is the process's high-water mark over imports, load and both parts (kept across the transformers engine's per-batch resets of it). "
        "Throughput includes decoding the audio (the same PyAV stage for every system) and, for steadyscribe, "
        "chunking and stabilization. WER and within-200 ms are over the part's words.",
        "",
        "Notes: steadyscribe decodes greedily with temperature fallback; the transformers pipeline at its defaults "
        "(greedy, no fallback); faster-whisper at transcribe() defaults (beam 5), and once more with beam 1 "
        "(greedy, as steadyscribe). faster-whisper's BatchedInferencePipeline cuts the audio with "
        f"{_segmentation(by_key)}. A short clip is one window for every system: the pipeline called file by file and faster-whisper's "
        "batched pipeline (one call per file) run each clip as a batch of one, while steadyscribe batches "
        "windows across files.",
        "",
        f"Command: `{run['command']}`" + (f"; total {run['bench_wall_s']:.0f} s." if run["bench_wall_s"] == run["bench_wall_s"] else "."),
        "",
    ]
    (out / "batching.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny.en")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_config(args.worker, args.models, args.data)
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result))
        return 0

    started = time.perf_counter()
    os.environ.update(OFFLINE_ENV)
    machine = machine_info()
    files = build_set(args.data)
    data_dir = args.data / "batching"
    model = args.models
    models, notes = available_models((model,))
    if not models:
        parser.error("; ".join(notes))
    # Issue 8 and the pipeline first: the sweep reuses the steadyscribe runner they already exercise.
    keys = args.only.split(",") if args.only else sorted(CONFIGS, key=lambda k: CONFIGS[k][4] == "sweep")
    results = []
    for key in keys:
        label, runner_name, options, parts, comparison = CONFIGS[key]
        entry = {"key": key, "label": label, "comparison": comparison}
        missing = [m for m in {"SteadyscribeRunner": ("transformers",), "HFPipelineRunner": ("transformers",),
                               "FasterWhisperRunner": ("faster_whisper", "ctranslate2")}[runner_name]
                   if __import__("importlib.util").util.find_spec(m) is None]
        if missing:
            entry.update(status="skipped", note=f"not installed: {', '.join(missing)}")
        else:
            print(f"[batching] {key} ...", file=sys.stderr, flush=True)
            worker, why = run_module("bench.batching", ["--worker", key, "--models", model, "--data", str(data_dir)],
                                     data_dir / "outputs" / f"{model}-{key}.json", TIMEOUT_S)
            entry.update(status="failed", note=why) if worker is None else entry.update(status="ok", **worker)
        print(f"[batching] {key}: {entry['status']} {entry.get('note', '')[:300]} "
              + " ".join(f"{p}={q['throughput']:.1f}x" for p, q in entry.get("parts", {}).items()),
              file=sys.stderr, flush=True)
        results.append(entry)
    machine["load_average_end"] = os.getloadavg()
    previous = args.out / "batching.json"
    if args.only and previous.is_file():
        # A partial rerun keeps the other configurations' earlier results, each with its own run's
        # date and machine line.
        earlier = json.loads(previous.read_text())
        rerun = {entry["key"] for entry in results}
        results = [
            {**entry, "note": f"{entry.get('note', '')} (run of {earlier['date'][:10]}, commit {earlier['machine']['commit'][:10]})".strip()}
            for entry in earlier["results"] if entry["key"] not in rerun
        ] + results
    run = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.batching" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "model": model,
        "machine": machine,
        "dataset": {p: {"files": sum(f.part == p for f in files), "audio_s": sum(f.duration_s for f in files if f.part == p)}
                    for p in ("long", "clips")},
        "distinct_clips": len({f.name.removesuffix("_pad") for f in files if f.part == "clips"}),
        "batch_size": BATCH, "sweep": SWEEP, "ct2_sweep": CT2_SWEEP, "timeout_s": TIMEOUT_S,
        "results": results,
        "bench_wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.json").write_text(json.dumps(run, indent=1))
    write_markdown(run, args.out)
    print(f"[batching] wrote {args.out / 'batching'}.json and .md in {run['bench_wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
