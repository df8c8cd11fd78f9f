"""Chunk stage: cut a file's audio into windows of at most 30 s, in the pauses the VAD finds.

Windows tile the whole file (no gaps, no overlap), so every word falls in exactly one window.
A window is left out only where the voice-activity model is confident that none of it holds
speech (steadyscribe.vad): a lost window is a lost transcript. The seconds left out are counted
per file (tasks/stabilize.py reports them), since the windows no longer cover them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.pcm import load_pcm
from steadyscribe.records import DecodedAudio, Window
from steadyscribe.speech import frame_loudness_db, true_runs
from steadyscribe.vad import (
    FRAME_S,
    VadThresholds,
    confidently_silent,
    file_probabilities,
    speech_frames,
    speech_probabilities,
)

# Where a window ends in a pause, this much of the pause goes to the next window, before its speech.
CUT_LEAD_S = 0.3
# Continuous speech is cut at the quietest stretch this long, searched in the last QUIET_SEARCH_S.
QUIET_STRETCH_S = 0.1
QUIET_SEARCH_S = 10.0
LOUDNESS_HOP_S = 0.02
# Whisper starts a window's text within its first second (max_initial_timestamp): a window that
# opens with a longer pause makes it start with later speech, and the first sentence may be left
# out (base, beam 5, the benchmark's ten-minute file). A window is not let open with more
# confidently silent pause than this before its speech: the pause is split off as a window of
# its own, and decoded all the same (on the whole-run benchmark's long_real.wav such a pause
# held whispered speech: dropping it lost a sentence).
MAX_LEADING_PAUSE_S = 1.0


def plan_windows(
    samples: np.ndarray,
    file_id: str,
    max_window_s: float = 30.0,
    min_pause_s: float = 0.3,
    min_window_s: float = 10.0,
    probabilities: np.ndarray | None = None,
    thresholds: VadThresholds = VadThresholds(),
) -> list[Window]:
    """Split `samples` into windows of at most `max_window_s`, each ending in a pause (`_best_cut`).

    `min_pause_s`: the shortest pause between speech regions that counts as a break between
    phrases. `probabilities`: the VAD's frame probabilities of `samples`, computed when not given.
    """
    duration = samples.size / SAMPLE_RATE
    probs = speech_probabilities(samples) if probabilities is None else probabilities
    mask = speech_frames(probs, thresholds)
    bounds = [0.0]
    split_pauses = set()  # starts of the pauses split off a window's start
    while True:
        # After a cut, not at the file's start: there every peer's first window opens the same way.
        if len(bounds) > 1 and (speech_start := _speech_after_long_pause(mask, bounds[-1], max_window_s)) is not None:
            if confidently_silent(probs, bounds[-1], speech_start, thresholds):
                split_pauses.add(bounds[-1])
                bounds.append(speech_start)
        if duration - bounds[-1] <= max_window_s:
            break
        bounds.append(
            _best_cut(samples, mask, bounds[-1] + min_window_s, bounds[-1] + max_window_s, min_pause_s)
        )
    bounds.append(duration)
    windows: list[Window] = []
    for start, end in zip(bounds, bounds[1:]):
        # A split-off pause is kept after a window that is (it was part of the next one before).
        follows_speech = start in split_pauses and bool(windows) and windows[-1].end == round(start, 3)
        if follows_speech or not confidently_silent(probs, start, end, thresholds):
            windows.append(Window(file_id, len(windows), round(start, 3), round(end, 3)))
    return windows


def skipped_seconds(duration_s: float, windows: list[Window]) -> float:
    """Seconds of a file that no window covers (windows judged to hold no speech)."""
    return max(0.0, duration_s - sum(w.end - w.start for w in windows))


def _speech_after_long_pause(mask: np.ndarray, start_s: float, max_window_s: float) -> float | None:
    """Where a window starting at `start_s` should start instead (CUT_LEAD_S before its first
    speech), when it would open with more than MAX_LEADING_PAUSE_S of pause: that happens where
    the previous window had to end (its 30 s were up) inside a long pause.
    None when the pause is short, when no speech follows, or when the pause alone would be longer
    than a window (then the pause is cut into windows of its own first). plan_windows splits the
    pause off only where the VAD is sure it is silent, as a window it keeps; a doubtful pause
    stays with its speech.
    """
    first = int(start_s / FRAME_S)
    speech = np.flatnonzero(mask[first:])
    if speech.size == 0:
        return None
    speech_start = (first + int(speech[0])) * FRAME_S - CUT_LEAD_S
    if MAX_LEADING_PAUSE_S < speech_start - start_s <= max_window_s:
        return round(speech_start, 3)
    return None


def _best_cut(samples: np.ndarray, mask: np.ndarray, earliest_s: float, latest_s: float, min_pause_s: float) -> float:
    """Where to end a window that may end anywhere in [earliest, latest].

    In the latest pause of at least `min_pause_s`, CUT_LEAD_S before the speech that follows it:
    every window costs a full 30 s encoder pass, so long windows mean fewer passes, and the next
    window starts at its speech instead of in silence. Without such a pause, the middle of the
    longest shorter one. Without any pause (continuous speech), the quietest QUIET_STRETCH_S
    near the end, most likely between two words.
    """
    first, last = int(earliest_s / FRAME_S), int(latest_s / FRAME_S)
    pauses = true_runs(~mask[first:last])
    long_pauses = [(start, end) for start, end in pauses if (end - start) * FRAME_S >= min_pause_s]
    if long_pauses:
        start, end = long_pauses[-1]
        cut = max((start + end) // 2, end - round(CUT_LEAD_S / FRAME_S))
    elif pauses:
        start, end = max(pauses, key=lambda run: run[1] - run[0])
        cut = (start + end) // 2
    else:
        return _quietest_cut(samples, max(earliest_s, latest_s - QUIET_SEARCH_S), latest_s)
    return min((first + cut) * FRAME_S, latest_s)


def _quietest_cut(samples: np.ndarray, earliest_s: float, latest_s: float) -> float:
    """The middle of the quietest QUIET_STRETCH_S in [earliest, latest); `latest` if there is no audio there.

    Only inside what the VAD calls speech: loudness picks the point, it never decides that speech is absent.
    """
    first, last = int(earliest_s * SAMPLE_RATE), int(latest_s * SAMPLE_RATE)
    loudness = frame_loudness_db(samples[first:last], SAMPLE_RATE, LOUDNESS_HOP_S)
    width = max(1, round(QUIET_STRETCH_S / LOUDNESS_HOP_S))
    if loudness.size < width:
        return latest_s
    stretch_mean = np.convolve(loudness, np.ones(width) / width, mode="valid")
    return earliest_s + (int(np.argmin(stretch_mean)) + width // 2) * LOUDNESS_HOP_S


def chunk_file(
    decoded: DecodedAudio,
    max_window_s: float = 30.0,
    min_pause_s: float = 0.3,
    vad: VadThresholds = VadThresholds(),
) -> list[Window]:
    """plan_windows over a decoded file, with its VAD probabilities (computed once per file and cached beside its PCM)."""
    samples = load_pcm(decoded.pcm_path)
    return plan_windows(
        samples,
        decoded.file_id,
        max_window_s=max_window_s,
        min_pause_s=min_pause_s,
        probabilities=file_probabilities(decoded.pcm_path, samples),
        thresholds=vad,
    )


@task(name="chunk")
def chunk_task(
    units: Mapping[str, DecodedAudio],
    max_window_s: float = 30.0,
    min_pause_s: float = 0.3,
    vad: VadThresholds = VadThresholds(),
) -> dict[str, list[Window]]:
    """Each unit's windows, by unit id (one task run per group of files)."""
    return {unit_id: chunk_file(unit, max_window_s, min_pause_s, vad) for unit_id, unit in units.items()}
