"""Inference engines behind one small interface, chosen by the plan."""

from __future__ import annotations

import importlib
import importlib.util

from steadyscribe.engines.base import AligningEngine, Engine, WindowAudio, WindowResult
from steadyscribe.engines.registry import ENGINES, EngineSpec, engine_spec
from steadyscribe.records import Plan

__all__ = [
    "ENGINES", "AligningEngine", "Engine", "EngineSpec", "WindowAudio", "WindowResult",
    "available_engines", "engine_spec", "load_engine", "provisioning_error",
]


def available_engines() -> set[str]:
    """Engines whose module exists and whose runtime packages are installed."""
    return {
        name
        for name, spec in ENGINES.items()
        if importlib.util.find_spec(spec.module) is not None
        and all(importlib.util.find_spec(package) is not None for package in spec.packages)
    }


def load_engine(plan: Plan) -> Engine:
    """Build the engine the plan names, with its model loaded."""
    spec = engine_spec(plan.engine)
    return getattr(importlib.import_module(spec.module), spec.class_name)(plan)


def provisioning_error(model: str, engine: str, cache_dir: str | None = None) -> str | None:
    """Provision `model` in the format `engine` loads (a no-op once cached); None on success, else why not."""
    from steadyscribe.models import ModelUnavailableError
    from steadyscribe.models.provision import provision

    try:
        provision(model, engine_spec(engine).model_format, cache_dir)
    except ModelUnavailableError as error:
        return str(error).partition(". ")[0]  # the what and why; the offline options follow
    return None
