"""Chunk stage: cut a file's audio into windows of at most 30 s, at pauses.

Windows tile the whole file (no gaps, no overlap), so every word falls in exactly
one window. Only windows of near-digital silence are dropped: a relative speech
detector can miss dense speech, and a lost window is a lost transcript, while
text invented over noise is removed later (engine no-speech checks, stabilization).
"""

from __future__ import annotations

import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.records import DecodedAudio, Window
from steadyscribe.speech import frame_loudness_db, mask_from_loudness, true_runs
from steadyscribe.tasks.decode import load_pcm

HOP_S = 0.02
# Quieter than any recording's noise floor: a window that never rises above it holds nothing.
SILENCE_DBFS = -60.0
# Where a window ends in a pause, this much of the pause goes to the next window, before its speech.
CUT_LEAD_S = 0.3
# Continuous speech is cut at the quietest stretch this long, searched in the last QUIET_SEARCH_S.
QUIET_STRETCH_S = 0.1
QUIET_SEARCH_S = 10.0


def plan_windows(
    samples: np.ndarray,
    file_id: str,
    max_window_s: float = 30.0,
    min_pause_s: float = 0.3,
    min_window_s: float = 10.0,
) -> list[Window]:
    """Split `samples` into windows of at most `max_window_s`, each ending in a pause (`_best_cut`).

    `min_pause_s`: the shortest silence that counts as a break between phrases (shorter ones can
    be the closure of a stop consonant inside a word).
    """
    duration = samples.size / SAMPLE_RATE
    loudness = frame_loudness_db(samples, SAMPLE_RATE, HOP_S)
    mask = mask_from_loudness(loudness, HOP_S)
    bounds = [0.0]
    while duration - bounds[-1] > max_window_s:
        bounds.append(_best_cut(mask, loudness, bounds[-1] + min_window_s, bounds[-1] + max_window_s, min_pause_s))
    bounds.append(duration)
    windows = []
    for start, end in zip(bounds, bounds[1:]):
        frames = loudness[int(start / HOP_S) : int(np.ceil(end / HOP_S))]
        if frames.size and frames.max() > SILENCE_DBFS:
            windows.append(Window(file_id, len(windows), round(start, 3), round(end, 3)))
    return windows


def _best_cut(
    mask: np.ndarray, loudness: np.ndarray, earliest_s: float, latest_s: float, min_pause_s: float
) -> float:
    """Where to end a window that may end anywhere in [earliest, latest].

    In the latest pause of at least `min_pause_s`, CUT_LEAD_S before the speech that follows it:
    every window costs a full 30 s encoder pass, so long windows mean fewer passes, and the next
    window starts at its speech instead of in silence. Without such a pause, the middle of the
    longest shorter one. Without any pause (continuous speech), the quietest QUIET_STRETCH_S
    near the end, most likely between two words.
    """
    first, last = int(earliest_s / HOP_S), int(latest_s / HOP_S)
    pauses = true_runs(~mask[first:last])
    long_pauses = [(start, end) for start, end in pauses if (end - start) * HOP_S >= min_pause_s]
    if long_pauses:
        start, end = long_pauses[-1]
        cut = max((start + end) // 2, end - round(CUT_LEAD_S / HOP_S))
    elif pauses:
        start, end = max(pauses, key=lambda run: run[1] - run[0])
        cut = (start + end) // 2
    else:
        return _quietest_cut(loudness, max(first, last - round(QUIET_SEARCH_S / HOP_S)), last)
    return (first + cut) * HOP_S


def _quietest_cut(loudness: np.ndarray, first: int, last: int) -> float:
    """The middle of the quietest QUIET_STRETCH_S in frames [first, last); `last` if there is no audio there."""
    width = max(1, round(QUIET_STRETCH_S / HOP_S))
    region = loudness[first:last]
    if region.size < width:
        return last * HOP_S
    stretch_mean = np.convolve(region, np.ones(width) / width, mode="valid")
    return (first + int(np.argmin(stretch_mean)) + width // 2) * HOP_S


@task(name="chunk", task_run_name="chunk {decoded.source}")
def chunk_task(decoded: DecodedAudio, max_window_s: float = 30.0, min_pause_s: float = 0.3) -> list[Window]:
    return plan_windows(load_pcm(decoded.pcm_path), decoded.file_id, max_window_s=max_window_s, min_pause_s=min_pause_s)
