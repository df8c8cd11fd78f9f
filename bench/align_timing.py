"""Known-text alignment against transcription: word times on the word-timed real recordings.

    .venv/bin/python -m bench.align_timing

Each recording of tests/fixtures/real with word times is aligned to its reference text and
transcribed, by the same engine (CTranslate2 int8, tiny.en, as `cpu-fast`) and the same
stabilization; prints, per file and pooled, the share of reference words within 200 ms, scored
by the real-speech set's rule (words matched by their letters, fillers included: "rule") and by
the project's normalized matching (fillers dropped: "normalized").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import FIXTURES_DIR
from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine
from steadyscribe.metrics import boundary_errors
from steadyscribe.records import InputFile, Plan, Transcript
from steadyscribe.tasks.align import align_files, judge_alignment
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.inference import transcribe_files
from steadyscribe.tasks.stabilize import StabilizeOptions, stabilize
from steadyscribe.vad import speech_probabilities

REAL = FIXTURES_DIR / "real"
PLAN = Plan(engine="ctranslate2", model="tiny.en", threads=2, batch_size=8, quantization="int8")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    engine = CTranslate2Engine(PLAN)
    totals: dict[str, list[int]] = {}
    work = Path(tempfile.mkdtemp(prefix="align-timing-"))
    for path in sorted(REAL.glob("*.json")):
        reference = json.loads(path.read_text())
        if "__" in path.stem or not reference.get("words"):
            continue
        decoded = decode_input(InputFile(str(path.with_suffix(".flac"))), work)
        samples = load_pcm(decoded.pcm_path)
        probabilities = speech_probabilities(samples)
        windows = plan_windows(samples, decoded.file_id, probabilities=probabilities)
        text = " ".join(reference["text"].split())
        aligned_path = align_files(engine, {decoded.file_id: decoded}, windows, {decoded.file_id: text}, work)
        aligned = stabilize(
            Transcript.load(aligned_path[decoded.file_id].transcript_path), samples,
            StabilizeOptions(drop_hallucinations=False), windows, probabilities=probabilities,
        )
        aligned, _ = judge_alignment(aligned, len(text.split()), probabilities)
        heard_path = transcribe_files(engine, {decoded.file_id: decoded}, windows, work)
        heard = stabilize(Transcript.load(heard_path[decoded.file_id].transcript_path), samples, windows=windows, probabilities=probabilities)
        cells = []
        for mode, words in (("align", aligned.words), ("transcribe", heard.words)):
            for rule, literal in (("rule", True), ("normalized", False)):
                stats = boundary_errors(reference["words"], words, literal=literal)
                hits = round(stats.within_tolerance_rate * stats.reference_count)
                total = totals.setdefault(f"{mode} {rule}", [0, 0])
                total[0] += hits
                total[1] += stats.reference_count
                cells.append(f"{mode} {rule} {stats.within_tolerance_rate:.1%}")
        print(f"{path.stem}: " + ", ".join(cells))
    print("pooled: " + ", ".join(f"{key} {hits / count:.1%}" for key, (hits, count) in totals.items()))


if __name__ == "__main__":
    main()
