"""Inference engines behind one small interface, chosen by the plan."""

from __future__ import annotations

import importlib
import importlib.util

from steadyscribe.engines.base import Engine, WindowAudio, WindowResult
from steadyscribe.records import Plan

__all__ = ["Engine", "WindowAudio", "WindowResult", "available_engines", "load_engine", "provisioning_error"]

# engine name → (module, class, the package it needs, the model format it loads)
ENGINES = {
    "whisper": ("steadyscribe.engines.whisper_batch1", "WhisperBatch1Engine", "whisper", "openai-whisper"),
    "transformers": ("steadyscribe.engines.transformers_engine", "TransformersEngine", "transformers", "transformers"),
    "ctranslate2": ("steadyscribe.engines.ctranslate2_engine", "CTranslate2Engine", "ctranslate2", "ctranslate2"),
}


def available_engines() -> set[str]:
    """Engines whose module exists and whose runtime package is installed."""
    return {
        name
        for name, (module, _, package, _) in ENGINES.items()
        if importlib.util.find_spec(module) is not None and importlib.util.find_spec(package) is not None
    }


def load_engine(plan: Plan) -> Engine:
    """Build the engine the plan names, with its model loaded."""
    if plan.engine not in ENGINES:
        raise ValueError(f"unknown engine {plan.engine!r}; known: {', '.join(ENGINES)}")
    module, cls, _, _ = ENGINES[plan.engine]
    return getattr(importlib.import_module(module), cls)(plan)


def provisioning_error(model: str, engine: str, cache_dir: str | None = None) -> str | None:
    """Provision `model` in the format `engine` loads (a no-op once cached); None on success, else why not."""
    from steadyscribe.models import ModelUnavailableError
    from steadyscribe.models.provision import provision

    try:
        provision(model, ENGINES[engine][3], cache_dir)
    except ModelUnavailableError as error:
        return str(error).partition(". ")[0]  # the what and why; the offline options follow
    return None
