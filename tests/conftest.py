"""Shared test set-up: isolated Prefect home, fixture paths, the real tiny.en weights."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: point it at a throwaway home before anything imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="steadyscribe-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One model cache per test session: conversions of the bundled tiny.en happen once, never in the user's cache.
os.environ["STEADYSCRIBE_MODEL_CACHE"] = tempfile.mkdtemp(prefix="steadyscribe-models-")

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_truth(name: str) -> dict:
    """The JSON truth (text, per-word start/end) of a committed fixture."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def prefect_server():
    """One local Prefect API (SQLite) for the whole test session: it takes ~15 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
