"""Whisper's log-mel features in numpy, so that the CTranslate2 engine runs without torch.

The same computation as openai-whisper's `log_mel_spectrogram` (periodic Hann window, centred
STFT with reflect padding, last frame dropped, Slaney mel filters as librosa builds them, log10
floored 8 below the loudest value): largest difference on real speech ~2e-5 (tests/test_ct2_torch_free.py).
Audio constants are Whisper's, shared with every engine.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds in one window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # mel frames in one window
TOKENS_PER_SECOND = SAMPLE_RATE // (2 * HOP_LENGTH)  # the encoder halves the frame rate


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """`audio` cut or zero-padded at its end to `length` samples."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


@cache
def mel_filters(n_mels: int) -> np.ndarray:
    """n_mels x (N_FFT // 2 + 1) Slaney-style mel filterbank (librosa's default, Whisper's filters).

    Mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4);
    each triangle is area-normalized (2 / its width in Hz).
    """
    linear_step = 200.0 / 3
    log_start_hz = 1000.0
    log_start_mel = log_start_hz / linear_step
    log_step = np.log(6.4) / 27.0

    def hz_to_mel(hz: float) -> float:
        return hz / linear_step if hz < log_start_hz else log_start_mel + np.log(hz / log_start_hz) / log_step

    mels = np.linspace(0.0, hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    edges = np.where(
        mels < log_start_mel, mels * linear_step, log_start_hz * np.exp(log_step * (mels - log_start_mel))
    )
    bins = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """n_mels x frames log-mel features of 16 kHz mono `audio`, normalized by its loudest value.

    frames = len(audio) // HOP_LENGTH, as openai-whisper gives (its STFT's last frame is dropped).
    Frames that see only the zeros padding a short window have no energy: they are not transformed
    (a 5-second clip in a 30-second window costs a sixth), and come out as the others' floor.
    """
    audio = np.asarray(audio, dtype=np.float32)
    n_frames = len(audio) // HOP_LENGTH
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][: _frames_with_sound(audio, n_frames)]
    # In float64: numpy's float64 FFT is twice as fast as its float32 one here, and closer to exact.
    spectrum = np.fft.rfft(frames * _hann_window(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = np.zeros((n_mels, n_frames), dtype=np.float32)
    # Filter by filter over its few non-zero bins (~400 of 80 x 201): a dense product goes to
    # OpenBLAS, whose threads then spin against CTranslate2's for many times its own cost.
    for band, (low, high) in enumerate(_filter_bins(n_mels)):
        mel[band, : len(frames)] = power[:, low:high] @ mel_filters(n_mels)[band, low:high]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


@cache
def _filter_bins(n_mels: int) -> tuple[tuple[int, int], ...]:
    """(first, last + 1) non-zero bin of each mel filter."""
    return tuple((int(bins[0]), int(bins[-1]) + 1) for bins in map(np.flatnonzero, mel_filters(n_mels)))


def _frames_with_sound(audio: np.ndarray, n_frames: int) -> int:
    """How many leading frames can hold a non-zero sample: those whose window starts at or before
    the last one (frame t covers samples t x HOP_LENGTH -/+ N_FFT / 2). All frames when the end is
    not digital silence for half a window (the reflect padding would bring sound back)."""
    reversed_sound = audio[::-1] != 0
    last = len(audio) - 1 - int(reversed_sound.argmax()) if reversed_sound.any() else -1
    if len(audio) - 1 - last <= N_FFT // 2:
        return n_frames
    return min(n_frames, (last + N_FFT // 2) // HOP_LENGTH + 1)


@cache
def _hann_window() -> np.ndarray:
    # torch.hann_window's default is periodic: the symmetric window of N_FFT + 1 points, last dropped.
    return np.hanning(N_FFT + 1)[:-1]
