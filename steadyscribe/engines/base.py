"""The interface every engine implements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from steadyscribe.records import Segment, Window


@dataclass
class WindowAudio:
    """A window and its samples (16 kHz mono float32), handed to an engine in-process only."""

    window: Window
    samples: np.ndarray
    # Set when the window is a stretch of speech that an earlier decoding left without words
    # (steadyscribe.engines.speech_gaps): decode it without any prompt, and keep its text even where
    # the model calls it silence; "no_prompt" at the first temperature only, "fallback" at the
    # temperatures after it (sampling, each window seeded on its own).
    redecode: Literal["no_prompt", "fallback"] | None = None


@dataclass
class WindowResult:
    """Segments decoded from one window, with times already absolute (file time, seconds)."""

    window: Window
    language: str | None
    segments: list[Segment]


class Engine(Protocol):
    name: str
    # Batch size the engine is running at now; the transformers engine lowers it under memory pressure.
    batch_size: int

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        """Decode windows (possibly from many files) and yield one result per window.

        Results may come in any order; each names its window.
        """
        ...


class AligningEngine(Engine, Protocol):
    """An engine that also aligns known text (its record says `aligns`: steadyscribe.engines.registry)."""

    def align(self, items: Iterable[tuple[WindowAudio, str]]) -> Iterator[WindowResult]:
        """Word times for each window's text, nothing decoded: one result per (window, text).

        Segments are the text's sentences; each word's probability is the model's for it given the
        audio and the text before it.
        """
        ...


def same_redecode(batch: list[WindowAudio]) -> list[list[WindowAudio]]:
    """The batch cut, in order, into runs of windows decoded the same way (WindowAudio.redecode)."""
    runs: list[list[WindowAudio]] = []
    for item in batch:
        if runs and runs[-1][0].redecode == item.redecode:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs
