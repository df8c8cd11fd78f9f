"""The evaluation set, built from the committed fixtures by cutting and concatenating at known samples.

Every output sample is a fixture sample or digital silence placed at an exact offset, so the
word truth of tests/fixtures (exact to the sample) stays exact. Parts:

- `varied`: the speech fixtures as they are (two voices, slow/normal/fast speech, pink noise at
  12 dB SNR, 3–6 s pauses over a noise floor, a word across the 30 s mark);
- `clips`: a folder of short clips, one sentence each, cut in the pauses around it;
- `long`: one long file (ten minutes; one in quick mode) of sentences in seeded random order with
  seeded pauses and a stretch of noise-only audio every round;
- `no_speech`: ten seconds of pink noise and nothing else.

Files are 16 kHz mono 16-bit WAV under the data directory, rebuilt only when the recipe changes.

The `real` mode is a different set: recordings of real people (../shared/realspeech, README
there), as `real` (11 files, three with aligned word times), `real_noisy` (the word-timed ones
mixed with pink, brown and babble noise at 0, 5 and 10 dB SNR) and `no_speech` (generated noise
colours, tones, clicks and music), all made by scripts/make_real_fixtures.py --all. Its WER
counts every file; its timing counts the files with word times.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from bench.common import FIXTURES_DIR, ROOT, SAMPLE_RATE, realspeech_dir, write_wav

SPEECH_FIXTURES = ("clean_us_slow", "clean_gb", "fast_speaker", "noisy", "long_pauses", "straddle_40s")
NO_SPEECH_FIXTURE = "no_speech"
# Quick mode keeps the two hardest conditions (noise, long pauses) and fewer, shorter files.
QUICK_SPEECH_FIXTURES = ("noisy", "long_pauses")
QUICK_CLIPS = 4
LONG_TARGET_S = {"full": 600.0, "quick": 60.0}
# Audio kept around a sentence when it is cut out (less where the neighbouring sentence is nearer).
CLIP_MARGIN_S = 0.4
LONG_PAUSE_S = (0.2, 1.5)  # digital silence between sentences in the long file
LONG_NOISE_S = 6.0  # noise-only audio added once per round of sentences
SEED = 20240611
RECIPE_VERSION = 1  # bump when the construction below changes
REAL_SCRIPT = ROOT / "scripts" / "make_real_fixtures.py"


@dataclass
class BenchFile:
    name: str
    part: str
    path: str  # relative to the data directory
    duration_s: float
    text: str
    words: list[dict]  # {"word", "start", "end"}: seconds, exact to the sample

    def absolute_path(self, data_dir: Path) -> Path:
        return data_dir / self.path


@dataclass
class Piece:
    """Samples of a fixture (or silence) and the words in them, times relative to the piece."""

    samples: np.ndarray  # int16
    words: list[dict]


def load_manifest(data_dir: Path) -> list[BenchFile]:
    data = json.loads((data_dir / "manifest.json").read_text())
    return [BenchFile(**item) for item in data["files"]]


def build_dataset(data_dir: Path, mode: str, realspeech: Path | None = None) -> list[BenchFile]:
    """The set for `mode` ("quick", "full" or "real") under data_dir, built unless already there;
    `real` from the real-speech folder (bench.common.realspeech_dir)."""
    if mode == "real":
        return build_real_dataset(data_dir, realspeech)
    recipe = _recipe(mode)
    manifest_path = data_dir / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("recipe") == recipe:
        return load_manifest(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    quick = mode == "quick"
    fixtures = {name: read_fixture(name) for name in SPEECH_FIXTURES}
    noise = read_fixture(NO_SPEECH_FIXTURE)

    files = []
    for name in QUICK_SPEECH_FIXTURES if quick else SPEECH_FIXTURES:
        files.append(write_piece(data_dir, f"varied/{name}.wav", "varied", fixtures[name]))
    sentences = [(name, i, piece) for name, fixture in fixtures.items() for i, piece in enumerate(sentence_pieces(fixture))]
    clips = sentences[:: max(1, len(sentences) // QUICK_CLIPS)][:QUICK_CLIPS] if quick else sentences
    for name, index, piece in clips:
        files.append(write_piece(data_dir, f"clips/{name}_{index}.wav", "clips", piece))
    target_s = LONG_TARGET_S[mode]
    files.append(write_piece(data_dir, f"long/long_{target_s / 60:g}min.wav", "long", _long(sentences, noise, target_s)))
    files.append(write_piece(data_dir, f"no_speech/{NO_SPEECH_FIXTURE}.wav", "no_speech", noise))
    manifest_path.write_text(json.dumps({"recipe": recipe, "files": [asdict(f) for f in files]}, indent=1))
    return files


def _recipe(mode: str) -> str:
    """Changes when the fixtures, the mode or the construction change."""
    digest = hashlib.sha256(f"{RECIPE_VERSION} {mode} {SEED}".encode())
    for name in (*SPEECH_FIXTURES, NO_SPEECH_FIXTURE):
        for suffix in (".flac", ".json"):
            digest.update((FIXTURES_DIR / f"{name}{suffix}").read_bytes())
    return digest.hexdigest()[:16]


def read_fixture(name: str) -> Piece:
    truth = json.loads((FIXTURES_DIR / f"{name}.json").read_text())
    with av.open(str(FIXTURES_DIR / f"{name}.flac")) as container:
        stream = container.streams.audio[0]
        if stream.rate != SAMPLE_RATE or stream.format.name != "s16":
            raise ValueError(f"{name}.flac: expected 16 kHz 16-bit, got {stream.rate} Hz {stream.format.name}")
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
    words = [{"word": w["word"], "start": w["start"], "end": w["end"]} for w in truth["words"]]
    return Piece(samples.astype(np.int16), words)


def sentence_pieces(fixture: Piece) -> list[Piece]:
    """Each sentence with up to CLIP_MARGIN_S around it, cut halfway into the pause to its neighbours.

    Sentence ends are the words followed by a pause much longer than the pauses inside sentences.
    """
    words = fixture.words
    gaps = [b["start"] - a["end"] for a, b in zip(words, words[1:])]
    # Fixtures put 20–120 ms between words of a sentence and at least 350 ms between sentences.
    ends = [i for i, gap in enumerate(gaps) if gap >= 0.3] + [len(words) - 1]
    pieces = []
    first = 0
    for last in ends:
        before = words[first - 1]["end"] if first else 0.0
        after = words[last + 1]["start"] if last + 1 < len(words) else len(fixture.samples) / SAMPLE_RATE
        start = max((before + words[first]["start"]) / 2, words[first]["start"] - CLIP_MARGIN_S)
        end = min((words[last]["end"] + after) / 2, words[last]["end"] + CLIP_MARGIN_S)
        pieces.append(_cut(fixture, round(start * SAMPLE_RATE), round(end * SAMPLE_RATE), words[first : last + 1]))
        first = last + 1
    return pieces


def _cut(fixture: Piece, first_sample: int, end_sample: int, words: list[dict]) -> Piece:
    offset = first_sample / SAMPLE_RATE
    shifted = [{**w, "start": round(w["start"] - offset, 7), "end": round(w["end"] - offset, 7)} for w in words]
    return Piece(fixture.samples[first_sample:end_sample], shifted)


def _long(sentences: list[tuple[str, int, Piece]], noise: Piece, target_s: float) -> Piece:
    """Rounds of all sentences in seeded random order, seeded pauses between, noise once per round."""
    rng = random.Random(SEED)
    pieces: list[Piece] = []
    total = 0
    noise_piece = Piece(noise.samples[: round(LONG_NOISE_S * SAMPLE_RATE)], [])
    while total < target_s * SAMPLE_RATE:
        round_pieces = [piece for _, _, piece in rng.sample(sentences, len(sentences))]
        round_pieces.insert(rng.randrange(1, len(round_pieces)), noise_piece)
        for piece in round_pieces:
            pieces.append(piece)
            pause = Piece(np.zeros(round(rng.uniform(*LONG_PAUSE_S) * SAMPLE_RATE), np.int16), [])
            pieces.append(pause)
            total += len(piece.samples) + len(pause.samples)
            if total >= target_s * SAMPLE_RATE:
                break
    return _concatenate(pieces)


def _concatenate(pieces: list[Piece]) -> Piece:
    words, offset = [], 0
    for piece in pieces:
        shift = offset / SAMPLE_RATE
        words += [{**w, "start": round(w["start"] + shift, 7), "end": round(w["end"] + shift, 7)} for w in piece.words]
        offset += len(piece.samples)
    return Piece(np.concatenate([p.samples for p in pieces]), words)


def write_piece(data_dir: Path, relative: str, part: str, piece: Piece) -> BenchFile:
    path = data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, piece.samples)
    return BenchFile(
        name=Path(relative).stem,
        part=part,
        path=relative,
        duration_s=len(piece.samples) / SAMPLE_RATE,
        text=" ".join(w["word"] for w in piece.words),
        words=piece.words,
    )


def build_real_dataset(data_dir: Path, realspeech: Path | None = None) -> list[BenchFile]:
    """The real-speech set (see the module docstring), built unless already there."""
    source = realspeech_dir(realspeech)
    digest = hashlib.sha256(REAL_SCRIPT.read_bytes())
    for path in sorted(source.glob("*")):
        digest.update(path.read_bytes())
    recipe = digest.hexdigest()[:16]
    manifest_path = data_dir / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("recipe") == recipe:
        return load_manifest(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(REAL_SCRIPT), "--all", "--source", str(source), "--out", str(data_dir)],
                   check=True)
    files = []
    for flac in sorted(data_dir.glob("*.flac")):
        truth = json.loads(flac.with_suffix(".json").read_text())
        part = "no_speech" if flac.stem.startswith("ns_") else "real_noisy" if "__" in flac.stem else "real"
        with av.open(str(flac)) as container:
            duration = sum(frame.samples for frame in container.decode(audio=0)) / SAMPLE_RATE
        words = [{"word": w["word"], "start": w["start"], "end": w["end"]} for w in truth.get("words") or []]
        files.append(BenchFile(flac.stem, part, flac.name, duration, truth["text"], words))
    manifest_path.write_text(json.dumps({"recipe": recipe, "files": [asdict(f) for f in files]}, indent=1))
    return files
