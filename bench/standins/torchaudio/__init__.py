"""A stand-in for torchaudio, so stable-ts can run in the benchmark beside torch 2.13.

No torchaudio release loads beside torch 2.13, and stable-ts imports it at import time, though
on the benchmark's path it only resamples (audio that is already 16 kHz) and never saves.
bench.systems.StableTsRunner puts this folder on sys.path only when torchaudio is missing.
"""

from torchaudio import functional

__all__ = ["functional", "save"]


def save(*args, **kwargs):
    raise NotImplementedError("the benchmark's torchaudio stand-in does not write audio files")
