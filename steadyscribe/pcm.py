"""Decoded audio on disk: 16 kHz mono little-endian float32 samples, one raw file per input.

The decode stage writes these files; every later stage, in whichever process it runs, reads
them in slices (PcmSamples), so memory does not grow with the input's length.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class PcmSamples:
    """A decoded file's samples (little-endian float32), read from disk slice by slice.

    Behaves like a read-only 1-D array for len(), .size and slicing. Unlike a memory map,
    a read leaves no pages of the file mapped into the process, so resident memory stays
    at the size of the slices in use however long the audio is.
    """

    dtype = np.dtype("<f4")

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.size = os.path.getsize(self.path) // self.dtype.itemsize

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"PcmSamples supports slices only, got {type(key).__name__}")
        start, stop, step = key.indices(self.size)
        samples = self._read(start, max(0, stop - start))
        return samples if step == 1 else samples[::step]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """All samples in memory: only for short files (tests, tools)."""
        samples = self._read(0, self.size)
        return samples if dtype is None else samples.astype(dtype)

    def _read(self, first: int, count: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(first * self.dtype.itemsize)
            return np.fromfile(f, dtype=self.dtype, count=count)


def load_pcm(pcm_path: str | Path) -> PcmSamples:
    """A decoded file's samples, read lazily (see PcmSamples)."""
    return PcmSamples(pcm_path)
