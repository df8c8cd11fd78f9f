"""Inputs for the known-text alignment tests: real word-timed recordings with their texts, and texts that do not fit."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np

from helpers import REAL, SAMPLE_RATE, decode_fixture, fixture_script

TIMED = ["r04_mfa_acoustic", "r05_mfa_cold", "r09_librivox_austen"]
GAP_S = 1.0  # silence between the recordings joined into the long file
EXTRA_SILENCE_S = 3.0  # silence after r09 in `extra` (the file stays one window)
EXTRA_WORDS = 12  # words of another recording's text after r09's own in `extra.txt`


def reference(name: str) -> dict:
    return json.loads((REAL / f"{name}.json").read_text())


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _pink_noise(seconds: float) -> np.ndarray:
    """The real-speech fixture script's own seeded pink noise."""
    return fixture_script("make_real_fixtures").non_speech(seconds)["pink"]


def prepare(directory: Path) -> dict[str, dict]:
    """Write the inputs into `directory`; returns name -> reference words (or None) for each audio input.

    - the three word-timed recordings, each with its own text;
    - `joined`: the three one after another with a second of silence between (longer than a
      window, so its text must be split across windows), its text and shifted word times;
    - `mismatch`: r09's audio with r04's text;
    - `noise`: pink noise with r04's text (nothing there to align);
    - `no_text`: r05's audio without any text file;
    - `extra`: r09 followed by silence, its text followed by words no one says.
    """
    expected: dict[str, dict | None] = {}
    for name in TIMED:
        shutil.copy(REAL / f"{name}.flac", directory)
        (directory / f"{name}.txt").write_text(reference(name)["text"] + "\n")
        expected[name] = reference(name)["words"]
    work = directory / ".decoded"
    work.mkdir(exist_ok=True)
    samples = {name: np.asarray(decode_fixture(f"real/{name}", work)) for name in TIMED}
    shutil.rmtree(work)
    pieces, words, texts, offset = [], [], [], 0.0
    for name in TIMED:
        pieces += [samples[name], np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)]
        words += [{**w, "start": w["start"] + offset, "end": w["end"] + offset} for w in reference(name)["words"]]
        texts.append(reference(name)["text"])
        offset += len(samples[name]) / SAMPLE_RATE + GAP_S
    _write_wav(directory / "joined.wav", np.concatenate(pieces))
    (directory / "joined.txt").write_text("\n".join(texts))
    expected["joined"] = words
    # WAV copies: other bytes than the FLAC inputs, so not taken for the same audio.
    _write_wav(directory / "mismatch.wav", samples["r09_librivox_austen"])
    (directory / "mismatch.txt").write_text(reference("r04_mfa_acoustic")["text"])
    _write_wav(directory / "noise.wav", _pink_noise(8.0))
    (directory / "noise.txt").write_text(reference("r04_mfa_acoustic")["text"])
    _write_wav(directory / "no_text.wav", samples["r05_mfa_cold"])
    # The text goes on where the recording has ended: words that must not land on the silence.
    silence = np.zeros(int(EXTRA_SILENCE_S * SAMPLE_RATE), dtype=np.float32)
    _write_wav(directory / "extra.wav", np.concatenate([samples["r09_librivox_austen"], silence]))
    extra_words = reference("r04_mfa_acoustic")["text"].split()[:EXTRA_WORDS]
    (directory / "extra.txt").write_text(reference("r09_librivox_austen")["text"] + " " + " ".join(extra_words))
    expected["extra"] = reference("r09_librivox_austen")["words"]
    expected.update(mismatch=None, noise=None, no_text=None)
    return expected
