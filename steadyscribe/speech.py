"""Where the audio holds speech, judged from its loudness alone (no model, engine-independent).

Frame loudness (dB per hop, above 150 Hz) is compared against an adaptive noise floor: a low
percentile of the frame loudness in a sliding window of tens of seconds, so slow changes in
background level are followed while a word never raises the floor under itself. Hysteresis
(a higher level to enter speech than to stay in it) and the filling of short gaps keep
word-internal dips and stop-consonant closures inside speech.

Audio is read in blocks, so a memory-mapped file of hours is never copied whole; only the small
per-frame loudness array (50 values per second at the default hop) is kept.
"""

from __future__ import annotations

import numpy as np

# Digital silence would give log(0); this is far below any recorded noise floor.
SILENCE_DB = -120.0
# Below any recording's noise floor (16-bit dither alone is about -100 dB): exact or near zeros.
DIGITAL_SILENCE_DB = -110.0
# Frames per block: bounds the temporary copies (a few MB at 16 kHz and 20 ms hops).
_BLOCK_FRAMES = 1024
# Energy below this is left out of the loudness: speech has little there, rumble and
# coloured noise have most of theirs.
_LOW_CUT_HZ = 150.0
# Margins above the floor in units of the noise's own jitter, so fluctuating noise is not speech.
_ENTER_SPREADS = 5.0
_STAY_SPREADS = 3.0


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


def noise_floor_db(
    loudness_db: np.ndarray,
    hop_s: float = 0.02,
    window_s: float = 30.0,
    percentile: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame background level and its spread (dB), from low percentiles in a sliding window.

    The floor is the `percentile`-th loudness; the spread (a standard deviation for the noise's
    frame-to-frame jitter) comes from the distance between it and the 2nd percentile, so margins
    can widen for fluctuating noise. Evaluated once per second and interpolated between, which
    keeps it cheap on long files.
    """
    n = len(loudness_db)
    if n == 0:
        return loudness_db.copy(), loudness_db.copy()
    half = max(1, round(window_s / hop_s / 2))
    step = max(1, round(1.0 / hop_s))
    centres = np.arange(0, n, step)
    lows = np.array([_low_percentiles(loudness_db[max(0, c - half) : c + half + 1], percentile) for c in centres])
    # For Gaussian jitter the 2nd and 10th percentiles lie 2.05 and 1.28 deviations below the mean.
    spread = (lows[:, 1] - lows[:, 0]) / 0.77
    frames = np.arange(n)
    return np.interp(frames, centres, lows[:, 1]), np.interp(frames, centres, spread)


def _low_percentiles(loudness_db: np.ndarray, percentile: float) -> np.ndarray:
    """The 2nd and `percentile`-th loudness. When the background is recorded noise but a little
    digital silence (padding, a muted start) sits below it, the silence is left out: it is not
    the noise, and would make the noise look wildly fluctuating."""
    lows = np.percentile(loudness_db, [2.0, percentile])
    if lows[0] <= DIGITAL_SILENCE_DB < lows[1]:
        lows = np.percentile(loudness_db[loudness_db > DIGITAL_SILENCE_DB], [2.0, percentile])
    return lows


def speech_mask(samples: np.ndarray, sample_rate: int = 16000, hop_s: float = 0.02, **decision: float) -> np.ndarray:
    """True for each hop frame that holds speech; `decision` tunes `mask_from_loudness`."""
    return mask_from_loudness(frame_loudness_db(samples, sample_rate, hop_s), hop_s, **decision)


def mask_from_loudness(
    loudness_db: np.ndarray,
    hop_s: float = 0.02,
    enter_db: float = 3.0,
    stay_db: float = 1.5,
    dynamic_range_db: float = 45.0,
    fill_gap_s: float = 0.1,
    min_speech_s: float = 0.06,
    hangover_s: float = 0.02,
) -> np.ndarray:
    """Speech frames from precomputed frame loudness (callers reuse the loudness).

    A run of frames is speech when it rises `enter_db` above the noise floor; it stays speech
    while above `stay_db` (both widened for noise that fluctuates more). Levels more than
    `dynamic_range_db` below the loud part of the file never count (keeps faint synthesis
    tails out when the floor is digital silence). Gaps shorter than `fill_gap_s` are filled,
    bursts shorter than `min_speech_s` dropped, and each region is held `hangover_s` past its
    end for decaying word endings.
    """
    n = len(loudness_db)
    if n == 0:
        return np.zeros(0, dtype=bool)
    floor, spread = noise_floor_db(loudness_db, hop_s)
    lowest = np.percentile(loudness_db, 95.0) - dynamic_range_db
    enter = np.maximum(floor + np.maximum(enter_db, _ENTER_SPREADS * spread), lowest)
    stay = np.maximum(floor + np.maximum(stay_db, _STAY_SPREADS * spread), lowest)

    above_enter = loudness_db > enter
    above_stay = loudness_db > stay
    # Hysteresis: a run above `stay` is speech when any frame in it is above `enter`.
    mask = np.zeros(n, dtype=bool)
    for start, end in true_runs(above_stay):
        if above_enter[start:end].any():
            mask[start:end] = True

    mask = _fill_short_gaps(mask, round(fill_gap_s / hop_s))
    mask = _drop_short_runs(mask, round(min_speech_s / hop_s))
    hangover = round(hangover_s / hop_s)
    if hangover > 0:
        for _, end in true_runs(mask):
            mask[end : end + hangover] = True
    return mask


def speech_regions(
    mask: np.ndarray, hop_s: float = 0.02, min_gap_s: float = 0.3
) -> list[tuple[float, float]]:
    """Speech regions (start, end) in seconds, merging those separated by less than `min_gap_s`."""
    regions: list[tuple[float, float]] = []
    for start, end in true_runs(np.asarray(mask, dtype=bool)):
        start_s, end_s = start * hop_s, end * hop_s
        if regions and start_s - regions[-1][1] < min_gap_s:
            regions[-1] = (regions[-1][0], end_s)
        else:
            regions.append((start_s, end_s))
    return regions


def true_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open (start, end) frame indices of each run of True."""
    edges = np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _fill_short_gaps(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """Set to True the interior False runs of at most `max_gap` frames (leading/trailing ones stay)."""
    out = mask.copy()
    for start, end in true_runs(~mask):
        if 0 < start and end < len(mask) and end - start <= max_gap:
            out[start:end] = True
    return out


def _drop_short_runs(mask: np.ndarray, min_len: int) -> np.ndarray:
    out = mask.copy()
    for start, end in true_runs(mask):
        if end - start < min_len:
            out[start:end] = False
    return out
