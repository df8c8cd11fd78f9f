"""Frame loudness and flag runs (steadyscribe.speech), and the VAD model (steadyscribe.vad)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import FIXTURES
from steadyscribe import vad
from steadyscribe.records import InputFile
from steadyscribe.speech import frame_loudness_db, true_runs
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.vad import FRAME_S, VadThresholds, VadUnavailable, confidently_silent, speech_frames

SR = 16000
HOP = 0.02


def _noise(duration: float, level: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, round(duration * SR)).astype(np.float32)


def test_loudness_of_memory_mapped_input_matches_in_memory(tmp_path):
    audio = _noise(7.0, 0.1)
    path = tmp_path / "pcm.f32"
    audio.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    np.testing.assert_array_equal(frame_loudness_db(mapped, SR, HOP), frame_loudness_db(audio, SR, HOP))


def test_loudness_partial_last_frame_and_empty_input():
    assert len(frame_loudness_db(_noise(0.51, 0.1), SR, HOP)) == 26
    assert len(frame_loudness_db(np.zeros(0, dtype=np.float32), SR, HOP)) == 0


def test_true_runs():
    assert true_runs(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert true_runs(np.zeros(3, dtype=bool)) == []


@pytest.fixture(scope="module")
def real_speech(tmp_path_factory):
    name = "r09_librivox_austen"
    decoded = decode_input(InputFile(str(FIXTURES / "real" / f"{name}.flac")), tmp_path_factory.mktemp("vad"))
    return load_pcm(decoded.pcm_path), json.loads((FIXTURES / "real" / f"{name}.json").read_text())


def test_the_vad_finds_real_words_and_their_pauses(real_speech):
    samples, truth = real_speech
    mask = speech_frames(vad.speech_probabilities(samples))
    frames = np.arange(len(mask)) * FRAME_S + FRAME_S / 2
    inside_words = np.zeros(len(mask), dtype=bool)
    for word in truth["words"]:
        inside_words |= (frames >= word["start"]) & (frames < word["end"])
    assert mask[inside_words].mean() >= 0.9  # the words are speech
    assert not mask[frames < truth["words"][0]["start"] - 0.3].any()  # the lead-in is not


def test_blocks_carry_the_model_state(real_speech, monkeypatch):
    samples, _ = real_speech
    whole = vad.SileroVad().probabilities(samples)
    monkeypatch.setattr(vad, "BLOCK_FRAMES", 7)
    np.testing.assert_allclose(vad.SileroVad().probabilities(samples), whole, atol=1e-6)


def test_the_model_is_loaded_once_per_process():
    assert vad.load_vad() is vad.load_vad()


def test_without_the_model_file_speech_detection_refuses(tmp_path):
    with pytest.raises(VadUnavailable, match="reinstall steadyscribe"):
        vad.SileroVad(tmp_path / "missing.onnx")


def test_without_onnxruntime_speech_detection_refuses(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(VadUnavailable, match="needs onnxruntime"):
        vad.SileroVad()


def test_confident_silence_ignores_a_lone_noisy_frame():
    probs = np.full(100, 0.02, dtype=np.float32)
    probs[50] = 0.3  # one frame lifted by noise
    assert confidently_silent(probs, 1.0, 2.0, VadThresholds())
    probs[49:53] = 0.6  # a syllable
    assert not confidently_silent(probs, 1.0, 2.0, VadThresholds())
    assert confidently_silent(probs, 0.0, 1.0, VadThresholds())
