"""The interface every engine implements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from steadyscribe.records import Segment, Window


@dataclass
class WindowAudio:
    """A window and its samples (16 kHz mono float32), handed to an engine in-process only."""

    window: Window
    samples: np.ndarray


@dataclass
class WindowResult:
    """Segments decoded from one window, with times already absolute (file time, seconds)."""

    window: Window
    language: str | None
    segments: list[Segment]


class Engine(Protocol):
    name: str
    # Batch size the engine is running at now; it may shrink under memory pressure.
    batch_size: int

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        """Decode windows (possibly from many files) and yield one result per window.

        Results may come in any order; each names its window.
        """
        ...
