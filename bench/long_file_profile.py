"""Where the CPU goes on one ten-minute file, stage by stage: steadyscribe's stages against faster-whisper's (issue 17).

The file is bench/whole_run.py's `long` input (the 11 real recordings end to end three times,
1 s apart, 738 s). Each system runs in a process of its own (`--system`), and every stage is
bracketed by time.process_time(): the process's CPU seconds over all its threads (CTranslate2's
included), which a shared machine does not distort as it does wall time.

steadyscribe runs its stages' plain functions as a group does (flows/group.py), without Prefect:
decode_input, the VAD's frame probabilities, plan_windows, the engine's load, transcribe_files,
stabilize, write_file_results. Inside the engine, the CTranslate2 model's calls are timed through
a wrapper (encode; generate with timestamp tokens; generate again without them for windows that
stop in an empty segment; generate at a higher temperature (fallback); align) and so are its
Python steps (log-mel features, word timing). faster-whisper (BatchedInferencePipeline, int8,
batch 8, beam 1, word timestamps; the same tiny.en weights and threads) gets the same wrapper on
its CTranslate2 model, and its decode, VAD, chunking and feature extractor are timed in place.

    .venv/bin/python -m bench.long_file_profile --system steadyscribe   # one JSON line
    .venv/bin/python -m bench.long_file_profile --system faster-whisper
    .venv/bin/python -m bench.long_file_profile --table RUN.json [RUN.json ...]   # markdown table

Experiments (not product paths): `--cut-pauses S` first cuts every pause between the VAD's speech
frames to S seconds, as faster-whisper's VAD chunking drops non-speech (`--confident`: only
confident silence, what the chunk stage may leave out), and maps the words back to the file's time.
"""

from __future__ import annotations

import time

IMPORT_STARTED = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.clips import read_recording  # noqa: E402
from bench.common import SAMPLE_RATE, add_realspeech_option, realspeech_dir, write_wav  # noqa: E402
from bench.whole_run import LONG_PAUSE_S, LONG_ROUNDS, long_file  # noqa: E402
from steadyscribe.metrics import boundary_errors, corpus_wer  # noqa: E402

THREADS = len(os.sched_getaffinity(0))


class Clock:
    """CPU seconds and call counts per stage."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.windows: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str, windows: int = 0):
        started = time.process_time()
        try:
            yield
        finally:
            self.cpu_s[name] += time.process_time() - started
            self.calls[name] += 1
            self.windows[name] += windows

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)

        return timed


def _batch_of(features) -> tuple[int, bool]:
    """(windows in a CTranslate2 features argument, whether they are mel features that the call encodes itself)."""
    shape = list(features.shape)
    return shape[0], shape[-1] == 3000


class TimedCallable:
    """A callable object (faster-whisper's feature extractor) whose calls are timed; its attributes pass through."""

    def __init__(self, function, clock: Clock, name: str) -> None:
        self._function, self._clock, self._name = function, clock, name

    def __getattr__(self, name):
        return getattr(self._function, name)

    def __call__(self, *args, **kwargs):
        with self._clock.stage(self._name):
            return self._function(*args, **kwargs)


class TimedWhisper:
    """A CTranslate2 Whisper model whose calls are timed by kind."""

    def __init__(self, model, clock: Clock, no_timestamps_token: int) -> None:
        self._model = model
        self._clock = clock
        self._no_timestamps = no_timestamps_token

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, features, *args, **kwargs):
        with self._clock.stage("encoder", _batch_of(features)[0]):
            return self._model.encode(features, *args, **kwargs)

    def detect_language(self, *args, **kwargs):
        with self._clock.stage("language"):
            return self._model.detect_language(*args, **kwargs)

    def generate(self, features, prompts, *args, **kwargs):
        count, encodes = _batch_of(features)
        if kwargs.get("sampling_topk", 1) != 1 and kwargs.get("sampling_temperature", 1.0) > 0:
            kind = "generate: fallback (higher temperature)"
        elif all(self._no_timestamps in prompt for prompt in prompts):
            kind = "generate, without timestamp tokens"
        else:
            kind = "generate, with timestamp tokens"
        kind += ", re-encoding" if encodes else ""
        with self._clock.stage(kind, count):
            return self._model.generate(features, prompts, *args, **kwargs)

    def align(self, features, *args, **kwargs):
        count, encodes = _batch_of(features)
        with self._clock.stage("align (DTW)" + (", re-encoding" if encodes else ""), count):
            return self._model.align(features, *args, **kwargs)


def compressed_pauses(
    path: Path, longest_pause_s: float, confident: bool = False
) -> tuple[Path, list[tuple[float, float, float]]]:
    """An experiment, not a product path: the file with every pause between speech (the VAD's
    speech frames) longer than `longest_pause_s` cut to that length, as faster-whisper's VAD
    chunking drops non-speech; and the kept pieces as (start in the new file, start in the file, length).
    `confident`: cut only confident silence instead (the probability, averaged over
    SMOOTHING_FRAMES, below the profile's silence_threshold: what the chunk stage may leave out)."""
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input
    from steadyscribe.records import InputFile
    from steadyscribe.speech import true_runs
    from steadyscribe.vad import FRAME_S, SMOOTHING_FRAMES, VadThresholds, file_probabilities, speech_frames

    work = Path(tempfile.mkdtemp(prefix="long-compressed-"))
    decoded = decode_input(InputFile(str(path)), work)
    samples = np.asarray(load_pcm(decoded.pcm_path))
    probs = file_probabilities(decoded.pcm_path, samples)
    if confident:
        smoothed = np.convolve(probs, np.ones(SMOOTHING_FRAMES) / SMOOTHING_FRAMES, mode="same")
        mask = smoothed >= VadThresholds().silence_threshold
    else:
        mask = speech_frames(probs)
    keep = np.ones(len(samples), dtype=bool)
    half = longest_pause_s / 2
    for start, end in true_runs(~mask):
        first, last = start * FRAME_S + (half if start else 0.0), end * FRAME_S - (half if end < len(mask) else 0.0)
        if last > first:
            keep[round(first * SAMPLE_RATE): round(last * SAMPLE_RATE)] = False
    pieces, at = [], 0.0
    for start, end in true_runs(keep):
        pieces.append((at, start / SAMPLE_RATE, (end - start) / SAMPLE_RATE))
        at += (end - start) / SAMPLE_RATE
    return write_wav(work / "compressed.wav", samples[keep]), pieces


def to_file_time(words: list[dict], pieces: list[tuple[float, float, float]]) -> list[dict]:
    """Words of the compressed file in the original file's time (each by the piece its start lies in)."""
    starts = np.array([piece[0] for piece in pieces])
    out = []
    for word in words:
        at, origin, _ = pieces[max(0, int(np.searchsorted(starts, word["start"], side="right")) - 1)]
        out.append({**word, "start": word["start"] - at + origin, "end": word["end"] - at + origin})
    return out


def steadyscribe_run(path: Path, clock: Clock) -> tuple[list[dict], dict]:
    """Our stages, as a group runs them; (words of the file, facts)."""
    with clock.stage("imports (steadyscribe stages)"):
        from steadyscribe.profiles import load_profile
        from steadyscribe.records import InputFile, Transcript
        from steadyscribe.tasks.chunk import plan_windows
        from steadyscribe.pcm import load_pcm
        from steadyscribe.tasks.decode import decode_input
        from steadyscribe.inference import cached_engine, transcribe_files
        from steadyscribe.tasks.probe import probe_resources
        from steadyscribe.tasks.select import accelerators_needed, select_plan
        from steadyscribe.tasks.stabilize import options_from_profile, stabilize
        from steadyscribe.tasks.write import RunInfo, FileResult, settings_key, write_file_results
        from steadyscribe.engines import available_engines, provisioning_error
        from steadyscribe.vad import file_probabilities
        import datetime

    work = Path(tempfile.mkdtemp(prefix="long-profile-"))
    with clock.stage("plan (probe, select)"):
        profile = load_profile("auto")
        gpu, bitsandbytes = accelerators_needed(profile)  # as the flow probes
        probe = probe_resources([str(work)], check_accelerators=gpu, bitsandbytes_devices=bitsandbytes)
        plan = select_plan(profile, probe, available_engines(), {},
                           lambda model, engine: provisioning_error(model, engine, profile.model_cache_dir))
    with clock.stage("decode"):
        decoded = decode_input(InputFile(str(path)), work)
    samples = load_pcm(decoded.pcm_path)
    with clock.stage("VAD"):
        probabilities = file_probabilities(decoded.pcm_path, samples)
    vad = profile.vad
    with clock.stage("chunk"):
        windows = plan_windows(samples, decoded.file_id, max_window_s=plan.chunk_s, min_pause_s=profile.chunking.min_pause_s,
                               probabilities=probabilities, thresholds=vad)
    with clock.stage("engine load"):
        engine = cached_engine(plan)
    tokenizer = engine._tokenizer("en")
    engine.model = TimedWhisper(engine.model, clock, tokenizer.no_timestamps)
    engine._log_mel = clock.wrap("log-mel features", engine._log_mel)
    engine._segments = clock.wrap("word timing, segments (Python)", engine._segments)
    with clock.stage("inference, all (transcribe_files)"):
        results = transcribe_files(engine, {decoded.file_id: decoded}, windows, work)
    transcript = Transcript.load(results[decoded.file_id].transcript_path)
    with clock.stage("stabilize"):
        stable = stabilize(transcript, samples, options_from_profile(profile.stabilization), windows,
                           probabilities=file_probabilities(decoded.pcm_path, samples), thresholds=vad)
    with clock.stage("write"):
        run = RunInfo("profile", datetime.date.today(), plan, settings_key(plan, {}), "transcribe")
        result = FileResult.from_decoded(decoded, stable, infer_s=0.0, started_at=None, finished_at=None, worker="profile")
        write_file_results(str(work / "out"), run, [result], sidecar_formats=(), row_group_size=10000, part="profile")
    words = [{"word": w.word, "start": w.start, "end": w.end} for w in stable.words]
    facts = {"windows": len(windows), "window_s": [round(w.end - w.start, 1) for w in windows],
             "plan": f"{plan.engine} {plan.model} {plan.quantization} batch {plan.batch_size}, {plan.threads} threads"}
    return words, facts


def faster_whisper_run(path: Path, clock: Clock) -> tuple[list[dict], dict]:
    """faster-whisper's BatchedInferencePipeline as bench/faster_whisper_run.py calls it, stages timed in place."""
    with clock.stage("imports (faster-whisper)"):
        import faster_whisper.transcribe as fw
        from steadyscribe.models.provision import provision
    model_dir = provision("tiny.en", "ctranslate2")
    with clock.stage("engine load"):
        model = fw.WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=THREADS)
        pipeline = fw.BatchedInferencePipeline(model)
    tokenizer = fw.Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    model.model = TimedWhisper(model.model, clock, tokenizer.no_timestamps)
    fw.decode_audio = clock.wrap("decode", fw.decode_audio)
    fw.get_speech_timestamps = clock.wrap("VAD", fw.get_speech_timestamps)
    fw.collect_chunks = clock.wrap("chunk (collect_chunks)", fw.collect_chunks)
    model.feature_extractor = TimedCallable(model.feature_extractor, clock, "log-mel features")
    chunks = []
    collect = fw.collect_chunks

    def counting(*args, **kwargs):
        found = collect(*args, **kwargs)
        chunks.extend(meta["duration"] for meta in found[1])
        return found

    fw.collect_chunks = counting
    align = model.add_word_timestamps
    model.add_word_timestamps = clock.wrap("word timing (add_word_timestamps, DTW included)", align)
    with clock.stage("inference, all (transcribe + segments)"):
        segments, _ = pipeline.transcribe(str(path), batch_size=8, beam_size=1, language="en", word_timestamps=True)
        words = [{"word": w.word, "start": w.start, "end": w.end} for s in segments for w in s.words]
    return words, {"windows": len(chunks), "window_s": [round(c, 1) for c in chunks],
                   "plan": f"faster-whisper BatchedInferencePipeline int8 batch 8 beam 1, {THREADS} threads"}


def long_file_truth(realspeech: Path) -> tuple[list[tuple[str, float, str]], list[dict]]:
    """The long file's recordings as (name, start in the file, reference text), and the reference
    words (file times) of those that have them."""
    names = [flac.stem for flac in sorted(realspeech.glob("*.flac"))] * LONG_ROUNDS
    recordings, words, offset = [], [], 0.0
    for name in names:
        samples, truth = read_recording(realspeech, name)
        recordings.append((name, offset, truth["text"]))
        words += [{**w, "start": w["start"] + offset, "end": w["end"] + offset, "recording": offset} for w in truth.get("words", [])]
        offset += len(samples) / SAMPLE_RATE + LONG_PAUSE_S
    return recordings, words


def wer_per_recording(recordings: list[tuple[str, float, str]], words: list[dict]) -> dict[str, float]:
    """WER of each recording name (its three copies pooled), words assigned by start time."""
    starts = [start - LONG_PAUSE_S / 2 for _, start, _ in recordings] + [float("inf")]
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for i, (name, _, reference) in enumerate(recordings):
        text = " ".join(w["word"] for w in words if starts[i] <= w["start"] < starts[i + 1])
        pairs[name].append((reference, text))
    return {name: round(corpus_wer(texts), 3) for name, texts in pairs.items()}


def timing(reference: list[dict], hypothesis: list[dict]) -> dict:
    """Word-time agreement on the recordings with reference times, each recording matched alone (the set's literal rule)."""
    within = matched = count = 0
    errors = []
    for offset in sorted({w["recording"] for w in reference}):
        ref = [w for w in reference if w["recording"] == offset]
        hyp = [w for w in hypothesis if ref[0]["start"] - 1.0 <= w["start"] <= ref[-1]["end"] + 1.0]
        stats = boundary_errors(ref, hyp, literal=True)
        within += round(stats.within_tolerance_rate * stats.reference_count)
        matched += stats.matched
        count += stats.reference_count
        errors.append(np.abs(stats.errors))
    errors_all = np.concatenate(errors)
    return {"reference_words": count, "matched": matched, "within_200ms": round(within / count, 4),
            "mean_abs_error_s": round(float(errors_all.mean()), 4)}


def measure(system: str, data: Path, realspeech: Path, longest_pause_s: float | None = None, confident: bool = False) -> dict:
    imports_s = time.process_time() - IMPORT_STARTED
    (name, _), = long_file(data, realspeech).items()
    path = data / name
    pieces = None
    if longest_pause_s is not None:
        path, pieces = compressed_pauses(path, longest_pause_s, confident)
    clock = Clock()
    clock.cpu_s["imports (bench, numpy)"] = imports_s
    started = time.process_time()
    words, facts = (steadyscribe_run if system == "steadyscribe" else faster_whisper_run)(path, clock)
    if pieces is not None:
        words = to_file_time(words, pieces)
        facts["pauses_cut_to_s"] = longest_pause_s
        facts["cut"] = "confident silence" if confident else "VAD non-speech"
    total = time.process_time() - started + imports_s
    recordings, reference_words = long_file_truth(realspeech)
    reference = " ".join(text for _, _, text in recordings)
    return {
        "system": system, **facts, "threads": THREADS, "process_cpu_s": round(total, 2),
        "stages": {k: round(v, 2) for k, v in clock.cpu_s.items()},
        "windows_per_stage": {k: v for k, v in clock.windows.items() if v},
        "calls": dict(clock.calls),
        "wer": round(corpus_wer([(reference, " ".join(w["word"] for w in words))]), 4),
        "words": len(words), "timing": timing(reference_words, words),
        "wer_per_recording": wer_per_recording(recordings, words),
        "load_average": round(os.getloadavg()[0], 1),
    }


# The table's rows, in pipeline order; the inference stages are parts of "inference, all".
STAGE_ORDER = (
    "imports (bench, numpy)", "imports (steadyscribe stages)", "imports (faster-whisper)", "plan (probe, select)",
    "decode", "VAD", "chunk", "chunk (collect_chunks)", "engine load", "log-mel features", "encoder",
    "generate, with timestamp tokens", "generate, without timestamp tokens",
    "generate, without timestamp tokens, re-encoding", "generate: fallback (higher temperature)",
    "generate: fallback (higher temperature), re-encoding", "align (DTW)", "word timing, segments (Python)",
    "word timing (add_word_timestamps, DTW included)", "inference, all (transcribe_files)",
    "inference, all (transcribe + segments)", "stabilize", "write",
)


def table(runs: list[dict]) -> str:
    """One column per run: CPU seconds per stage, then totals, windows, WER and word times."""
    seen = {stage for run in runs for stage in run["stages"]}
    stages = [s for s in STAGE_ORDER if s in seen] + sorted(seen - set(STAGE_ORDER))
    header = "| stage (process CPU s) | " + " | ".join(run.get("label", run["system"]) for run in runs) + " |"
    lines = [header, "|---|" + "--:|" * len(runs)]
    for stage in stages:
        cells = []
        for run in runs:
            value = run["stages"].get(stage)
            windows = run["windows_per_stage"].get(stage)
            cells.append("" if value is None else f"{value:.1f}" + (f" ({windows} w)" if windows else ""))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows = [
        ("**process total**", lambda r: f"**{r['process_cpu_s']:.1f}**"),
        ("windows (chunks)", lambda r: str(r["windows"])),
        ("WER", lambda r: f"{100 * r['wer']:.1f}%"),
        ("words within 200 ms (of reference words)", lambda r: f"{100 * r['timing']['within_200ms']:.1f}%"),
        ("mean abs. word-time error", lambda r: f"{1000 * r['timing']['mean_abs_error_s']:.0f} ms"),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(run) for run in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["steadyscribe", "faster-whisper"])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "steadyscribe-whole-run")
    parser.add_argument("--label", help="the run's column title in --table")
    parser.add_argument("--out", type=Path, help="write the run's JSON here too")
    parser.add_argument("--table", type=Path, nargs="+", help="runs' JSON files to tabulate")
    parser.add_argument("--cut-pauses", type=float, help="experiment: cut every pause between speech to this many seconds first")
    parser.add_argument("--confident", action="store_true", help="with --cut-pauses: cut only confident silence")
    add_realspeech_option(parser)
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(p.read_text()) for p in args.table]))
        return
    args.data.mkdir(parents=True, exist_ok=True)
    record = measure(args.system, args.data, realspeech_dir(args.realspeech), args.cut_pauses, args.confident) | ({"label": args.label} if args.label else {})
    text = json.dumps(record)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
