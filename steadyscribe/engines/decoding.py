"""Temperature fallback shared by the batched engines, as openai-whisper's `transcribe` does it.

A window is decoded greedily (or by beam) first; a hypothesis that looks like a hallucination
(repetitive or improbable text that the model does not call silence) is decoded again at the next
temperature. When no temperature satisfies the thresholds, the least bad attempt is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# openai-whisper's decoding defaults: retry a window at higher temperature when its text is
# repetitive (compression) or improbable, unless the model says it is silence.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6


@dataclass
class Decoding:
    """One generated hypothesis for a window: its tokens (timestamps included) and quality scores."""

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float

    @property
    def is_silence(self) -> bool:
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOGPROB_THRESHOLD

    @property
    def is_repetitive(self) -> bool:
        return self.compression_ratio > COMPRESSION_RATIO_THRESHOLD

    @property
    def needs_fallback(self) -> bool:
        return (self.is_repetitive or self.avg_logprob < LOGPROB_THRESHOLD) and not self.is_silence


def decode_with_fallback(
    generate: Callable[[list[int], float], list[Decoding]],
    count: int,
    temperatures: Sequence[float] = TEMPERATURES,
) -> list[Decoding]:
    """The chosen decoding of each of `count` windows.

    `generate(rows, temperature)` decodes the windows at those row indices (in that order), all of
    them at the first temperature, then only those that still need a fallback at each next one.
    """
    attempts = [[decoding] for decoding in generate(list(range(count)), temperatures[0])]
    for temperature in temperatures[1:]:
        retry = [i for i, tried in enumerate(attempts) if tried[-1].needs_fallback]
        if not retry:
            break
        for i, decoding in zip(retry, generate(retry, temperature)):
            attempts[i].append(decoding)
    return [choose(tried) for tried in attempts]


def choose(attempts: list[Decoding]) -> Decoding:
    """The last attempt if it passed; else prefer non-repetitive text, then the likeliest."""
    if not attempts[-1].needs_fallback:
        return attempts[-1]
    return min(attempts, key=lambda d: (d.is_repetitive, -d.avg_logprob))
