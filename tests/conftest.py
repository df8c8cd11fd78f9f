"""Shared test set-up: isolated Prefect home, fixture paths, the real tiny.en weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers import FIXTURES, speech_fixture_windows, speech_wer

# Prefect reads its settings at import: point it at a throwaway home before anything imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="steadyscribe-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One model cache per test session: conversions of the bundled tiny.en happen once, never in the user's cache.
os.environ["STEADYSCRIBE_MODEL_CACHE"] = tempfile.mkdtemp(prefix="steadyscribe-models-")
# Runs through the CLI write their log files here, not under the user's ~/.local/state.
os.environ["STEADYSCRIBE_LOG_DIR"] = tempfile.mkdtemp(prefix="steadyscribe-logs-")

# The S3-compatible server on loopback (moto) and a real `prefect server start`: fixtures for every test module.
pytest_plugins = ["s3_server", "prefect_services"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def prefect_server():
    """One local Prefect API (SQLite) for the whole test session: it takes ~15 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def batch1_speech_wer(tmp_path_factory) -> float:
    """openai-whisper's corpus WER at batch 1 (tiny.en) on the pipeline's speech windows: the bar."""
    from steadyscribe.engines.whisper_batch1 import WhisperBatch1Engine
    from steadyscribe.records import Plan

    windows = speech_fixture_windows(tmp_path_factory.mktemp("batch1-pcm"))
    return speech_wer(list(WhisperBatch1Engine(Plan(engine="whisper", model="tiny.en", threads=2)).transcribe(windows)))
