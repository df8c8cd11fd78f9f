"""faster-whisper as a user would script it for a folder: the peer in bench/whole_run.py.

One WhisperModel (int8, the same tiny.en CTranslate2 weights as steadyscribe's), called file by
file with word timestamps: through its BatchedInferencePipeline (Silero VAD, batch 8) by default,
or with `--sequential` through `WhisperModel.transcribe` itself (30 s windows one after another,
each seeking past the last timestamp and conditioned on the text before). The words of every
file go to one JSON file.

    python -m bench.faster_whisper_run FOLDER_OR_FILE --out words.json [--beam-size 1] [--sequential]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from faster_whisper import BatchedInferencePipeline, WhisperModel

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--model-dir", required=True, help="a CTranslate2 Whisper checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--sequential", action="store_true", help="WhisperModel.transcribe, not the batched pipeline")
    args = parser.parse_args()
    paths = sorted(p for p in args.input.rglob("*") if p.suffix in AUDIO_SUFFIXES) if args.input.is_dir() else [args.input]
    model = WhisperModel(args.model_dir, device="cpu", compute_type="int8", cpu_threads=len(os.sched_getaffinity(0)))
    if args.sequential:
        def transcribe(path: Path):
            return model.transcribe(str(path), beam_size=args.beam_size, language="en", word_timestamps=True)
    else:
        pipeline = BatchedInferencePipeline(model)

        def transcribe(path: Path):
            return pipeline.transcribe(
                str(path), batch_size=args.batch_size, beam_size=args.beam_size, language="en", word_timestamps=True
            )
    words = {}
    for path in paths:
        segments, _ = transcribe(path)
        words[path.name] = [{"word": w.word, "start": w.start, "end": w.end} for s in segments for w in s.words]
    args.out.write_text(json.dumps(words))


if __name__ == "__main__":
    main()
