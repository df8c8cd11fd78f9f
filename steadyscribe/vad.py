"""Where the audio holds speech, from a trained voice-activity model: Silero VAD v6 (ONNX).

The model gives one speech probability per 32 ms frame (512 samples at 16 kHz). It is a small
convolutional encoder followed by an LSTM: each frame is fed with the last 64 samples of the
frame before it as context, and the LSTM state carries from frame to frame. Frames are run in
blocks, carrying the state and the context across blocks, so a file of hours never needs more
than one block of frames in memory (the samples are read from disk slice by slice).

The model file ships inside this package (steadyscribe/assets, MIT, see the licence note there)
and runs with onnxruntime, a dependency of the default install. Without either, `load_vad`
raises VadUnavailable: nothing falls back to a loudness detector, which deletes real speech.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from steadyscribe import SAMPLE_RATE
from steadyscribe.speech import true_runs

MODEL_PATH = Path(__file__).parent / "assets" / "silero_vad_v6.onnx"
FRAME_SAMPLES = 512
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE  # 0.032 s
CONTEXT_SAMPLES = 64
STATE_SHAPE = (1, 1, 128)
# Frames per model call: 16 s of audio. ONNX Runtime keeps the buffers of its largest call:
# blocks of 5000 frames held ~90 MiB more than blocks of 500, and ran no faster.
BLOCK_FRAMES = 500
# Frames averaged before judging that a span is confidently silent (160 ms).
SMOOTHING_FRAMES = 5


class VadUnavailable(RuntimeError):
    """The voice-activity model cannot run here (onnxruntime or the model file is missing)."""


class VadThresholds(BaseModel):
    """How speech probabilities become decisions: the profile's `vad` block, validated there.

    Chunking cuts in the pauses and skips windows that are silent with confidence; stabilization
    drops a word only over confident silence.

    threshold: a frame at or above it starts speech.
    neg_threshold: speech goes on while frames stay at or above it (hysteresis).
    silence_threshold: below it a frame is confidently non-speech. Only spans whose every frame
      is below it may lose audio (a skipped window) or words (the hallucination filter).
    min_silence_s: shorter drops below neg_threshold stay inside speech.
    min_speech_s: shorter bursts of speech are ignored (clicks).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    threshold: float = Field(0.5, gt=0, lt=1)
    neg_threshold: float = Field(0.35, gt=0, lt=1)
    silence_threshold: float = Field(0.1, gt=0, lt=1)
    min_silence_s: float = Field(0.1, ge=0)
    min_speech_s: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> VadThresholds:
        if not self.silence_threshold <= self.neg_threshold <= self.threshold:
            raise ValueError(
                "expected silence_threshold <= neg_threshold <= threshold "
                f"(got {self.silence_threshold}, {self.neg_threshold}, {self.threshold})"
            )
        return self


class SileroVad:
    """One onnxruntime session of the model; `probabilities` is safe to call from many threads."""

    def __init__(self, model_path: Path = MODEL_PATH):
        try:
            import onnxruntime
        except ImportError as error:
            raise VadUnavailable(
                "speech detection needs onnxruntime (a dependency of steadyscribe: "
                "pip install onnxruntime==1.32.0, or reinstall steadyscribe)"
            ) from error
        if not Path(model_path).is_file():
            raise VadUnavailable(f"the voice-activity model {model_path} is missing; reinstall steadyscribe")
        options = onnxruntime.SessionOptions()
        # One thread: the model is tiny, and the engines want the cores.
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(model_path), providers=["CPUExecutionProvider"], sess_options=options
        )
        self._lock = threading.Lock()

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability (float32) of each 32 ms frame; a trailing partial frame is zero-padded."""
        n_frames = -(-len(samples) // FRAME_SAMPLES)
        out = np.empty(n_frames, dtype=np.float32)
        h = np.zeros(STATE_SHAPE, dtype=np.float32)
        c = np.zeros(STATE_SHAPE, dtype=np.float32)
        context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        for first in range(0, n_frames, BLOCK_FRAMES):
            last = min(first + BLOCK_FRAMES, n_frames)
            block = np.zeros((last - first) * FRAME_SAMPLES, dtype=np.float32)
            piece = samples[first * FRAME_SAMPLES : last * FRAME_SAMPLES]
            block[: len(piece)] = piece
            frames = block.reshape(-1, FRAME_SAMPLES)
            # Each frame is preceded by the last CONTEXT_SAMPLES of the frame before it.
            contexts = np.concatenate([context[None, :], frames[:-1, -CONTEXT_SAMPLES:]])
            with self._lock:
                probs, h, c = self.session.run(
                    None, {"input": np.concatenate([contexts, frames], axis=1), "h": h, "c": c}
                )
            out[first:last] = np.asarray(probs, dtype=np.float32).reshape(-1)
            context = frames[-1, -CONTEXT_SAMPLES:].copy()
        return out


@cache
def load_vad() -> SileroVad:
    """The process's one model session (loading takes ~50 ms; the session is reused)."""
    return SileroVad()


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability of each 32 ms frame of 16 kHz `samples` (see SileroVad.probabilities)."""
    return load_vad().probabilities(samples)


def probabilities_path(pcm_path: str | Path) -> Path:
    """Where the chunk stage keeps a file's frame probabilities, beside its decoded audio, for
    the stabilize stage to reuse (the model then runs once per file)."""
    return Path(f"{pcm_path}.vad.f32")


def file_probabilities(pcm_path: str | Path, samples: np.ndarray) -> np.ndarray:
    """The frame probabilities of a decoded file, computed once and kept beside it."""
    path = probabilities_path(pcm_path)
    expected = -(-len(samples) // FRAME_SAMPLES)
    if path.is_file():
        kept = np.fromfile(path, dtype=np.float32)
        if len(kept) == expected:
            return kept
    probs = speech_probabilities(samples)
    tmp = path.with_name(path.name + ".tmp")
    probs.tofile(tmp)
    tmp.replace(path)
    return probs


def speech_frames(probs: np.ndarray, thresholds: VadThresholds = VadThresholds()) -> np.ndarray:
    """True for each frame inside speech: hysteresis between threshold and neg_threshold, pauses
    shorter than min_silence_s filled, bursts shorter than min_speech_s dropped."""
    probs = np.asarray(probs)
    mask = np.zeros(len(probs), dtype=bool)
    for start, end in true_runs(probs >= thresholds.neg_threshold):
        if (probs[start:end] >= thresholds.threshold).any():
            mask[start:end] = True
    min_silence = round(thresholds.min_silence_s / FRAME_S)
    for start, end in true_runs(~mask):
        if 0 < start and end < len(mask) and end - start < min_silence:
            mask[start:end] = True
    min_speech = round(thresholds.min_speech_s / FRAME_S)
    for start, end in true_runs(mask):
        if end - start < min_speech:
            mask[start:end] = False
    return mask


def frame_span(start_s: float, end_s: float, n_frames: int) -> slice:
    """The frames that overlap [start_s, end_s) (at least one, clipped to the file)."""
    first = min(max(int(start_s / FRAME_S), 0), max(n_frames - 1, 0))
    last = min(max(int(np.ceil(end_s / FRAME_S)), first + 1), n_frames)
    return slice(first, last)


def confidently_silent(probs: np.ndarray, start_s: float, end_s: float, thresholds: VadThresholds) -> bool:
    """Whether the probability, averaged over SMOOTHING_FRAMES, stays below silence_threshold over
    all of [start_s, end_s). The average keeps a lone frame that noise lifts (pink noise reaches
    0.26 in single frames) from counting as speech; a spoken syllable lifts several frames."""
    if len(probs) == 0:
        return True
    span = frame_span(start_s, end_s, len(probs))
    half = SMOOTHING_FRAMES // 2
    first, last = max(span.start - half, 0), min(span.stop + half, len(probs))
    around = np.asarray(probs[first:last], dtype=np.float64)
    smoothed = np.convolve(around, np.ones(SMOOTHING_FRAMES) / SMOOTHING_FRAMES, mode="same")
    inside = smoothed[span.start - first : span.stop - first]
    return bool(inside.max() < thresholds.silence_threshold)
