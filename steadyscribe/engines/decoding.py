"""Decoding shared by every engine: which options each engine honours, prompts, seeds, and
temperature fallback as openai-whisper's `transcribe` does it.

A window is decoded greedily (or by beam) first; a hypothesis that looks like a hallucination
(repetitive or improbable text that the model does not call silence) is decoded again at the next
temperature. When no temperature satisfies the thresholds, the least bad attempt is kept.
Sampling is seeded from the window (file and index) and done one window at a time, so a file's
text does not depend on which other files share its run or batch; except on CTranslate2, whose
per-thread generators take a seed only at their first use (docs/engines.md, Decoding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steadyscribe.engines.registry import engine_spec
from steadyscribe.records import DEFAULT_TEMPERATURES, DecodingOptions, Window

# openai-whisper's decoding defaults: retry a window at higher temperature when its text is
# repetitive (compression) or improbable, unless the model says it is silence.
TEMPERATURES = DEFAULT_TEMPERATURES
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# openai-whisper stops carrying text forward after a window that needed a temperature above this.
CARRY_MAX_TEMPERATURE = 0.5
# A prompt holds at most half the decoder's context (openai-whisper's n_text_ctx // 2 - 1).
MAX_PROMPT_TOKENS = 223


def unsupported_options(engine: str, options: DecodingOptions) -> list[str]:
    """'decoding.OPTION: why' for each option set in `options` that `engine` cannot honour: those
    its record refuses, and an explicit condition_on_previous_text `true` on a batched engine."""
    spec = engine_spec(engine)
    problems = [
        f"decoding.{option}: {why}"
        for option, why in spec.refused_options.items()
        if getattr(options, option) != getattr(DecodingOptions(), option)
    ]
    if spec.batched and options.condition_on_previous_text:
        problems.append(
            "decoding.condition_on_previous_text: this engine decodes a file's windows side by side in a batch, "
            "so a window cannot wait for the previous one's text (use engine whisper)"
        )
    return problems


def conditions_on_previous_text(engine: str, options: DecodingOptions) -> bool:
    """Whether windows are prompted with the previous window's text: on by default for batch 1 only."""
    if options.condition_on_previous_text is not None:
        return options.condition_on_previous_text
    return not engine_spec(engine).batched


def fixed_prompt_text(options: DecodingOptions) -> str:
    """The text that prompts every window: the initial prompt, then the hotwords."""
    parts = [options.initial_prompt.strip()] if options.initial_prompt and options.initial_prompt.strip() else []
    if options.hotwords:
        parts.append(", ".join(word.strip() for word in options.hotwords if word.strip()))
    return " ".join(parts)


def prompt_tokens(encode: Callable[[str], list[int]], options: DecodingOptions, previous: Sequence[int] = ()) -> list[int]:
    """Text tokens of a window's prompt (without <|startofprev|>): the fixed prompt, then as much
    of the previous text as fits in MAX_PROMPT_TOKENS (its end, as openai-whisper keeps)."""
    text = fixed_prompt_text(options)
    fixed = encode(" " + text)[:MAX_PROMPT_TOKENS] if text else []
    room = MAX_PROMPT_TOKENS - len(fixed)
    return fixed + (list(previous[-room:]) if room > 0 and previous else [])


# A decoding that stops in an empty segment more than this before its window's end left speech out.
EMPTY_SEGMENT_MARGIN_S = 1.0
TIMESTAMP_PRECISION_S = 0.02


def resume_time(tokens: Sequence[int], timestamp_begin: int, window_s: float) -> float | None:
    """Where a decoding with timestamp tokens left off (seconds into its window), when it ends in
    a segment that opens and holds no text (`... <|a|><|b|>` or a lone `<|b|>`) more than
    EMPTY_SEGMENT_MARGIN_S before the window's end; None when it went to the end.

    That is how Whisper says that the rest goes on in the next 30 s: `transcribe` seeks to the end
    of the last segment with text (`a`; `b` for a lone timestamp) and decodes from there. A fixed
    window has no such next window, so the engine decodes the rest as a window of its own.
    """
    if not tokens or tokens[-1] < timestamp_begin:
        return None
    closed = len(tokens) > 1 and tokens[-2] >= timestamp_begin
    if not (closed or len(tokens) == 1):
        return None
    if (tokens[-1] - timestamp_begin) * TIMESTAMP_PRECISION_S >= window_s - EMPTY_SEGMENT_MARGIN_S:
        return None
    return (tokens[-2 if closed else -1] - timestamp_begin) * TIMESTAMP_PRECISION_S


def window_seed(window: Window) -> int:
    """A sampling seed that depends only on the window (its file's content hash and its index)."""
    digest = hashlib.sha256(f"{window.file_id}:{window.index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class Hypothesis:
    """One generated hypothesis for a window: its tokens (timestamps included) and quality scores."""

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float = 0.0
    timestamps: bool = False  # decoded with timestamp tokens

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
    generate: Callable[[list[int], float], list[Hypothesis]],
    count: int,
    temperatures: Sequence[float] = TEMPERATURES,
) -> list[Hypothesis]:
    """The chosen hypothesis of each of `count` windows.

    `generate(rows, temperature)` decodes the windows at those row indices (in that order): all of
    them together at temperature 0 (greedy or beam); then, at each next temperature, every window that
    still needs a fallback on its own (rows of one), so the engine can seed its sampling from
    that window alone. A first temperature above 0 samples every window on its own too.
    """
    first = temperatures[0]
    together = generate(list(range(count)), first) if first == 0 else [generate([i], first)[0] for i in range(count)]
    for hypothesis in together:
        hypothesis.temperature = first
    attempts = [[hypothesis] for hypothesis in together]
    for temperature in temperatures[1:]:
        retry = [i for i, tried in enumerate(attempts) if tried[-1].needs_fallback]
        if not retry:
            break
        for i in retry:
            (hypothesis,) = generate([i], temperature)
            hypothesis.temperature = temperature
            attempts[i].append(hypothesis)
    return [choose(tried) for tried in attempts]


def choose(attempts: list[Hypothesis]) -> Hypothesis:
    """The last attempt if it passed; else prefer non-repetitive text, then the likeliest."""
    if not attempts[-1].needs_fallback:
        return attempts[-1]
    return min(attempts, key=lambda d: (d.is_repetitive, -d.avg_logprob))


def redecode_temperatures(redecode: str | None, temperatures: Sequence[float]) -> tuple[float, ...]:
    """The temperatures a window is decoded at: all of them normally; for a stretch decoded again
    (engines.base.WindowAudio.redecode) the first alone ("no_prompt") or the rest ("fallback")."""
    if redecode == "no_prompt":
        return tuple(temperatures[:1])
    if redecode == "fallback":
        return tuple(temperatures[1:])
    return tuple(temperatures)
