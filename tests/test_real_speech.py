"""Real human speech (tests/fixtures/real) and generated non-speech, through every engine.

For each engine: decode, chunk on the VAD, transcribe with tiny.en, stabilize, as the flow does.
The stage must keep WER, never empty a file, put 80% of real words within 200 ms of their
aligned times, and leave generated noise, tones, clicks and music without words.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from helpers import REAL, fixture_script
from steadyscribe import SAMPLE_RATE
from steadyscribe.engines import available_engines, load_engine
from steadyscribe.metrics import boundary_errors, corpus_wer
from steadyscribe.records import DecodedAudio, InputFile, Plan, Transcript
from steadyscribe.tasks.chunk import plan_windows
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.inference import transcribe_files
from steadyscribe.tasks.stabilize import stabilize
from steadyscribe.vad import speech_probabilities

pytestmark = pytest.mark.slow

PLANS = {
    "whisper": Plan(engine="whisper", model="tiny.en", threads=2),
    "transformers": Plan(engine="transformers", model="tiny.en", threads=2, batch_size=8),
    "ctranslate2": Plan(engine="ctranslate2", model="tiny.en", threads=2, batch_size=8, quantization="dynamic-int8"),
}
NON_SPEECH_S = 8.0


def _non_speech() -> dict[str, np.ndarray]:
    """Seeded noise colours, steady tones, clicks and a melody: the fixture script's own generator."""
    return fixture_script("make_real_fixtures").non_speech(NON_SPEECH_S)


@pytest.fixture(scope="module", params=list(PLANS))
def engine_run(request, tmp_path_factory):
    """name -> (reference JSON or None, raw transcript, stabilized transcript) for one engine."""
    if request.param not in available_engines():
        pytest.skip(f"the {request.param} engine is not installed")
    work_dir = tmp_path_factory.mktemp(f"real-{request.param}")
    decoded, truth = {}, {}
    for flac in sorted(REAL.glob("*.flac")):
        item = decode_input(InputFile(str(flac)), work_dir)
        assert item.status == "ok", item.error
        decoded[flac.stem] = replace(item, file_id=flac.stem)
        truth[flac.stem] = json.loads(flac.with_suffix(".json").read_text())
    for name, audio in _non_speech().items():
        audio.tofile(work_dir / f"{name}.f32")
        pcm_path = str(work_dir / f"{name}.f32")
        decoded[name] = DecodedAudio(name, "ok", file_id=name, pcm_path=pcm_path, duration_s=len(audio) / SAMPLE_RATE)
    samples = {name: load_pcm(item.pcm_path) for name, item in decoded.items()}
    probabilities = {name: speech_probabilities(audio) for name, audio in samples.items()}
    windows = {name: plan_windows(samples[name], name, probabilities=probabilities[name]) for name in samples}
    engine = load_engine(PLANS[request.param])
    results = transcribe_files(engine, decoded, [w for ws in windows.values() for w in ws], work_dir)
    runs = {}
    for name, audio in samples.items():
        raw = Transcript.load(results[name].transcript_path)
        stable = stabilize(raw, audio, windows=windows[name], probabilities=probabilities[name])
        runs[name] = (truth.get(name), raw, stable)
    return runs


def _text(transcript: Transcript) -> str:
    return " ".join(w.word for w in transcript.words)


def test_the_stage_keeps_wer_on_real_speech(engine_run):
    real = [(ref, raw, stable) for ref, raw, stable in engine_run.values() if ref]
    wer_raw = corpus_wer((ref["text"], _text(raw)) for ref, raw, _ in real)
    wer_stable = corpus_wer((ref["text"], _text(stable)) for ref, _, stable in real)
    print(f"WER raw {wer_raw:.4f} stabilized {wer_stable:.4f}")
    assert wer_stable <= wer_raw + 0.005
    clean = [(ref, stable) for name, (ref, _, stable) in engine_run.items() if ref and "__" not in name]
    assert corpus_wer((ref["text"], _text(stable)) for ref, stable in clean) <= 0.2


def test_no_file_is_emptied_or_loses_more_than_a_tenth_of_its_words(engine_run):
    for name, (ref, raw, stable) in engine_run.items():
        if ref and raw.words:
            assert stable.words, name
            assert len(stable.words) >= 0.9 * len(raw.words), name
            assert stable.stabilization.words_dropped == len(raw.words) - len(stable.words)


def _within(runs: list[tuple[dict, Transcript]]) -> float:
    within = total = 0
    for ref, transcript in runs:
        stats = boundary_errors(ref["words"], transcript.words)
        within += round(stats.within_tolerance_rate * stats.reference_count)
        total += stats.reference_count
    return within / total


def test_word_times_land_on_real_speech(engine_run):
    timed = {name: run for name, run in engine_run.items() if run[0] and run[0].get("words")}
    clean = [name for name in timed if "__" not in name]
    noisy = [name for name in timed if "__" in name]
    raw_clean, stable_clean = (_within([(timed[n][0], timed[n][i]) for n in clean]) for i in (1, 2))
    raw_noisy, stable_noisy = (_within([(timed[n][0], timed[n][i]) for n in noisy]) for i in (1, 2))
    print(f"within 200 ms: clean {raw_clean:.3f} -> {stable_clean:.3f}, noisy {raw_noisy:.3f} -> {stable_noisy:.3f}")
    assert stable_clean >= 0.80
    assert stable_clean > raw_clean and stable_noisy >= raw_noisy


def test_generated_non_speech_yields_no_words(engine_run):
    for name, (ref, _, stable) in engine_run.items():
        if ref is None:
            assert stable.words == [], name
