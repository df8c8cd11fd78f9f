"""Peak memory of the pipeline stages on long audio: a 10-minute file against a 2-hour one.

The inputs are synthesized from the committed speech fixtures, repeated with pauses of
silence between them, and encoded to FLAC as a stream. Each stage then runs in a fresh
subprocess on the real stage functions, so peaks do not leak between stages:

- decode:    tasks.decode.decode_input (FLAC → 16 kHz float32 PCM file)
- chunk:     tasks.chunk.plan_windows on the decoded PCM
- stabilize: tasks.stabilize.stabilize of a transcript built from the fixtures' true word
             times (shifted like an engine's), over the whole file
- infer:     steadyscribe.inference.transcribe_files with tiny.en at batch 1 on a few windows sampled
             across the file (the whole file takes hours on a CPU); the PCM is the full file's

Each subprocess reports its peak RSS (VmHWM, which getrusage's ru_maxrss also reads) over
its whole life, and the peak during the stage alone (VmHWM reset through
/proc/self/clear_refs once imports and the model load are done). Memory is bounded when
the 2-hour column matches the 10-minute one.

    .venv/bin/python bench/long_audio_memory.py [--minutes 10 120] [--infer-windows 3]
        [--out bench/long_audio_memory.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

FIXTURES = ROOT / "tests" / "fixtures"
STAGES = ("decode", "chunk", "stabilize", "infer")
MIB = 2**20
PAUSE_S = (1.0, 2.5, 4.0)  # silence between fixtures, cycled
ENGINE_LAG_S = (0.06, 0.12)  # added to true word starts and ends, like Whisper's late times


# ---- synthesis (parent process) ----------------------------------------------------------------


def synthesize(minutes: float, flac_path: Path, transcript_path: Path) -> None:
    """Fixtures and pauses, repeated to `minutes`, streamed into a FLAC; true words into a raw transcript."""
    import numpy as np

    from bench.common import SAMPLE_RATE, flac_writer
    from steadyscribe.records import InputFile, Segment, Transcript, Word
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    pieces = []
    with tempfile.TemporaryDirectory() as work:
        for flac in sorted(FIXTURES.glob("*.flac")):
            truth = json.loads(flac.with_suffix(".json").read_text())
            decoded = decode_input(InputFile(str(flac)), work)
            pieces.append((np.asarray(load_pcm(decoded.pcm_path)), truth["text"], truth["words"]))

    target = int(minutes * 60 * SAMPLE_RATE)
    written, segments, i = 0, [], 0
    with flac_writer(flac_path) as put:
        while written < target:
            samples, text, words = pieces[i % len(pieces)]
            samples = samples[: target - written]
            offset = written / SAMPLE_RATE
            kept = [w for w in words if w["end"] * SAMPLE_RATE <= len(samples)]
            if kept:
                segments.append(Segment(
                    start=offset + kept[0]["start"] + ENGINE_LAG_S[0], end=offset + kept[-1]["end"] + ENGINE_LAG_S[1],
                    text=text, no_speech_prob=0.01, avg_logprob=-0.2, compression_ratio=1.4,
                    words=[Word(w["word"], offset + w["start"] + ENGINE_LAG_S[0], offset + w["end"] + ENGINE_LAG_S[1], 0.9)
                           for w in kept],
                ))
            put(samples)
            written += len(samples)
            pause = min(int(PAUSE_S[i % len(PAUSE_S)] * SAMPLE_RATE), target - written)
            if pause > 0:
                put(np.zeros(pause, dtype=np.float32))
                written += pause
            i += 1
    Transcript("long", "en", segments).save(transcript_path)


# ---- one stage (child process) -----------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Set VmHWM back to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_stage(stage: str, work: Path, infer_windows: int) -> dict:
    """Run one stage on the files in `work`; return its timings and memory peaks (bytes)."""
    from dataclasses import asdict

    from steadyscribe.records import DecodedAudio, InputFile, Plan, Transcript, Window
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input
    from steadyscribe.tasks.stabilize import stabilize

    decoded_path, windows_path = work / "decoded.json", work / "windows.json"
    engine = None
    if stage == "infer":
        from steadyscribe.engines import load_engine
        from steadyscribe.inference import transcribe_files

        engine = load_engine(Plan(engine="whisper", model="tiny.en", threads=1))
    before_stage = _status_kib("VmRSS") * 1024
    reset = _reset_peak()
    started = time.perf_counter()
    detail: dict = {}
    if stage == "decode":
        decoded = decode_input(InputFile(str(work / "long.flac")), work)
        if decoded.status != "ok":
            raise RuntimeError(decoded.error)
        decoded_path.write_text(json.dumps(decoded.__dict__))
        detail = {"audio_s": decoded.duration_s}
    else:
        decoded = DecodedAudio(**json.loads(decoded_path.read_text()))
    if stage == "chunk":
        windows = plan_windows(load_pcm(decoded.pcm_path), decoded.file_id)
        windows_path.write_text(json.dumps([w.__dict__ for w in windows]))
        detail = {"windows": len(windows)}
    elif stage == "stabilize":
        windows = [Window(**w) for w in json.loads(windows_path.read_text())]
        raw = Transcript.load(work / "raw.json")
        stable = stabilize(raw, load_pcm(decoded.pcm_path), windows=windows)
        detail = {"words": len(raw.words), **asdict(stable.stabilization)}
    elif stage == "infer":
        windows = [Window(**w) for w in json.loads(windows_path.read_text())]
        step = max(1, len(windows) // infer_windows)
        sampled = windows[::step][:infer_windows]
        results = transcribe_files(engine, {decoded.file_id: decoded}, sampled, work)
        detail = {"windows": len(sampled), "of_windows": len(windows), "words": len(Transcript.load(
            results[decoded.file_id].transcript_path).words)}
    return {
        "stage": stage,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_before_stage": before_stage,
        "stage_peak_rss": _status_kib("VmHWM") * 1024 if reset else None,
        "process_peak_rss": _max_rss(),
        **detail,
    }


def _max_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- driver ------------------------------------------------------------------------------------


def measure(minutes: float, work: Path, infer_windows: int) -> dict[str, dict]:
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    synthesize(minutes, work / "long.flac", work / "raw.json")
    print(f"  synthesized {minutes:g} min in {time.perf_counter() - started:.0f} s "
          f"({(work / 'long.flac').stat().st_size / MIB:.0f} MiB FLAC)", flush=True)
    results = {}
    for stage in STAGES:
        out = subprocess.run(
            [sys.executable, __file__, "--stage", stage, "--work", str(work), "--infer-windows", str(infer_windows)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{out.stderr[-3000:]}")
        results[stage] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {stage}: {_describe(results[stage])}", flush=True)
    return results


def _mib(value: int | None) -> str:
    return f"{value / MIB:.0f}" if value is not None else "?"


def _describe(result: dict) -> str:
    extra = {k: v for k, v in result.items() if k not in ("stage", "seconds", "rss_before_stage", "stage_peak_rss", "process_peak_rss")}
    return (
        f"{result['seconds']:.1f} s, peak {_mib(result['process_peak_rss'])} MiB, during the stage "
        f"{_mib(result['stage_peak_rss'])} MiB (RSS before it {_mib(result['rss_before_stage'])} MiB) {extra}"
    )


def table(by_length: dict[str, dict[str, dict]]) -> str:
    lengths = list(by_length)
    lines = [
        "peak RSS, MiB: whole stage process / during the stage alone",
        f"{'stage':<10}" + "".join(f"{length:>24}" for length in lengths),
    ]
    for stage in STAGES:
        cells = []
        for length in lengths:
            result = by_length[length][stage]
            cells.append(f"{_mib(result['process_peak_rss']):>14} / {_mib(result['stage_peak_rss']):>7}")
        lines.append(f"{stage:<10}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    parser.add_argument("--infer-windows", type=int, default=3, help="windows sampled across the file for inference")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "long_audio_memory.json")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: one child process
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.infer_windows)))
        return
    by_length = {}
    with tempfile.TemporaryDirectory(prefix="long-audio-", dir=args.work) as scratch:
        for minutes in args.minutes:
            label = f"{minutes:g} min"
            print(f"{label}:", flush=True)
            by_length[label] = measure(minutes, Path(scratch) / label.replace(" ", ""), args.infer_windows)
            for leftover in (Path(scratch) / label.replace(" ", "")).iterdir():
                leftover.unlink()  # a 2-hour PCM is 460 MB: free the disk before the next length
    print(table(by_length))
    args.out.write_text(json.dumps(by_length, indent=2) + "\n")
    print(f"recorded in {args.out}")


if __name__ == "__main__":
    main()
