"""Make the fast-speech fixtures: every sentence of a fast reader must come out of every engine.

- `tests/fixtures/fast/fast_synthetic.flac`: twelve sentences read by espeak-ng at 260 words a
  minute, 0.25-0.45 s apart (seeded), about 42 s: two windows of continuous fast speech.
- `tests/fixtures/fast/fast_real.flac`: four real read recordings of the shared real-speech set
  (../shared/realspeech; sources and licences in its README) sped up 1.4 times with sox `tempo`
  (which keeps the pitch), 0.4 s apart, about 40 s.

Each FLAC (16 kHz mono 16-bit) has a JSON beside it: `text`, `duration`, and `sentences`, each
with its `text` and its `start`/`end` in the file (seconds). For the synthetic file the sentence
spans are exact (each sentence is synthesized on its own, trimmed to its first and last sample
above 0.5% of full scale); for the real one they are the source's own segment times (or the
whole recording), divided by the tempo.

    python scripts/make_fast_fixtures.py

Needs `espeak-ng` and `sox` (tests use the committed files). Standard library only otherwise.
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The shared real-speech set sits beside the main checkout (../shared/realspeech).
SOURCE_DIR = next(
    (d for d in (ROOT.parent / "shared" / "realspeech", ROOT.parent.parent / "shared" / "realspeech") if d.is_dir()),
    ROOT.parent / "shared" / "realspeech",
)
OUT_DIR = ROOT / "tests" / "fixtures" / "fast"
SAMPLE_RATE = 16_000
VOICE, WPM = "en-us+m3", 260
TEMPO = 1.4
SEED = 28

SENTENCES = (
    "The committee met on Tuesday morning to review the budget for the new library building downtown.",
    "Several volunteers carried heavy boxes of old books up the narrow stairs to the reading room.",
    "Nobody expected the storm to arrive so early, but the harbour was closed before noon.",
    "My brother repaired the kitchen window with a sheet of glass he bought at the hardware store.",
    "The orchestra played three short pieces before the interval and a long symphony after it.",
    "Please remember to water the tomato plants in the greenhouse every evening while we are away.",
    "The pilot announced that the flight would land twenty minutes ahead of schedule in Chicago.",
    "A small brown dog followed the children all the way from the school gate to the river.",
    "Engineers tested the bridge with loaded trucks for a whole week before it opened to traffic.",
    "She wrote the answers on the blackboard and asked the students to copy them into their notebooks.",
    "The bakery on the corner sells fresh bread, apple pies and chocolate cakes every single day.",
    "After dinner we walked along the beach and watched the fishing boats return with their catch.",
)
# Real read recordings: (name, whether its JSON has segment times to use as sentences).
REAL = ("r24_arctic_aew", "r09_librivox_austen", "r15_ljspeech", "r13_libri_61")
REAL_GAP_S = 0.4


def sox(*args: str) -> None:
    subprocess.run(["sox", "-D", *args], check=True)  # -D: no dither (silence stays digital silence)


def duration_s(path: Path) -> float:
    out = subprocess.run(["soxi", "-s", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out) / SAMPLE_RATE


def silence(path: Path, seconds: float) -> None:
    sox("-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path), "trim", "0", f"{seconds:.4f}")


def concat(parts: list[Path], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    sox(*map(str, parts), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out))


def synthetic(tmp: Path) -> dict:
    rng = random.Random(SEED)
    parts, sentences, at = [], [], 0.0
    for i, text in enumerate(SENTENCES):
        raw, clip = tmp / f"s{i}.wav", tmp / f"s{i}_16k.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(WPM), "-w", str(raw), text], check=True)
        # Resampled, then trimmed to the first and last sample above 0.5% of full scale.
        sox(str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(clip), "vol", "0.5",
            "silence", "1", "0.001", "0.5%", "reverse", "silence", "1", "0.001", "0.5%", "reverse")
        gap = tmp / f"g{i}.wav"
        silence(gap, 0.3 if i == 0 else rng.uniform(0.25, 0.45))
        at += duration_s(gap)
        length = duration_s(clip)
        sentences.append({"text": text, "start": round(at, 4), "end": round(at + length, 4)})
        at += length
        parts += [gap, clip]
    tail = tmp / "tail.wav"
    silence(tail, 0.3)
    concat([*parts, tail], OUT_DIR / "fast_synthetic.flac")
    return {
        "text": " ".join(SENTENCES),
        "duration": round(at + 0.3, 4),
        "sentences": sentences,
        "voice": VOICE,
        "speed": WPM,
        "notes": "espeak-ng at 260 wpm, one sentence at a time, 0.25-0.45 s apart.",
    }


def real(tmp: Path) -> dict:
    parts, sentences, sources, at = [], [], [], 0.0
    for i, name in enumerate(REAL):
        reference = json.loads((SOURCE_DIR / f"{name}.json").read_text())
        fast = tmp / f"{name}.wav"
        sox(str(SOURCE_DIR / f"{name}.flac"), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(fast), "tempo", "-s", str(TEMPO))
        if i:
            gap = tmp / f"rg{i}.wav"
            silence(gap, REAL_GAP_S)
            parts.append(gap)
            at += duration_s(gap)
        spans = reference.get("segments") or [{"start": 0.0, "end": reference["duration"], "text": reference["text"]}]
        for span in spans:
            sentences.append(
                {"text": span["text"], "start": round(at + span["start"] / TEMPO, 4), "end": round(at + span["end"] / TEMPO, 4), "source": name}
            )
        at += duration_s(fast)
        parts.append(fast)
        sources.append({"name": name, "source": reference.get("source"), "license_note": reference.get("license_note")})
    concat(parts, OUT_DIR / "fast_real.flac")
    return {
        "text": " ".join(s["text"] for s in sentences),
        "duration": round(at, 4),
        "sentences": sentences,
        "tempo": TEMPO,
        "sources": sources,
        "notes": f"Real read speech from ../shared/realspeech, sox tempo -s {TEMPO} (pitch kept), {REAL_GAP_S} s apart.",
    }


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("fast_synthetic", synthetic), ("fast_real", real)):
            truth = make(Path(tmp))
            (OUT_DIR / f"{name}.json").write_text(json.dumps(truth, indent=1) + "\n")
            print(f"{name}: {truth['duration']:.1f} s, {len(truth['sentences'])} sentences")


if __name__ == "__main__":
    main()
