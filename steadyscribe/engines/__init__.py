"""Inference engines behind one small interface, chosen by the plan."""

from __future__ import annotations

from steadyscribe.engines.base import Engine, WindowAudio, WindowResult
from steadyscribe.records import Plan

__all__ = ["Engine", "WindowAudio", "WindowResult", "load_engine"]


def load_engine(plan: Plan) -> Engine:
    """Build the engine the plan names, with its model loaded."""
    if plan.engine == "whisper":
        from steadyscribe.engines.whisper_batch1 import WhisperBatch1Engine

        return WhisperBatch1Engine(plan)
    raise ValueError(f"unknown engine {plan.engine!r}; known: whisper")
