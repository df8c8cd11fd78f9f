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
# Runs through the CLI write their log files here, not under the user's ~/.local/state.
os.environ["STEADYSCRIBE_LOG_DIR"] = tempfile.mkdtemp(prefix="steadyscribe-logs-")

# The S3-compatible server on loopback (moto) and a real `prefect server start`: fixtures for every test module.
pytest_plugins = ["s3_server", "prefect_services"]

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


# --- the speech fixtures as the pipeline windows them: shared by the engine tests -----------------

SAMPLE_RATE = 16000
# straddle_40s first: its two windows and two other files make the first batch of four.
SPEECH = ["straddle_40s", "clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy"]
# How far a batched engine's corpus WER may trail openai-whisper's at batch 1 with the same weights.
WER_MARGIN = 0.02


def decode_fixture(name: str, work_dir: Path):
    """A fixture decoded as the pipeline decodes it (tasks.decode): 16 kHz mono float32 samples."""
    from steadyscribe.records import InputFile
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    return load_pcm(decode_input(InputFile(str(FIXTURES / f"{name}.flac")), work_dir).pcm_path)


def window_audio(window, samples):
    """The WindowAudio of `window` cut from its file's samples."""
    from steadyscribe.engines.base import WindowAudio

    return WindowAudio(window, samples[round(window.start * SAMPLE_RATE) : round(window.end * SAMPLE_RATE)])


def speech_fixture_windows(work_dir: Path, names: list[str] = SPEECH) -> list:
    """The pipeline's windows (tasks.chunk) of each named fixture, in order."""
    from steadyscribe.tasks.chunk import plan_windows

    windows = []
    for name in names:
        samples = decode_fixture(name, work_dir)
        windows += [window_audio(window, samples) for window in plan_windows(samples, name)]
    return windows


def transcript_text(results: list, name: str) -> str:
    """A file's segment texts, in window order."""
    ordered = sorted((r for r in results if r.window.file_id == name), key=lambda r: r.window.index)
    return " ".join(segment.text for r in ordered for segment in r.segments)


def speech_wer(results: list, names: list[str] = SPEECH) -> float:
    """Corpus WER of the results against the fixtures' truth."""
    from steadyscribe.metrics import corpus_wer

    return corpus_wer((fixture_truth(name)["text"], transcript_text(results, name)) for name in names)


@pytest.fixture(scope="session")
def batch1_speech_wer(tmp_path_factory) -> float:
    """openai-whisper's corpus WER at batch 1 (tiny.en) on the pipeline's speech windows: the bar."""
    from steadyscribe.engines.whisper_batch1 import WhisperBatch1Engine
    from steadyscribe.records import Plan

    windows = speech_fixture_windows(tmp_path_factory.mktemp("batch1-pcm"))
    return speech_wer(list(WhisperBatch1Engine(Plan(engine="whisper", model="tiny.en", threads=2)).transcribe(windows)))
