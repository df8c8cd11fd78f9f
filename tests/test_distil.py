"""Distilled models: long-form settings, and the untrained tiny.en student through the batched engine."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from helpers import FIXTURES  # noqa: E402

from steadyscribe.engines.base import WindowAudio  # noqa: E402
from steadyscribe.models.distil import (  # noqa: E402
    _decoder_layer_mapping,
    _student_alignment_heads,
    build_student,
    is_distilled,
    recommended_window_s,
)
from steadyscribe.records import InputFile, Plan  # noqa: E402
from steadyscribe.tasks.chunk import plan_windows  # noqa: E402
from steadyscribe.pcm import load_pcm  # noqa: E402
from steadyscribe.tasks.decode import decode_input  # noqa: E402

SAMPLE_RATE = 16000


def test_model_cards_window_lengths():
    assert recommended_window_s("distil-whisper/distil-large-v2") == 15.0
    assert recommended_window_s("distil-small.en") == 15.0
    assert recommended_window_s("distil-large-v3") == 30.0  # trained for the sequential 30 s algorithm
    assert recommended_window_s("small.en") is None
    assert is_distilled("steadyscribe/distil-tiny.en-student") and not is_distilled("openai/whisper-tiny.en")


def test_student_decoder_starts_from_the_first_and_last_teacher_layers():
    assert _decoder_layer_mapping(4, 2) == [0, 3]
    assert _decoder_layer_mapping(32, 2) == [0, 31]
    assert _decoder_layer_mapping(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        _decoder_layer_mapping(4, 5)


def test_student_keeps_the_teacher_heads_of_its_layers_renumbered():
    teacher_heads = [[1, 0], [2, 0], [3, 1], [3, 4]]
    assert _student_alignment_heads(teacher_heads, [0, 3], 6) == [[1, 1], [1, 4]]
    assert _student_alignment_heads([[1, 0]], [0, 3], 6) == [[1, h] for h in range(6)]  # none kept: last layer


@pytest.mark.slow
def test_untrained_student_runs_through_the_batched_engine(tmp_path):
    from steadyscribe.engines.transformers_engine import TransformersEngine
    from steadyscribe.models.provision import provision

    spec = build_student("tiny.en")
    model_dir = provision(spec, "transformers")
    assert json.loads((model_dir / "config.json").read_text())["decoder_layers"] == 2
    assert json.loads((model_dir / "STUDENT.json").read_text())["trained"] is False
    assert build_student("tiny.en") == spec  # built once

    # One short window: an untrained decoder tends to run to the token limit at every fallback temperature.
    samples = load_pcm(decode_input(InputFile(str(FIXTURES / "fast_speaker.flac")), tmp_path).pcm_path)
    windows = [
        WindowAudio(w, samples[round(w.start * SAMPLE_RATE) : round(w.end * SAMPLE_RATE)])
        for w in plan_windows(samples, "fast_speaker", max_window_s=recommended_window_s(spec))
    ]
    engine = TransformersEngine(Plan(engine="transformers", model=spec, batch_size=1, threads=2))
    assert len(engine.model.model.decoder.layers) == 2
    results = list(engine.transcribe(windows))
    # Untrained: no accuracy to assert, only that the batched path yields timed words.
    words = [(r.window, word) for r in results for segment in r.segments for word in segment.words]
    assert len(results) == len(windows)
    for window, word in words:
        assert window.start - 0.01 <= word.start <= word.end <= window.end + 0.01
