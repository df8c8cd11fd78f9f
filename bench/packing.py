"""Does cross-file window packing cost accuracy, and which silence between files? (issue 17)
And does shorter padding of short windows? (issue 31)

Runs the pipeline's own stages (decode, chunk, infer, stabilize) on a folder of short clips
(bench/clips.py: real speech first) once without packing, once per gap and once per set of
padding lengths, with one engine loaded once, and reports pooled WER, within-200 ms on the
word-timed clips, the words that landed in the wrong file (a clip's insertions that its window
mate's reference holds), the windows decoded and the engine's CPU seconds.

    .venv/bin/python -m bench.packing --count 120 --gaps 0.5 1 2 --out bench/results/packing.json
    .venv/bin/python -m bench.packing --count 120 --gaps --paddings 20,30 15,20,30 10,15,20,30
    .venv/bin/python -m bench.packing --hour --gaps --paddings 20,30 15,20,30

`--hour` runs bench/whole_run.py's hour-long file instead of the clips: there the windows padded
shorter are mostly the rests of windows whose text ended early and the stretches decoded again.

Shorter padding (`--paddings`, CTranslate2 only) is an experiment, not a product path: each
window is padded to the shortest of the given lengths that holds it instead of to Whisper's 30 s
(CTranslate2's encoder takes fewer frames; the decoder then attends over fewer).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from bench.clips import build_clips
from bench.common import DEFAULT_DATA, add_realspeech_option, realspeech_dir
from bench.dataset import BenchFile
from bench.whole_run import hour_file
from bench.score import TOLERANCE_S
from steadyscribe.engines import load_engine
from steadyscribe.metrics import boundary_errors, corpus_wer, normalize_text
from steadyscribe.profiles import load_profile
from steadyscribe.records import InputFile, Plan, Transcript
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.inference import Packing, transcribe_files
from steadyscribe.engines.packing import PackedWindow, pack_windows
from steadyscribe.tasks.stabilize import options_from_profile, stabilize
from steadyscribe.vad import file_probabilities


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(engine, decoded, windows_of, packing: Packing | None, work_dir: Path, profile) -> dict:
    windows = [w for file_windows in windows_of.values() for w in file_windows]
    items = pack_windows(windows, packing.max_window_s, packing.gap_s) if packing else windows
    decoded_windows = []
    counting = _Counting(engine, decoded_windows)
    cpu, wall = cpu_seconds(), time.perf_counter()
    inference = transcribe_files(counting, decoded, windows, work_dir, packing=packing)
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    words = {}
    for file_id, d in decoded.items():
        samples = load_pcm(d.pcm_path)
        transcript = stabilize(
            Transcript.load(inference[file_id].transcript_path), samples, options_from_profile(profile.stabilization),
            windows_of[file_id], probabilities=file_probabilities(d.pcm_path, samples),
            thresholds=profile.vad,
        )
        words[file_id] = [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words]
    mates = {}
    for item in items:
        if isinstance(item, PackedWindow):
            for member in item.members:
                mates[member.window.file_id] = [m.window.file_id for m in item.members if m is not member]
    return {"words": words, "encoder_windows": len(decoded_windows), "engine_cpu_s": cpu, "engine_wall_s": wall, "mates": mates}


class _Counting:
    """The engine, noting every window it decodes (packed files decoded again alone count too)."""

    def __init__(self, engine, decoded_windows: list):
        self.engine, self.decoded_windows = engine, decoded_windows
        self.name, self.batch_size = engine.name, engine.batch_size

    def transcribe(self, windows):
        for result in self.engine.transcribe(windows):
            self.decoded_windows.append(result.window)
            yield result


@contextmanager
def shorter_padding(engine, lengths_s: list[float]):
    """The CTranslate2 engine, padding every window (not only the rests, as it does itself) to the
    shortest of `lengths_s` that holds it."""
    from steadyscribe.engines.features import N_SAMPLES, SAMPLE_RATE

    def padded(item, rest: bool) -> int:
        return next((round(s * SAMPLE_RATE) for s in sorted(lengths_s) if len(item.samples) <= s * SAMPLE_RATE), N_SAMPLES)

    engine._padded_samples = padded
    try:
        yield engine
    finally:
        del engine._padded_samples


def scores(files, ids, result, unpacked_texts: dict[str, str] | None) -> dict:
    """Pooled WER, within-200 ms on the word-timed clips, and the words that crossed between window mates.

    A word crossed when a file's packed text has it, its own reference and its unpacked text do
    not, and a window mate's reference does.
    """
    reference_of = {ids[f.name]: f.text for f in files}
    pairs, within, reference, crossed = [], 0, 0, 0
    for f in files:
        words = result["words"][ids[f.name]]
        pairs.append((f.text, " ".join(w["word"] for w in words)))
        if f.words:
            stats = boundary_errors(f.words, words, TOLERANCE_S)
            within += round(stats.within_tolerance_rate * stats.reference_count)
            reference += stats.reference_count
        if unpacked_texts is not None:
            own = set(normalize_text(f.text).split()) | set(normalize_text(unpacked_texts[f.name]).split())
            mate_words = {w for mate in result["mates"].get(ids[f.name], []) for w in normalize_text(reference_of[mate]).split()}
            crossed += sum(1 for w in normalize_text(pairs[-1][1]).split() if w not in own and w in mate_words)
    return {
        "wer": round(corpus_wer(pairs), 4),
        "within_200ms": round(within / reference, 4) if reference else None,
        "words_from_window_mates": crossed if unpacked_texts is not None else None,
        "encoder_windows": result["encoder_windows"],
        "engine_cpu_s": round(result["engine_cpu_s"], 1),
        "texts": {f.name: text for f, (_, text) in zip(files, pairs)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--hour", action="store_true", help="the hour-long file of real speech (bench.whole_run), not the clips")
    parser.add_argument("--gaps", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    parser.add_argument("--paddings", nargs="*", default=[], metavar="S,S,...",
                        help="not packed, each window padded to the shortest of these lengths (s) that holds it")
    parser.add_argument("--profile", default="cpu-fast", help="chunking, VAD and stabilization settings from this profile")
    parser.add_argument("--engine", default="ctranslate2", choices=["ctranslate2", "transformers", "whisper"])
    parser.add_argument("--quantization", default="dynamic-int8")
    parser.add_argument("--max-window-s", type=float, nargs="+", default=[30.0], help="packed windows' lengths to try")
    parser.add_argument("--packed-with-timestamps", action="store_true", help="ctranslate2: decode packed runs with timestamp tokens")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    add_realspeech_option(parser)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    if args.hour:
        files = [BenchFile(name, "hour", name, 3600.0, reference, [])
                 for name, reference in hour_file(args.data_dir, realspeech_dir(args.realspeech)).items()]
    else:
        files = build_clips(args.data_dir, args.count, args.realspeech)
    profile = load_profile(args.profile)
    batch_size = 1 if args.engine == "whisper" else args.batch_size
    quantization = "none" if args.engine == "whisper" else args.quantization
    plan = Plan(engine=args.engine, model="tiny.en", quantization=quantization, batch_size=batch_size, threads=2, language="en")
    engine = load_engine(plan)
    report = {"plan": f"{plan.engine} {plan.model} {plan.quantization} batch {plan.batch_size}",
              "input": "hour" if args.hour else f"{len(files)} clips", "runs": {}}
    with tempfile.TemporaryDirectory() as work_dir:
        decoded, ids, windows_of = {}, {}, {}
        for f in files:
            d = decode_input(InputFile(str(f.absolute_path(args.data_dir))), work_dir)
            decoded[d.file_id], ids[f.name] = d, d.file_id
            samples = load_pcm(d.pcm_path)
            windows_of[d.file_id] = plan_windows(
                samples, d.file_id, max_window_s=30.0, min_pause_s=profile.chunking.min_pause_s,
                probabilities=file_probabilities(d.pcm_path, samples), thresholds=profile.vad,
            )
        paddings = [[float(s) for s in lengths.split(",")] for lengths in args.paddings]
        configurations = [(None, 30.0, None), *((g, m, None) for m in args.max_window_s for g in args.gaps),
                          *((None, 30.0, lengths) for lengths in paddings)]
        for gap, max_window_s, padding in configurations:
            packing = Packing(max_window_s, gap) if gap else None
            label = f"packed into {max_window_s:g} s, {gap:g} s between files" if gap else "not packed"
            unpacked = report["runs"].get("not packed", {}).get("texts")
            run_engine = engine
            if packing and args.packed_with_timestamps:
                from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine

                run_engine = CTranslate2Engine(plan, with_timestamps=True)
                label += ", timestamp tokens"
            if padding:
                label += f", padded to the shortest of {', '.join(f'{s:g}' for s in padding)} s"
            with shorter_padding(run_engine, padding) if padding else nullcontext():
                result = run(run_engine, decoded, windows_of, packing, Path(work_dir), profile)
            report["runs"][label] = scores(files, ids, result, unpacked if packing else None)
            print(label, {k: v for k, v in report["runs"][label].items() if k != "texts"}, flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
