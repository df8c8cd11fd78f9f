"""Inputs for the known-text alignment tests: real word-timed recordings with their texts, and texts that do not fit."""

from __future__ import annotations

import importlib.util
import json
import shutil
import wave
from pathlib import Path

import numpy as np

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
REAL = FIXTURES / "real"
TIMED = ["r04_mfa_acoustic", "r05_mfa_cold", "r09_librivox_austen"]
SAMPLE_RATE = 16000
GAP_S = 1.0  # silence between the recordings joined into the long file


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
    spec = importlib.util.spec_from_file_location("make_real_fixtures", ROOT / "scripts" / "make_real_fixtures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.non_speech(seconds)["pink"]


def prepare(directory: Path) -> dict[str, dict]:
    """Write the inputs into `directory`; returns name -> reference words (or None) for each audio input.

    - the three word-timed recordings, each with its own text;
    - `joined`: the three one after another with a second of silence between (longer than a
      window, so its text must be split across windows), its text and shifted word times;
    - `mismatch`: r09's audio with r04's text;
    - `noise`: pink noise with r04's text (nothing there to align);
    - `no_text`: r05's audio without any text file.
    """
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.decode import decode_input, load_pcm

    expected: dict[str, dict | None] = {}
    for name in TIMED:
        shutil.copy(REAL / f"{name}.flac", directory)
        (directory / f"{name}.txt").write_text(reference(name)["text"] + "\n")
        expected[name] = reference(name)["words"]
    pieces, words, texts, offset = [], [], [], 0.0
    work = directory / ".decoded"
    work.mkdir(exist_ok=True)
    for name in TIMED:
        samples = np.asarray(load_pcm(decode_input(InputFile(str(REAL / f"{name}.flac")), work).pcm_path))
        pieces += [samples, np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)]
        words += [{**w, "start": w["start"] + offset, "end": w["end"] + offset} for w in reference(name)["words"]]
        texts.append(reference(name)["text"])
        offset += len(samples) / SAMPLE_RATE + GAP_S
    shutil.rmtree(work)
    _write_wav(directory / "joined.wav", np.concatenate(pieces))
    (directory / "joined.txt").write_text("\n".join(texts))
    expected["joined"] = words
    shutil.copy(REAL / "r09_librivox_austen.flac", directory / "mismatch.flac")
    (directory / "mismatch.txt").write_text(reference("r04_mfa_acoustic")["text"])
    _write_wav(directory / "noise.wav", _pink_noise(8.0))
    (directory / "noise.txt").write_text(reference("r04_mfa_acoustic")["text"])
    shutil.copy(REAL / "r05_mfa_cold.flac", directory / "no_text.flac")
    expected.update(mismatch=None, noise=None, no_text=None)
    return expected
