"""The original openai-whisper path: one window at a time (batch 1), word timestamps on.

Each window goes through openai-whisper's own `transcribe` with the plan's decoding options.
A file's windows are decoded in order; as `transcribe` does within a long file, each window is
prompted with the text of the windows before it (decoding.condition_on_previous_text), unless a
window's text looks like a hallucination (see _carried_tokens), which is then not carried on.
The language of a multilingual model is detected once per file, from its first window with
speech, unless the profile sets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from whisper.tokenizer import get_tokenizer

from steadyscribe.engines.base import WindowAudio, WindowResult
from steadyscribe.engines.decoding import (
    CARRY_MAX_TEMPERATURE,
    MAX_PROMPT_TOKENS,
    COMPRESSION_RATIO_THRESHOLD,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    conditions_on_previous_text,
    prompt_tokens,
    redecode_temperatures,
    window_seed,
)
from steadyscribe.models.provision import load_openai_whisper
from steadyscribe.records import Plan, Segment, Word


@dataclass
class _FileState:
    """What a file's earlier windows leave for its next one."""

    language: str | None
    previous: list[int] = field(default_factory=list)  # text tokens carried as the next prompt


class WhisperBatch1Engine:
    name = "whisper"
    batch_size = 1

    def __init__(self, plan: Plan):
        torch.set_num_threads(max(1, plan.threads))
        self.model = load_openai_whisper(plan.model, device=plan.device, cache_dir=plan.model_cache_dir)
        self.options = plan.decoding
        self.language = plan.language or ("en" if not self.model.is_multilingual else None)
        if not self.model.is_multilingual and (self.language != "en" or self.options.task != "transcribe"):
            raise ValueError(f"{plan.model} is English-only: it can only transcribe English")
        self.condition = conditions_on_previous_text(self.name, self.options)
        self.fp16 = plan.device.startswith("cuda") and plan.dtype in ("float16", "auto")
        # Text tokens are the same for every language; only the special tokens differ.
        self.tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages)
        self.files: dict[str, _FileState] = {}

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        for item in windows:
            if item.window.index == 0 and item.redecode is None:
                # A file starts without a prompt, also when this long-lived engine transcribed it before.
                self.files[item.window.file_id] = _FileState(self.language)
            state = self.files.setdefault(item.window.file_id, _FileState(self.language))
            # A stretch decoded again (WindowAudio.redecode) gets no prompt and leaves the file's prompt as it was.
            condition = self.condition and item.redecode is None
            prompt = [] if item.redecode else prompt_tokens(self.tokenizer.encode, self.options, state.previous if condition else ())
            temperatures = redecode_temperatures(item.redecode, self.options.temperatures)
            if not temperatures:  # no fallback temperatures in the profile
                yield WindowResult(item.window, state.language, [])
                continue
            # Fallback sampling draws from torch's global generator: seeded by the window alone.
            torch.manual_seed(window_seed(item.window))
            result = self.model.transcribe(
                torch.from_numpy(item.samples.copy()),
                language=state.language,
                task=self.options.task,
                temperature=temperatures,
                beam_size=self.options.beam_size if self.options.beam_size > 1 else None,
                patience=self.options.patience,
                best_of=self.options.best_of,
                suppress_tokens=list(self.options.suppress_tokens),
                initial_prompt=self.tokenizer.decode(prompt) if prompt else None,
                condition_on_previous_text=condition,
                # A stretch decoded again is speech to the VAD: its text is judged by the caller.
                no_speech_threshold=None if item.redecode else NO_SPEECH_THRESHOLD,
                word_timestamps=True,
                fp16=self.fp16,
                verbose=None,
            )
            offset = item.window.start
            segments = [s for s in (_segment(raw, offset, item.window.end) for raw in result["segments"]) if s.words]
            if state.language is None and segments:
                state.language = result["language"]  # the file's first speech decides
            if condition:
                state.previous = _carried_tokens(state.previous, result["segments"], self.tokenizer.eot)
            yield WindowResult(item.window, state.language or result.get("language"), segments)


def _carried_tokens(previous: list[int], raw_segments: list[dict], eot: int) -> list[int]:
    """The prompt for a file's next window: the text so far, or nothing after a suspect window.

    Text decoded at a high fallback temperature, repetitive or improbable text, and text over
    what the model calls silence is where hallucinations come from; carrying it into the next
    window's prompt lets the model repeat it there (openai-whisper itself resets the prompt after
    a temperature above 0.5). Only segments with text are judged: an empty segment that the
    model calls silence is the model being right, and resetting the prompt for it left the next
    window without context (base heard "The dog waited by the door" as "E. Dog, weighted by
    E. Dore" after a noise-only window). Windows without segments leave the prompt as it was.
    """
    suspect = any(
        raw["temperature"] > CARRY_MAX_TEMPERATURE
        or raw["compression_ratio"] > COMPRESSION_RATIO_THRESHOLD
        or raw["avg_logprob"] < LOGPROB_THRESHOLD
        or raw["no_speech_prob"] > NO_SPEECH_THRESHOLD
        for raw in raw_segments
        if raw["text"].strip()
    )
    if suspect:
        return []
    return (previous + [t for raw in raw_segments for t in raw["tokens"] if t < eot])[-MAX_PROMPT_TOKENS:]


def _segment(raw: dict, offset: float, window_end: float) -> Segment:
    def clip(t: float) -> float:
        return min(offset + t, window_end)

    words = [
        Word(w["word"].strip(), clip(w["start"]), clip(w["end"]), float(w["probability"]))
        for w in raw.get("words", [])
        if w["word"].strip()
    ]
    return Segment(
        start=words[0].start if words else clip(raw["start"]),
        end=words[-1].end if words else clip(raw["end"]),
        text=raw["text"].strip(),
        words=words,
        avg_logprob=raw.get("avg_logprob"),
        no_speech_prob=raw.get("no_speech_prob"),
        compression_ratio=raw.get("compression_ratio"),
    )
