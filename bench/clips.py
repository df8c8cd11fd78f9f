"""A folder of short clips with known text: the whole-run benchmark's and the packing measurement's input.

Real speech first. The pool of distinct clips, in this order:
- the word-timed real recordings (r04, r05, r09 of the real-speech folder, bench/common.py) cut at pauses between
  words into clips of CLIP_S seconds, with their reference words and times;
- the short real recordings whole (r01, r13, r24, r26) and the three LJ Speech clips of r15,
  with their reference text (no word times);
- the synthetic fixtures' one-sentence clips (bench/dataset.py), with exact word times.
A folder of N clips goes round the pool, each round in its own seeded random order (so that files
next to each other in the folder, which packing may put in one window, are not neighbouring
pieces of one recording); each round after the first adds seeded pink noise at ROUND_SNR_DB, so
every clip has its own content (identical content is transcribed once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np

from bench.common import DEFAULT_DATA, SAMPLE_RATE, add_realspeech_option, pink_noise, realspeech_dir
from bench.dataset import SPEECH_FIXTURES, BenchFile, Piece, read_fixture, sentence_pieces, write_piece

WORD_TIMED = ("r04_mfa_acoustic", "r05_mfa_cold", "r09_librivox_austen")
WHOLE = ("r01_jfk", "r13_libri_61", "r24_arctic_aew", "r26_goforward")
SEGMENTED = ("r15_ljspeech",)
CLIP_S = (3.0, 7.0)  # a clip ends at the first pause after 3 s of speech, or before 7 s
EDGE_S = 0.3  # audio kept around a clip's first and last word (less where a neighbour is nearer)
ROUND_SNR_DB = 30.0
RECIPE_VERSION = 2
SEED = 20261130


def read_recording(realspeech: Path, name: str) -> tuple[np.ndarray, dict]:
    """A real recording's int16 samples and its truth (the JSON beside it)."""
    with av.open(str(realspeech / f"{name}.flac")) as container:
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    if samples.dtype != np.int16:
        samples = np.clip(samples * 32767, -32768, 32767)
    return samples.astype(np.int16), json.loads((realspeech / f"{name}.json").read_text())


def _cut_at_pauses(samples: np.ndarray, words: list[dict]) -> list[Piece]:
    """Clips of CLIP_S seconds of speech, each cut halfway into the pause after its last word."""
    pieces, first = [], 0
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else None
        length = word["end"] - words[first]["start"]
        pause = following["start"] - word["end"] if following else float("inf")
        too_long_with_next = following is not None and following["end"] - words[first]["start"] > CLIP_S[1]
        if following is None or (length >= CLIP_S[0] and pause >= 0.1) or too_long_with_next:
            before = words[first - 1]["end"] if first else 0.0
            after = following["start"] if following else len(samples) / SAMPLE_RATE
            start = max((before + words[first]["start"]) / 2, words[first]["start"] - EDGE_S)
            end = min((word["end"] + after) / 2, word["end"] + EDGE_S)
            first_sample, end_sample = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
            shifted = [{**w, "start": round(w["start"] - start, 3), "end": round(w["end"] - start, 3)} for w in words[first : i + 1]]
            pieces.append(Piece(samples[first_sample:end_sample], shifted))
            first = i + 1
    return pieces


def clip_pool(realspeech: Path) -> list[tuple[str, Piece, str]]:
    """(name, clip, reference text) of every distinct clip, real speech first."""
    pool = []
    for name in WORD_TIMED:
        samples, truth = read_recording(realspeech, name)
        for i, piece in enumerate(_cut_at_pauses(samples, truth["words"])):
            pool.append((f"{name}_{i:02d}", piece, " ".join(w["word"] for w in piece.words)))
    for name in WHOLE:
        samples, truth = read_recording(realspeech, name)
        pool.append((name, Piece(samples, []), truth["text"]))
    for name in SEGMENTED:
        samples, truth = read_recording(realspeech, name)
        for i, segment in enumerate(truth["segments"]):
            span = samples[round(segment["start"] * SAMPLE_RATE) : round(segment["end"] * SAMPLE_RATE)]
            pool.append((f"{name}_{i}", Piece(span, []), segment["text"]))
    for fixture in SPEECH_FIXTURES:
        for i, piece in enumerate(sentence_pieces(read_fixture(fixture))):
            pool.append((f"{fixture}_{i}", piece, " ".join(w["word"] for w in piece.words)))
    return pool


def _with_noise(piece: Piece, snr_db: float, seed: int) -> Piece:
    power = float(np.mean(np.square(piece.samples.astype(np.float64))))
    noise = pink_noise(len(piece.samples), power, snr_db, seed)
    return Piece(np.clip(piece.samples + noise, -32768, 32767).astype(np.int16), piece.words)


def build_clips(data_dir: Path, count: int, realspeech: Path | None = None) -> list[BenchFile]:
    """A folder of `count` distinct clips under data_dir/clips_<count>, built unless already there;
    the real clips from the real-speech folder (bench.common.realspeech_dir)."""
    folder = data_dir / f"clips_{count}"
    recipe = hashlib.sha256(f"{RECIPE_VERSION} {count}".encode() + Path(__file__).read_bytes()).hexdigest()[:16]
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["recipe"] == recipe:
        return [BenchFile(**item) for item in json.loads(manifest.read_text())["files"]]
    pool = clip_pool(realspeech_dir(realspeech))
    rng = np.random.default_rng(SEED)
    order = [int(k) for _ in range(-(-count // len(pool))) for k in rng.permutation(len(pool))]
    files = []
    for i in range(count):
        name, piece, text = pool[order[i]]
        rounds = i // len(pool)
        if rounds:
            piece, name = _with_noise(piece, ROUND_SNR_DB, seed=i), f"{name}__r{rounds}"
        bench_file = write_piece(folder, f"{i:03d}_{name}.wav", "clips", piece)
        bench_file.text = text  # the reference, also for clips without word times
        bench_file.path = f"clips_{count}/{bench_file.path}"
        files.append(bench_file)
    manifest.write_text(json.dumps({"recipe": recipe, "files": [asdict(f) for f in files]}, indent=1))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    add_realspeech_option(parser)
    args = parser.parse_args()
    files = build_clips(args.data_dir, args.count, args.realspeech)
    seconds = sum(f.duration_s for f in files)
    words = sum(len(f.text.split()) for f in files)
    print(f"{len(files)} clips, {seconds:.0f} s of audio, {words} reference words, in {args.data_dir / f'clips_{args.count}'}")


if __name__ == "__main__":
    main()
