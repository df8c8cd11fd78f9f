"""The original openai-whisper path: one window at a time (batch 1), word timestamps on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from steadyscribe.engines.base import WindowAudio, WindowResult
from steadyscribe.models.provision import load_openai_whisper
from steadyscribe.records import Plan, Segment, Word


class WhisperBatch1Engine:
    name = "whisper"
    batch_size = 1

    def __init__(self, plan: Plan):
        torch.set_num_threads(max(1, plan.threads))
        self.model = load_openai_whisper(plan.model, device=plan.device, cache_dir=plan.model_cache_dir)
        self.language = plan.language or ("en" if not self.model.is_multilingual else None)
        self.fp16 = plan.device.startswith("cuda") and plan.dtype in ("float16", "auto")

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        for item in windows:
            result = self.model.transcribe(
                torch.from_numpy(item.samples.copy()),
                language=self.language,
                word_timestamps=True,
                # Windows are decoded independently; text from a previous window
                # would only let one window's hallucination spread into the next.
                condition_on_previous_text=False,
                fp16=self.fp16,
                verbose=None,
            )
            offset = item.window.start
            segments = [_segment(raw, offset, item.window.end) for raw in result["segments"]]
            yield WindowResult(item.window, result.get("language"), [s for s in segments if s.words])


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
