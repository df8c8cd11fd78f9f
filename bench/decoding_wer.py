"""WER of each engine at a beam size, on real speech and the synthetic fixtures (issue 18).

Windows come from the pipeline's chunk stage; the engine decodes them as the infer stage feeds
it (a file's windows in order, files one after another), and WER is pooled over all files
(Whisper's English normalization). Stabilization is off: this compares decoding alone.
`openai-transcribe` (openai-whisper's own `transcribe`) and `faster-whisper` (its sequential
`transcribe`, float32) are the peers, each on whole files with the same weights and options.

    .venv/bin/python -m bench.decoding_wer --engine ctranslate2 --beam-size 5 --model tiny.en
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from steadyscribe.engines import load_engine
from steadyscribe.engines.base import WindowAudio
from steadyscribe.metrics import corpus_wer
from steadyscribe.records import DecodingOptions, InputFile, Plan
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.tasks.decode import decode_input, load_pcm

ROOT = Path(__file__).resolve().parent.parent
REAL = Path("/work/shared/realspeech")
SYNTHETIC = ROOT / "tests" / "fixtures"
SYNTHETIC_SPEECH = ["straddle_40s", "clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy"]
SAMPLE_RATE = 16000


def dataset() -> list[tuple[str, Path, str]]:
    """(name, audio path, reference text) of every speech file: the real recordings, then the fixtures."""
    files = [(p.stem, p, json.loads(p.with_suffix(".json").read_text())["text"]) for p in sorted(REAL.glob("*.flac"))]
    files += [(n, SYNTHETIC / f"{n}.flac", json.loads((SYNTHETIC / f"{n}.json").read_text())["text"]) for n in SYNTHETIC_SPEECH]
    return files


def with_pink_noise(samples, snr_db: float, seed: int):
    """The samples plus pink (1/f) noise at `snr_db` below their mean power; seeded per file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(len(samples)))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, len(samples))
    signal_power = float(np.mean(np.square(samples)))
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / float(np.mean(np.square(noise))))
    return (np.asarray(samples) + noise).astype(np.float32)


def transcribe_engine(plan: Plan, audio: dict[str, object]) -> dict[str, str]:
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
    import numpy as np
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
    import numpy as np
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True, choices=["whisper", "transformers", "ctranslate2", "openai-transcribe", "faster-whisper"])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--condition-on-previous-text", choices=["true", "false"], default=None)
    parser.add_argument("--detect-language", action="store_true", help="no language given: detected (once per file)")
    parser.add_argument("--noise-snr-db", type=float, help="add seeded pink noise at this SNR (against the file's power)")
    parser.add_argument("--out", help="write texts and WER as JSON here")
    args = parser.parse_args()

    files = dataset()
    work = Path(tempfile.mkdtemp(prefix="decoding-wer-"))
    audio = {name: load_pcm(decode_input(InputFile(str(path)), work).pcm_path) for name, path, _ in files}
    if args.noise_snr_db is not None:
        audio = {name: with_pink_noise(samples, args.noise_snr_db, seed) for seed, (name, samples) in enumerate(audio.items())}
    condition = None if args.condition_on_previous_text is None else args.condition_on_previous_text == "true"
    engine = args.engine if args.engine in ("whisper", "transformers", "ctranslate2") else "whisper"
    language = None if args.detect_language else "en"
    plan = Plan(
        engine=engine, model=args.model, quantization=args.quantization, threads=args.threads, language=language,
        batch_size=1 if engine == "whisper" else args.batch_size,
        # The batched engines refuse condition_on_previous_text; the bench decodes in order itself.
        decoding=DecodingOptions(
            beam_size=args.beam_size, language=language,
            condition_on_previous_text=None if engine == "ctranslate2" else condition,
        ),
    )
    started = time.process_time()
    peers = {"openai-transcribe": transcribe_reference, "faster-whisper": transcribe_faster_whisper}
    if engine == "ctranslate2" and condition:
        peers["ctranslate2"] = transcribe_ctranslate2_in_order
    texts = peers.get(args.engine, transcribe_engine)(plan, audio)
    cpu_s = time.process_time() - started
    real = [f for f in files if f[1].parent == REAL]
    synthetic = [f for f in files if f[1].parent != REAL]
    figures = {
        "system": args.engine, "model": args.model, "beam_size": args.beam_size, "quantization": args.quantization,
        "condition_on_previous_text": condition, "noise_snr_db": args.noise_snr_db, "language": language,
        "wer_all": corpus_wer((ref, texts[name]) for name, _, ref in files),
        "wer_real": corpus_wer((ref, texts[name]) for name, _, ref in real),
        "wer_synthetic": corpus_wer((ref, texts[name]) for name, _, ref in synthetic),
        "reference_words": sum(len(ref.split()) for _, _, ref in files),
        "process_cpu_s": round(cpu_s, 1),
    }
    print(json.dumps(figures))
    if args.out:
        Path(args.out).write_text(json.dumps({**figures, "texts": texts}, indent=1))


if __name__ == "__main__":
    main()
