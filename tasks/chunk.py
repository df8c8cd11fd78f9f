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
from steadyscribe.speech import frame_loudness_db, mask_from_loudness
from tasks.decode import load_pcm

HOP_S = 0.02
# Quieter than any recording's noise floor: a window that never rises above it holds nothing.
SILENCE_DBFS = -60.0


def plan_windows(
    samples: np.ndarray,
    file_id: str,
    max_window_s: float = 30.0,
    min_window_s: float = 10.0,
) -> list[Window]:
    """Split `samples` into windows ending in the longest pause of each window's tail."""
    duration = samples.size / SAMPLE_RATE
    loudness = frame_loudness_db(samples, SAMPLE_RATE, HOP_S)
    mask = mask_from_loudness(loudness, HOP_S)
    bounds = [0.0]
    while duration - bounds[-1] > max_window_s:
        bounds.append(_best_cut(mask, bounds[-1] + min_window_s, bounds[-1] + max_window_s))
    bounds.append(duration)
    windows = []
    for start, end in zip(bounds, bounds[1:]):
        frames = loudness[int(start / HOP_S) : int(np.ceil(end / HOP_S))]
        if frames.size and frames.max() > SILENCE_DBFS:
            windows.append(Window(file_id, len(windows), round(start, 3), round(end, 3)))
    return windows


def _best_cut(mask: np.ndarray, earliest_s: float, latest_s: float) -> float:
    """Middle of the longest non-speech run in [earliest, latest]; `latest` when there is none."""
    first, last = int(earliest_s / HOP_S), int(latest_s / HOP_S)
    region = mask[first:last]
    best_len, best_mid, run_start = 0, None, None
    for i, is_speech in enumerate(np.append(region, True)):
        if not is_speech and run_start is None:
            run_start = i
        elif is_speech and run_start is not None:
            if i - run_start > best_len:
                best_len, best_mid = i - run_start, (run_start + i) // 2
            run_start = None
    if best_mid is None:
        return latest_s
    return (first + best_mid) * HOP_S


@task(name="chunk", task_run_name="chunk {decoded.source}")
def chunk_task(decoded: DecodedAudio, max_window_s: float = 30.0) -> list[Window]:
    return plan_windows(load_pcm(decoded.pcm_path), decoded.file_id, max_window_s=max_window_s)
