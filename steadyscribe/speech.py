"""Frame loudness, and runs of flags: the signal-level helpers of speech detection.

Loudness never decides on its own that speech is absent (a trained VAD does that:
steadyscribe.vad); it only picks the quietest point inside speech, where a window must be cut
in continuous speech.

Audio is read in blocks, so a memory-mapped file of hours is never copied whole; only the small
per-frame loudness array (50 values per second at the default hop) is kept.
"""

from __future__ import annotations

import numpy as np

# Digital silence would give log(0); this is far below any recorded noise floor.
SILENCE_DB = -120.0
# Frames per block: bounds the temporary copies (a few MB at 16 kHz and 20 ms hops).
_BLOCK_FRAMES = 1024
# Energy below this is left out of the loudness: speech has little there, rumble and
# coloured noise have most of theirs.
_LOW_CUT_HZ = 150.0


def frame_loudness_db(
    samples: np.ndarray, sample_rate: int = 16000, hop_s: float = 0.02, low_cut_hz: float = _LOW_CUT_HZ
) -> np.ndarray:
    """Level in dB (full scale = 0 dB) of each hop frame, counting only energy above `low_cut_hz`.

    Frame i is [i * hop, (i + 1) * hop), measured with a Hann window twice as long centred on it.
    Leaving out the lowest band removes hum, rumble and the slow swings of pink or brown noise
    that would otherwise look like syllables in 20 ms frames; speech keeps nearly all its energy.
    A trailing partial frame counts as one.
    """
    hop = max(1, round(hop_s * sample_rate))
    half = hop // 2
    n_frames = -(-len(samples) // hop)
    window = np.hanning(2 * hop)
    # Scaled so a full-scale sine reads about -3 dB, like a plain RMS level.
    norm = 2.0 / (np.sum(window**2) * 2 * hop)
    keep = np.fft.rfftfreq(2 * hop, 1.0 / sample_rate) >= low_cut_hz
    offsets = np.arange(2 * hop)
    loudness = np.empty(n_frames, dtype=np.float64)
    for first in range(0, n_frames, _BLOCK_FRAMES):
        last = min(first + _BLOCK_FRAMES, n_frames)
        lo, hi = first * hop - half, last * hop + hop + half
        block = np.asarray(samples[max(0, lo) : min(len(samples), hi)], dtype=np.float64)
        block = np.pad(block, (max(0, -lo), hi - lo - max(0, -lo) - len(block)))
        frames = block[np.arange(last - first)[:, None] * hop + offsets] * window
        power = np.sum(np.abs(np.fft.rfft(frames, axis=1)[:, keep]) ** 2, axis=1) * norm
        loudness[first:last] = 10.0 * np.log10(np.maximum(power, 10.0 ** (SILENCE_DB / 10.0)))
    return loudness


def true_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open (start, end) frame indices of each run of True."""
    edges = np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
