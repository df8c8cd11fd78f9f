"""WER of every engine and peer as shipped, pooled over real and synthetic speech (issue 18).

The set: the 11 real recordings of /work/shared/realspeech (`real`), the three of them mixed with
babble (10 dB SNR), pink (5 dB) and brown (0 dB) noise in tests/fixtures/real (`real_noisy`), and the benchmark's full
synthetic evaluation set (bench/dataset.py, built under --data): `varied` (the speech fixtures),
`clips` (one sentence each) and `long` (ten minutes of the fixtures' sentences in seeded order,
with pauses and noise-only stretches). The synthetic parts reuse the fixtures' sentences, so they
test windowing and context more than vocabulary; the real part is the one that varies voices.

Engines run through the pipeline's stages as the flow does: tasks.decode (`decode_input`),
tasks.chunk (`plan_windows` with the profile's VAD and chunking defaults), tasks.infer
(`transcribe_files`) and tasks.stabilize (`stabilize`, on). WER is over the stabilized words; the
raw (unstabilized) words' WER is kept too. The peers (`faster-whisper`: its sequential
`transcribe`, float32; `openai-transcribe`: openai-whisper's own `transcribe`) get whole files
with the same weights, language and beam size, word timestamps on.

Each run writes bench/results/decoding_runs/<label>.json (texts per file, process CPU seconds);
`--report` pools them into bench/results/decoding.json and decoding.md. CPU time is the
process's CPU seconds (all threads) over the audio seconds: the machine is shared, wall time is
no measure here.

    .venv/bin/python -m bench.decoding_pooled --system ctranslate2 --model tiny.en --beam-size 1
    .venv/bin/python -m bench.decoding_pooled --system faster-whisper --model base --beam-size 5 --parts real,varied
    .venv/bin/python -m bench.decoding_pooled --report
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.dataset import SAMPLE_RATE, build_dataset, write_wav
from bench.run import DEFAULT_DATA
from bench.decoding_wer import REAL, transcribe_faster_whisper, transcribe_reference, with_pink_noise
from steadyscribe.memory import process_peak_rss_bytes
from steadyscribe.metrics import corpus_wer
from steadyscribe.records import DecodingOptions, InputFile, Plan
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.tasks.decode import decode_input, load_pcm
from steadyscribe.tasks.infer import cached_engine, transcribe_files
from steadyscribe.tasks.stabilize import StabilizeOptions, stabilize
from steadyscribe.vad import file_probabilities

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "bench" / "results" / "decoding_runs"
PARTS = ("real", "real_noisy", "varied", "clips", "long")
REAL_NOISY = ROOT / "tests" / "fixtures" / "real"  # mixes named RECORDING__NOISE_SNR.flac
ENGINES = ("ctranslate2", "transformers", "whisper")
PEERS = ("faster-whisper", "openai-transcribe")


def speech_files(data_dir: Path, parts: list[str]) -> list[tuple[str, str, Path, str]]:
    """(part, name, audio path, reference text) of every speech file of the chosen parts."""
    files = []
    if "real" in parts:
        files += [("real", p.stem, p, json.loads(p.with_suffix(".json").read_text())["text"]) for p in sorted(REAL.glob("*.flac"))]
    if "real_noisy" in parts:
        files += [("real_noisy", p.stem, p, json.loads(p.with_suffix(".json").read_text())["text"])
                  for p in sorted(REAL_NOISY.glob("*__*.flac"))]
    synthetic = [f for f in build_dataset(data_dir, "full") if f.part in parts]
    files += [(f.part, f.name, f.absolute_path(data_dir), f.text) for f in synthetic]
    return files


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
    from steadyscribe.records import Transcript

    for file_id, result in results.items():
        transcript = Transcript.load(result.transcript_path)
        raw[by_id[file_id]] = " ".join(w.word for w in transcript.words)
        file_windows = [w for w in windows if w.file_id == file_id]
        stabilized = stabilize(transcript, load_pcm(decoded[by_id[file_id]].pcm_path), StabilizeOptions(), file_windows,
                               probabilities=probabilities[file_id])
        stable[by_id[file_id]] = " ".join(w.word for w in stabilized.words)
    return stable, raw, load_cpu_s, time.process_time() - started


def label_of(args: argparse.Namespace) -> str:
    parts = [args.system, args.model, f"beam{args.beam_size}"]
    parts += [args.quantization] if args.quantization != "none" else []
    parts += [f"batch{args.batch_size}"] if args.system in ("ctranslate2", "transformers") and args.batch_size != 8 else []
    parts += [f"snr{args.noise_snr_db:g}"] if args.noise_snr_db is not None else []
    parts += ["-".join(args.parts)]
    return "_".join(parts)


def measure(args: argparse.Namespace) -> None:
    files = speech_files(args.data, args.parts)
    work = Path(tempfile.mkdtemp(prefix="decoding-pooled-"))
    inputs = {name: path for _, name, path, _ in files}
    if args.noise_snr_db is not None:
        # The noisy copy is a new input file: decoded, chunked and hashed as any input is.
        for seed, (name, path) in enumerate(list(inputs.items())):
            samples = np.asarray(load_pcm(decode_input(InputFile(str(path)), work).pcm_path))
            inputs[name] = write_wav(work / f"{name}__snr{args.noise_snr_db:g}.wav", with_pink_noise(samples, args.noise_snr_db, seed))
    engine = args.system if args.system in ENGINES else "whisper"
    plan = Plan(
        engine=engine, model=args.model, quantization=args.quantization, threads=args.threads, language="en",
        batch_size=1 if engine == "whisper" else args.batch_size,
        decoding=DecodingOptions(beam_size=args.beam_size, language="en", best_of=args.best_of),
    )
    raw: dict[str, str] | None = None
    load_cpu_s = 0.0
    if args.system in ENGINES:
        texts, raw, load_cpu_s, cpu_s = run_engine(plan, inputs, work)
    else:
        audio = {name: load_pcm(decode_input(InputFile(str(path)), work).pcm_path) for name, path in inputs.items()}
        started = time.process_time()
        peer = transcribe_faster_whisper if args.system == "faster-whisper" else transcribe_reference
        texts = peer(plan, audio)
        cpu_s = time.process_time() - started
    audio_s = sum(len(load_pcm(decode_input(InputFile(str(p)), work).pcm_path)) for p in inputs.values()) / SAMPLE_RATE
    record = {
        "label": label_of(args), "system": args.system, "model": args.model, "beam_size": args.beam_size,
        "quantization": args.quantization, "batch_size": plan.batch_size, "threads": args.threads,
        "noise_snr_db": args.noise_snr_db, "best_of": args.best_of, "parts": args.parts,
        "audio_s": round(audio_s, 1), "process_cpu_s": round(cpu_s, 1), "load_cpu_s": round(load_cpu_s, 1),
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4),
        "peak_rss_mib": round(process_peak_rss_bytes() / 2**20),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; load average at start {args.load_at_start}",
        "references": {name: ref for _, name, _, ref in files},
        "parts_of": {name: part for part, name, _, _ in files},
        "texts": texts,
        "raw_texts": raw,
    }
    record["wer"] = corpus_wer((ref, texts[name]) for _, name, _, ref in files)
    if raw is not None:
        record["wer_raw"] = corpus_wer((ref, raw[name]) for _, name, _, ref in files)
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{record['label']}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("texts", "raw_texts", "references", "parts_of")}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=[*ENGINES, *PEERS])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--best-of", type=int, default=None)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--noise-snr-db", type=float, help="pink noise at this SNR on every file (seeded per file)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "full")
    parser.add_argument("--report", action="store_true", help="pool the stored runs into decoding.json and decoding.md")
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    args.load_at_start = round(__import__("os").getloadavg()[0], 1)
    if args.report:
        from bench.decoding_report import report

        report(RUNS, ROOT / "bench" / "results")
    else:
        measure(args)


if __name__ == "__main__":
    main()
