"""Decoding options: WER and CPU time of every engine and peer per model, beam size and quantization (issue 18).

Three modes:

- measure (the default): the engines run through the pipeline's stages as the flow does:
  tasks.decode (`decode_input`), tasks.chunk (`plan_windows` with the profile's VAD and chunking
  defaults), steadyscribe.inference (`transcribe_files`) and tasks.stabilize (`stabilize`, on). WER is over
  the stabilized words; the raw (unstabilized) words' WER is kept too. The set (`--parts`): the 11
  real recordings of the real-speech folder (`real`), the three of them mixed with babble (10 dB
  SNR), pink (5 dB) and brown (0 dB) noise in tests/fixtures/real (`real_noisy`), and the
  benchmark's full synthetic evaluation set (bench/dataset.py, built under --data): `varied` (the
  speech fixtures), `clips` (one sentence each) and `long` (ten minutes of the fixtures' sentences
  in seeded order, with pauses and noise-only stretches). The synthetic parts reuse the fixtures'
  sentences, so they test windowing and context more than vocabulary; the real part is the one
  that varies voices. Each run writes RUNS/<label>.json (texts per file, process CPU seconds).
  CPU time is the process's CPU seconds (all threads) over the audio seconds: the machine is
  shared, wall time is no measure here.
- `--report`: pools the stored runs into decoding.json and decoding.md beside the runs folder
  (bench/results). A configuration (system, model, beam, quantization, batch, noise, best_of)
  may have been run in several part-runs (to keep each run short); its WER is pooled over all
  files of all its runs: total word edits over total reference words, after Whisper's English
  normalization.
- `--decoding-only`: decoding alone, stabilization off. Windows come from the chunk stage without
  the VAD; the engine decodes them as the infer stage feeds it (a file's windows in order, files
  one after another). The set: the real recordings and the six speech fixtures of tests/fixtures.
  Prints one JSON line (`--out`: with the texts, to a file); nothing is stored.

The peers get whole files with the same weights, language and beam size, word timestamps on:
`faster-whisper` (its sequential `transcribe`, float32) and `openai-transcribe` (openai-whisper's
own `transcribe`). WER is pooled over files (Whisper's English normalization).

    .venv/bin/python -m bench.decoding --system ctranslate2 --model tiny.en --beam-size 1
    .venv/bin/python -m bench.decoding --system faster-whisper --model base --beam-size 5 --parts real,varied
    .venv/bin/python -m bench.decoding --report
    .venv/bin/python -m bench.decoding --decoding-only --system ctranslate2 --beam-size 5 --model tiny.en
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import (
    DEFAULT_DATA, DEFAULT_OUT, FIXTURES_DIR, SAMPLE_RATE, add_realspeech_option, git, pink_noise, realspeech_dir, write_wav,
)
from bench.dataset import build_dataset
from steadyscribe.engines import load_engine
from steadyscribe.engines.base import WindowAudio
from steadyscribe.memory import process_peak_rss_bytes
from steadyscribe.metrics import corpus_wer, normalize_text
from steadyscribe.records import DecodingOptions, InputFile, Plan, Transcript
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.inference import cached_engine, transcribe_files
from steadyscribe.tasks.stabilize import StabilizeOptions, stabilize
from steadyscribe.vad import file_probabilities

RUNS = DEFAULT_OUT / "decoding_runs"
PARTS = ("real", "real_noisy", "varied", "clips", "long")
SYNTHETIC_PARTS = ("varied", "clips", "long")
REAL_NOISY = FIXTURES_DIR / "real"  # mixes named RECORDING__NOISE_SNR.flac
# --decoding-only's synthetic files, in this order (it seeds --noise-snr-db).
FIXTURE_SPEECH = ("straddle_40s", "clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy")
ENGINES = ("ctranslate2", "transformers", "whisper")
PEERS = ("faster-whisper", "openai-transcribe")
# Options a mode does not read: given there, they are refused rather than ignored.
UNREAD = {"measure": ("condition_on_previous_text", "detect_language", "out"),
          "decoding-only": ("best_of", "parts", "data", "runs")}
KEY_FIELDS = ("system", "model", "beam_size", "quantization", "batch_size", "noise_snr_db", "best_of")
NAMES = {
    "ctranslate2": "steadyscribe ctranslate2 (batch 8)",
    "transformers": "steadyscribe transformers (batch 8)",
    "whisper": "steadyscribe whisper (batch 1, previous text as prompt)",
    "faster-whisper": "faster-whisper `transcribe` (fp32)",
    "openai-transcribe": "openai-whisper `transcribe`",
}


# ---- the sets: (part, name, audio path, reference text) ---------------------------------------


def _with_truth(part: str, paths) -> list[tuple[str, str, Path, str]]:
    return [(part, p.stem, p, json.loads(p.with_suffix(".json").read_text())["text"]) for p in paths]


def speech_files(data_dir: Path, parts: list[str], realspeech: Path | None) -> list[tuple[str, str, Path, str]]:
    """Every speech file of the chosen parts (measure mode)."""
    files = []
    if "real" in parts:
        files += _with_truth("real", sorted(realspeech_dir(realspeech).glob("*.flac")))
    if "real_noisy" in parts:
        files += _with_truth("real_noisy", sorted(REAL_NOISY.glob("*__*.flac")))
    if any(part in parts for part in SYNTHETIC_PARTS):
        synthetic = [f for f in build_dataset(data_dir, "full") if f.part in parts]
        files += [(f.part, f.name, f.absolute_path(data_dir), f.text) for f in synthetic]
    return files


def decoding_only_files(realspeech: Path) -> list[tuple[str, str, Path, str]]:
    """The real recordings, then the speech fixtures (--decoding-only)."""
    return _with_truth("real", sorted(realspeech.glob("*.flac"))) + _with_truth(
        "fixtures", [FIXTURES_DIR / f"{name}.flac" for name in FIXTURE_SPEECH])


def with_pink_noise(samples, snr_db: float, seed: int):
    """The samples plus pink (1/f) noise at `snr_db` below their mean power; seeded per file."""
    noise = pink_noise(len(samples), float(np.mean(np.square(samples))), snr_db, seed)
    return (np.asarray(samples) + noise).astype(np.float32)


# ---- engines and peers: texts per file name ----------------------------------------------------


def run_engine(plan: Plan, inputs: dict[str, Path], work: Path) -> tuple[dict[str, str], dict[str, str], float, float]:
    """(stabilized texts, raw texts, load CPU s, transcription CPU s) through the pipeline's stages."""
    started = time.process_time()
    engine = cached_engine(plan)
    load_cpu_s = time.process_time() - started
    started = time.process_time()
    decoded = {name: decode_input(InputFile(str(path)), work) for name, path in inputs.items()}
    by_id = {d.file_id: name for name, d in decoded.items()}
    windows, probabilities = [], {}
    for d in decoded.values():
        samples = load_pcm(d.pcm_path)
        probabilities[d.file_id] = file_probabilities(d.pcm_path, samples)
        windows += plan_windows(samples, d.file_id, max_window_s=plan.chunk_s, min_pause_s=0.3,
                                probabilities=probabilities[d.file_id])
    results = transcribe_files(engine, {d.file_id: d for d in decoded.values()}, windows, work)
    stable, raw = {}, {}
    for file_id, result in results.items():
        transcript = Transcript.load(result.transcript_path)
        raw[by_id[file_id]] = " ".join(w.word for w in transcript.words)
        file_windows = [w for w in windows if w.file_id == file_id]
        stabilized = stabilize(transcript, load_pcm(decoded[by_id[file_id]].pcm_path), StabilizeOptions(), file_windows,
                               probabilities=probabilities[file_id])
        stable[by_id[file_id]] = " ".join(w.word for w in stabilized.words)
    return stable, raw, load_cpu_s, time.process_time() - started


def transcribe_engine(plan: Plan, audio: dict[str, object]) -> dict[str, str]:
    """The engine alone on the chunk stage's windows (no VAD), files one after another (--decoding-only)."""
    engine = load_engine(plan)
    windows = []
    for name, samples in audio.items():
        for window in plan_windows(samples, name, max_window_s=plan.chunk_s):
            first, last = round(window.start * SAMPLE_RATE), round(window.end * SAMPLE_RATE)
            windows.append(WindowAudio(window, samples[first:last]))
    texts: dict[str, list[tuple[int, str]]] = {name: [] for name in audio}
    for result in engine.transcribe(windows):
        texts[result.window.file_id] += [(result.window.index, s.text) for s in result.segments]
    return {name: " ".join(text for _, text in sorted(parts, key=lambda p: p[0])) for name, parts in texts.items()}


def transcribe_ctranslate2_in_order(plan: Plan, audio: dict[str, object]) -> dict[str, str]:
    """The measurement behind condition_on_previous_text on the batched engines: CTranslate2
    decoding each file's windows in order, each prompted with the text of the windows before it
    (batch 1, so each prompt is known), against its usual independent windows."""
    from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine
    from steadyscribe.engines.decoding import prompt_tokens

    engine = CTranslate2Engine(plan)
    engine.batch_size = 1
    encode = engine._tokenizer("en").encode
    texts = {}
    for name, samples in audio.items():
        previous: list[int] = []
        parts = []
        for window in plan_windows(samples, name, max_window_s=plan.chunk_s):
            engine.prompt = prompt_tokens(encode, plan.decoding, previous)
            first, last = round(window.start * SAMPLE_RATE), round(window.end * SAMPLE_RATE)
            (result,) = engine.transcribe([WindowAudio(window, samples[first:last])])
            text = " ".join(s.text for s in result.segments)
            parts.append(text)
            previous = (previous + encode(" " + text))[-223:] if text else previous
        texts[name] = " ".join(parts)
    return texts


def transcribe_reference(plan: Plan, audio: dict[str, object]) -> dict[str, str]:
    """openai-whisper's own transcribe, whole file, default options but the beam size and language."""
    import torch

    from steadyscribe.models.provision import load_openai_whisper

    torch.set_num_threads(plan.threads)
    model = load_openai_whisper(plan.model, device="cpu", cache_dir=None)
    beam = plan.decoding.beam_size
    return {
        name: model.transcribe(
            torch.from_numpy(np.asarray(samples, dtype=np.float32)), language=plan.language, fp16=False, word_timestamps=True,
            beam_size=beam if beam > 1 else None, best_of=plan.decoding.best_of, verbose=None,
        )["text"].strip()
        for name, samples in audio.items()
    }


def transcribe_faster_whisper(plan: Plan, audio: dict[str, object]) -> dict[str, str]:
    """faster-whisper's sequential transcribe (the peer), whole file, float32, same weights."""
    from faster_whisper import WhisperModel

    from steadyscribe.models.provision import provision

    model = WhisperModel(str(provision(plan.model, "ctranslate2")), device="cpu", compute_type="float32",
                         cpu_threads=plan.threads)
    texts = {}
    for name, samples in audio.items():
        segments, _ = model.transcribe(np.asarray(samples, dtype=np.float32), language=plan.language, beam_size=plan.decoding.beam_size,
                                       word_timestamps=True)
        texts[name] = " ".join(s.text.strip() for s in segments)
    return texts


PEER_RUNS = {"openai-transcribe": transcribe_reference, "faster-whisper": transcribe_faster_whisper}


# ---- measure and --decoding-only ---------------------------------------------------------------


def condition_of(args: argparse.Namespace) -> bool | None:
    return None if args.condition_on_previous_text is None else args.condition_on_previous_text == "true"


def plan_of(args: argparse.Namespace) -> Plan:
    """The plan every system runs with (the peers read its model, threads, language and decoding)."""
    engine = args.system if args.system in ENGINES else "whisper"
    language = None if args.detect_language else "en"
    condition = condition_of(args)
    return Plan(
        engine=engine, model=args.model, quantization=args.quantization, threads=args.threads, language=language,
        batch_size=1 if engine == "whisper" else args.batch_size,
        # The batched engines refuse condition_on_previous_text; --decoding-only decodes in order itself.
        decoding=DecodingOptions(
            beam_size=args.beam_size, language=language, best_of=args.best_of,
            condition_on_previous_text=None if engine == "ctranslate2" else condition,
        ),
    )


def label_of(args: argparse.Namespace) -> str:
    parts = [args.system, args.model, f"beam{args.beam_size}"]
    parts += [args.quantization] if args.quantization != "none" else []
    parts += [f"batch{args.batch_size}"] if args.system in ("ctranslate2", "transformers") and args.batch_size != 8 else []
    parts += [f"snr{args.noise_snr_db:g}"] if args.noise_snr_db is not None else []
    parts += ["-".join(args.parts)]
    return "_".join(parts)


def measure(args: argparse.Namespace) -> None:
    files = speech_files(args.data, args.parts, args.realspeech)
    work = Path(tempfile.mkdtemp(prefix="decoding-pooled-"))
    inputs = {name: path for _, name, path, _ in files}
    if args.noise_snr_db is not None:
        # The noisy copy is a new input file: decoded, chunked and hashed as any input is.
        for seed, (name, path) in enumerate(list(inputs.items())):
            samples = np.asarray(load_pcm(decode_input(InputFile(str(path)), work).pcm_path))
            inputs[name] = write_wav(work / f"{name}__snr{args.noise_snr_db:g}.wav", with_pink_noise(samples, args.noise_snr_db, seed))
    plan = plan_of(args)
    raw: dict[str, str] | None = None
    load_cpu_s = 0.0
    if args.system in ENGINES:
        texts, raw, load_cpu_s, cpu_s = run_engine(plan, inputs, work)
    else:
        audio = {name: load_pcm(decode_input(InputFile(str(path)), work).pcm_path) for name, path in inputs.items()}
        started = time.process_time()
        texts = PEER_RUNS[args.system](plan, audio)
        cpu_s = time.process_time() - started
    audio_s = sum(len(load_pcm(decode_input(InputFile(str(p)), work).pcm_path)) for p in inputs.values()) / SAMPLE_RATE
    record = {
        "label": label_of(args), "system": args.system, "model": args.model, "beam_size": args.beam_size,
        "quantization": args.quantization, "batch_size": plan.batch_size, "threads": args.threads,
        "noise_snr_db": args.noise_snr_db, "best_of": args.best_of, "parts": args.parts,
        "audio_s": round(audio_s, 1), "process_cpu_s": round(cpu_s, 1), "load_cpu_s": round(load_cpu_s, 1),
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4),
        "peak_rss_mib": round(process_peak_rss_bytes() / 2**20),
        "commit": git("rev-parse", "--short", "HEAD"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; load average at start {args.load_at_start}",
        "references": {name: ref for _, name, _, ref in files},
        "parts_of": {name: part for part, name, _, _ in files},
        "texts": texts,
        "raw_texts": raw,
    }
    record["wer"] = corpus_wer((ref, texts[name]) for _, name, _, ref in files)
    if raw is not None:
        record["wer_raw"] = corpus_wer((ref, raw[name]) for _, name, _, ref in files)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / f"{record['label']}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("texts", "raw_texts", "references", "parts_of")}))


def measure_decoding_only(args: argparse.Namespace) -> None:
    files = decoding_only_files(realspeech_dir(args.realspeech))
    work = Path(tempfile.mkdtemp(prefix="decoding-wer-"))
    audio = {name: load_pcm(decode_input(InputFile(str(path)), work).pcm_path) for _, name, path, _ in files}
    if args.noise_snr_db is not None:
        audio = {name: with_pink_noise(samples, args.noise_snr_db, seed) for seed, (name, samples) in enumerate(audio.items())}
    plan = plan_of(args)
    condition = condition_of(args)
    started = time.process_time()
    runs = dict(PEER_RUNS)
    if plan.engine == "ctranslate2" and condition:
        runs["ctranslate2"] = transcribe_ctranslate2_in_order
    texts = runs.get(args.system, transcribe_engine)(plan, audio)
    cpu_s = time.process_time() - started
    real = [f for f in files if f[0] == "real"]
    synthetic = [f for f in files if f[0] != "real"]
    figures = {
        "system": args.system, "model": args.model, "beam_size": args.beam_size, "quantization": args.quantization,
        "condition_on_previous_text": condition, "noise_snr_db": args.noise_snr_db, "language": plan.language,
        "wer_all": corpus_wer((ref, texts[name]) for _, name, _, ref in files),
        "wer_real": corpus_wer((ref, texts[name]) for _, name, _, ref in real),
        "wer_synthetic": corpus_wer((ref, texts[name]) for _, name, _, ref in synthetic),
        "reference_words": sum(len(ref.split()) for _, _, _, ref in files),
        "process_cpu_s": round(cpu_s, 1),
    }
    print(json.dumps(figures))
    if args.out:
        Path(args.out).write_text(json.dumps({**figures, "texts": texts}, indent=1))


# ---- --report ----------------------------------------------------------------------------------


def pooled(runs: list[dict]) -> dict:
    references, texts, raw, parts = {}, {}, {}, {}
    cpu_s = audio_s = 0.0
    for run in runs:
        references |= run["references"]
        texts |= run["texts"]
        parts |= run["parts_of"]
        if run.get("raw_texts") is not None:
            raw |= run["raw_texts"]
        cpu_s += run["process_cpu_s"]
        audio_s += run["audio_s"]
    words = sum(len(normalize_text(r).split()) for r in references.values())
    figures = {
        **{k: runs[0][k] for k in KEY_FIELDS},
        "files": len(references), "reference_words": words,
        "parts": sorted({*parts.values()}),
        "wer": corpus_wer((references[n], texts[n]) for n in references),
        "wer_raw": corpus_wer((references[n], raw[n]) for n in references) if len(raw) == len(references) else None,
        "wer_real": corpus_wer((references[n], texts[n]) for n in references if parts[n].startswith("real")),
        "wer_synthetic": corpus_wer((references[n], texts[n]) for n in references if not parts[n].startswith("real")),
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "commits": sorted({run["commit"] for run in runs}),
        "runs": [run["label"] for run in runs],
    }
    return figures


def report(runs_dir: Path, results_dir: Path) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sorted(runs_dir.glob("*.json")):
        run = json.loads(path.read_text())
        groups[tuple(run.get(k) for k in KEY_FIELDS)].append(run)
    rows = [pooled(runs) for runs in groups.values()]
    rows.sort(key=lambda r: (r["model"], r["noise_snr_db"] is not None, r["beam_size"], r["system"], r["quantization"]))
    (results_dir / "decoding.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Decoding: WER and CPU time per engine and beam size (issue 18)",
        "",
        "Generated by `python -m bench.decoding --report` from bench/results/decoding_runs/.",
        "WER pooled over every file (real recordings and the synthetic evaluation set), stabilization on;",
        "`WER real`: the recordings and their noisy mixes; `raw`: the same run's words before stabilization. CPU: process CPU seconds (all threads) per",
        "audio second, transcription only (model load excluded), 2 threads: the machine was shared, so",
        "wall time is not reported.",
        "",
        "| model | system | beam | quant | noise | words | WER | WER raw | WER real | WER synthetic | CPU s / audio s | peak RSS MiB |",
        "|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        raw = f"{100 * r['wer_raw']:.2f}%" if r["wer_raw"] is not None else "–"
        noise = f"pink {r['noise_snr_db']:g} dB" if r["noise_snr_db"] is not None else "clean"
        name = NAMES.get(r["system"], r["system"])
        if r["system"] in ("ctranslate2", "transformers") and r["batch_size"] != 8:
            name = name.replace("batch 8", f"batch {r['batch_size']}")
        lines.append(
            f"| {r['model']} | {name} | {r['beam_size']} | {r['quantization']} | {noise} | {r['reference_words']} "
            f"| {100 * r['wer']:.2f}% | {raw} | {100 * r['wer_real']:.2f}% | {100 * r['wer_synthetic']:.2f}% "
            f"| {r['cpu_s_per_audio_s']:.3f} | {r['peak_rss_mib']} |"
        )
    lines += ["", *summary(rows)]
    (results_dir / "decoding.md").write_text("\n".join(lines) + "\n")
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Per model, clean audio: WER (real / all) and CPU at beam 1 and beam 5 per system, full set only."""
    lines = []
    for model in sorted({r["model"] for r in rows}):
        lines += [
            f"**{model}**, clean, pooled WER (real recordings and mixes only) and CPU s per audio s; "
            "`–`: not measured (or not over the whole set)",
            "",
            "| system | beam 1 WER | beam 1 CPU | beam 5 WER | beam 5 CPU |",
            "|---|--:|--:|--:|--:|",
        ]
        # Systems in NAMES' order, each unquantized first: a set's own order changes from run to run.
        systems = sorted({(r["system"], r["quantization"]) for r in rows if r["model"] == model and r["noise_snr_db"] is None},
                         key=lambda k: (list(NAMES).index(k[0]) if k[0] in NAMES else 99, k[1] != "none", k[1]))
        for system, quantization in systems:
            cells = []
            for beam in (1, 5):
                found = [r for r in rows if (r["model"], r["system"], r["quantization"], r["beam_size"]) == (model, system, quantization, beam)
                         and r["noise_snr_db"] is None and r["reference_words"] >= 2000]
                cells += ([f"{100 * found[0]['wer']:.2f}% ({100 * found[0]['wer_real']:.2f}%)", f"{found[0]['cpu_s_per_audio_s']:.3f}"]
                          if found else ["–", "–"])
            name = NAMES.get(system, system) + (f", {quantization}" if quantization != "none" else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=[*ENGINES, *PEERS])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise-snr-db", type=float, help="pink noise at this SNR on every file (seeded per file)")
    add_realspeech_option(parser)
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help=f"where measure mode stores its runs and --report reads them (default {RUNS}); "
                             "--report writes decoding.json and decoding.md into its parent")
    parser.add_argument("--report", action="store_true", help="pool the stored runs into decoding.json and decoding.md")
    parser.add_argument("--decoding-only", action="store_true",
                        help="decoding alone (no VAD, no stabilization) on the real recordings and the speech fixtures")
    measuring = parser.add_argument_group("measure mode only")
    measuring.add_argument("--best-of", type=int, default=None)
    measuring.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    measuring.add_argument("--data", type=Path, default=DEFAULT_DATA / "full", help="where the synthetic set is built")
    alone = parser.add_argument_group("--decoding-only only")
    alone.add_argument("--condition-on-previous-text", choices=["true", "false"], default=None)
    alone.add_argument("--detect-language", action="store_true", help="no language given: detected (once per file)")
    alone.add_argument("--out", help="write texts and WER as JSON here")
    args = parser.parse_args()
    if args.report:
        report(args.runs, args.runs.parent)
        return
    if args.system is None:
        parser.error("--system is required (unless --report)")
    mode = "decoding-only" if args.decoding_only else "measure"
    if given := [name for name in UNREAD[mode] if getattr(args, name) != parser.get_default(name)]:
        parser.error(f"--{given[0].replace('_', '-')} is not read in {mode} mode")
    args.parts = args.parts.split(",")
    args.load_at_start = round(os.getloadavg()[0], 1)
    (measure_decoding_only if args.decoding_only else measure)(args)


if __name__ == "__main__":
    main()
