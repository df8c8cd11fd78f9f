"""Chunk stage: cut a file's audio into windows of at most 30 s, at pauses.

Windows tile the whole file (no gaps, no overlap), so every word falls in exactly
one window. Windows with no speech at all are dropped: Whisper tends to invent
text over silence and noise, and nothing real is lost there.
"""

from __future__ import annotations

import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.records import DecodedAudio, Window
from steadyscribe.speech import speech_mask
from tasks.decode import load_pcm

HOP_S = 0.02


def plan_windows(
    samples: np.ndarray,
    file_id: str,
    max_window_s: float = 30.0,
    min_window_s: float = 10.0,
    min_speech_s: float = 0.1,
) -> list[Window]:
    """Split `samples` into windows ending in the longest pause of each window's tail."""
    duration = samples.size / SAMPLE_RATE
    mask = speech_mask(samples, SAMPLE_RATE, HOP_S)
    bounds = [0.0]
    while duration - bounds[-1] > max_window_s:
        bounds.append(_best_cut(mask, bounds[-1] + min_window_s, bounds[-1] + max_window_s))
    bounds.append(duration)
    windows = []
    for start, end in zip(bounds, bounds[1:]):
        speech_s = mask[int(start / HOP_S) : int(np.ceil(end / HOP_S))].sum() * HOP_S
        if speech_s >= min_speech_s:
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
