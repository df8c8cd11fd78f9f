"""Decoding options on every engine (issue 18): the same settings give the same words.

Real tiny.en weights on real speech (tests/fixtures/real) and the synthetic fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("av")  # fixtures decode as the pipeline does
pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")

from helpers import FIXTURES, window_audio  # noqa: E402

from steadyscribe.engines import load_engine  # noqa: E402
from steadyscribe.engines.decoding import (  # noqa: E402
    MAX_PROMPT_TOKENS,
    conditions_on_previous_text,
    prompt_tokens,
    resume_time,
    window_seed,
)
from steadyscribe.engines.whisper_batch1 import _carried_tokens  # noqa: E402
from steadyscribe.metrics import corpus_wer, word_error_rate  # noqa: E402
from steadyscribe.records import DecodingOptions, InputFile, Plan, Window  # noqa: E402
from steadyscribe.tasks.chunk import plan_windows  # noqa: E402
from steadyscribe.pcm import load_pcm  # noqa: E402
from steadyscribe.tasks.decode import decode_input  # noqa: E402

ENGINES = ["whisper", "ctranslate2", "transformers"]
REAL = ["r01_jfk", "r13_libri_61", "r15_ljspeech", "r26_goforward"]
SYNTHETIC = ["noisy", "fast_speaker"]
# Engines at the same settings: corpus WERs at most this far apart, and each engine's text this
# close to the others' (measured: see docs/benchmark.md, "Decoding options").
AGREEMENT_BAND = 0.04
MAX_WER = 0.15


def reference_text(name: str) -> str:
    path = FIXTURES / "real" / f"{name}.json" if name.startswith("r") else FIXTURES / f"{name}.json"
    return json.loads(path.read_text())["text"]


def audio_path(name: str) -> Path:
    return FIXTURES / "real" / f"{name}.flac" if name.startswith("r") else FIXTURES / f"{name}.flac"


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("pcm")
    names = [*REAL, *SYNTHETIC, "no_speech"]
    return {name: load_pcm(decode_input(InputFile(str(audio_path(name))), work).pcm_path) for name in names}


def windows_of(samples: dict, names: list[str]) -> list:
    return [window_audio(w, samples[name]) for name in names for w in plan_windows(samples[name], name)]


def transcribe(engine, windows) -> dict[str, str]:
    parts: dict[str, list] = {}
    for result in engine.transcribe(windows):
        parts.setdefault(result.window.file_id, []).append((result.window.index, [s.text for s in result.segments]))
    return {name: " ".join(t for _, texts in sorted(p) for t in texts) for name, p in parts.items()}


def plan(engine: str, batch_size: int = 4, quantization: str = "none", **options) -> Plan:
    return Plan(
        engine=engine, model="tiny.en", threads=2, language="en", quantization=quantization,
        batch_size=1 if engine == "whisper" else batch_size, decoding=DecodingOptions(language="en", **options),
    )


# ---------------------------------------------------------------- options, prompts, seeds (no model)


def test_prompt_keeps_the_vocabulary_and_the_end_of_the_previous_text():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731 - one token per character
    options = DecodingOptions(initial_prompt="Board meeting.", hotwords=("Kubernetes", "Nvidia"))
    assert prompt_tokens(encode, options) == encode(" Board meeting. Kubernetes, Nvidia")
    previous = list(range(1000))
    prompt = prompt_tokens(encode, options, previous)
    assert len(prompt) == MAX_PROMPT_TOKENS and prompt[-1] == 999  # the fixed part first, then the latest text
    assert prompt_tokens(encode, DecodingOptions()) == []


def test_previous_text_is_on_by_default_only_for_the_batch_one_engine():
    assert conditions_on_previous_text("whisper", DecodingOptions())
    assert not conditions_on_previous_text("ctranslate2", DecodingOptions())
    assert not conditions_on_previous_text("whisper", DecodingOptions(condition_on_previous_text=False))


def test_a_suspect_window_is_not_carried_into_the_next_prompt():
    good = {"temperature": 0.0, "compression_ratio": 1.2, "avg_logprob": -0.3, "no_speech_prob": 0.1,
            "text": " Yes.", "tokens": [5, 6, 99]}
    assert _carried_tokens([1], [good], eot=50) == [1, 5, 6]
    for bad in ({"temperature": 0.8}, {"compression_ratio": 3.0}, {"avg_logprob": -1.5}, {"no_speech_prob": 0.9}):
        assert _carried_tokens([1], [good, {**good, **bad}], eot=50) == []
    # An empty segment over what the model calls silence is no hallucination: the text goes on.
    silence = {**good, "no_speech_prob": 0.9, "avg_logprob": -1.5, "text": "", "tokens": []}
    assert _carried_tokens([1], [good, silence], eot=50) == [1, 5, 6]


def test_seeds_depend_on_file_and_window_only():
    a, b = Window("file-a", 0, 0.0, 30.0), Window("file-a", 1, 30.0, 60.0)
    assert window_seed(a) == window_seed(Window("file-a", 0, 5.0, 9.0))
    assert len({window_seed(a), window_seed(b), window_seed(Window("file-b", 0, 0.0, 30.0))}) == 3


def test_a_decoding_that_stops_in_an_empty_segment_before_the_window_end_resumes_where_its_text_ended():
    begin = 50364  # <|0.00|>; each timestamp token is 20 ms
    at = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    text = [400, 401]
    # `<|a|> text <|b|><|c|>`: a segment opens at 20 s and says nothing; the text ended at 19 s.
    assert resume_time([at(0), *text, at(19.0), at(20.0)], begin, window_s=30.0) == pytest.approx(19.0)
    assert resume_time([at(0), *text, at(20.0), at(20.0)], begin, window_s=30.0) == pytest.approx(20.0)
    assert resume_time([at(7.0)], begin, window_s=30.0) == pytest.approx(7.0)
    # The last segment closes (single timestamp ending), or the empty one opens at the window's end.
    assert resume_time([at(0), *text, at(20.0)], begin, window_s=30.0) is None
    assert resume_time([at(0), *text, at(29.0), at(29.5)], begin, window_s=30.0) is None
    # Text runs to the end without a timestamp, or there are no timestamps at all.
    assert resume_time([at(0), *text], begin, window_s=30.0) is None
    assert resume_time(text, begin, window_s=30.0) is None
    assert resume_time([], begin, window_s=30.0) is None


def test_the_rest_of_a_window_cut_short_is_decoded_as_a_window_of_its_own():
    import numpy as np

    from steadyscribe.engines.base import WindowAudio
    from steadyscribe.engines.ctranslate2_engine import REST_LEAD_S, _rest

    begin = 50364
    at = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    item = WindowAudio(Window("f", 3, 60.0, 90.0), np.zeros(30 * 16000, dtype=np.float32))
    rest = _rest(item, [at(0), 400, at(19.0), at(20.0)], begin)
    # The same file and index (its seed), from a little before where the text ended to the window's end.
    assert rest.window == Window("f", 3, 79.0 - REST_LEAD_S, 90.0)
    assert len(rest.samples) == round((11.0 + REST_LEAD_S) * 16000)
    assert _rest(item, [at(0), 400, at(20.0)], begin) is None  # the text went to the end
    assert _rest(item, [at(0.5)], begin) is None  # left off at its start: the same audio again says nothing new


# ---------------------------------------------------------------- every engine, real weights




@pytest.fixture(scope="module")
def greedy_texts(samples) -> dict[str, dict[str, str]]:
    windows = windows_of(samples, [*REAL, *SYNTHETIC])
    return {name: transcribe(load_engine(plan(name)), windows) for name in ENGINES}


@pytest.mark.slow
def test_engines_agree_within_a_small_wer_band(greedy_texts):
    names = [*REAL, *SYNTHETIC]
    wers = {
        engine: corpus_wer((reference_text(n), texts.get(n, "")) for n in names) for engine, texts in greedy_texts.items()
    }
    assert max(wers.values()) <= MAX_WER, wers
    assert max(wers.values()) - min(wers.values()) <= AGREEMENT_BAND, wers
    for engine in ENGINES[1:]:  # each batched engine's text against batch 1's, file by file pooled
        between = corpus_wer((greedy_texts["whisper"][n], greedy_texts[engine].get(n, "")) for n in names)
        assert between <= 2 * AGREEMENT_BAND, (engine, between)


class _Recorder:
    """Stands in for an engine's backend model and records the keyword arguments of one method."""

    def __init__(self, target, method: str):
        self._target, self._method, self.calls = target, method, []

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        if name != self._method:
            return attribute

        def record(*args, **kwargs):
            self.calls.append(kwargs)
            return attribute(*args, **kwargs)

        return record


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ENGINES)
def test_beam_search_reaches_each_engine_and_transcribes(engine_name, samples):
    names = ["r01_jfk", "noisy"]
    windows = windows_of(samples, names)
    greedy = transcribe(load_engine(plan(engine_name)), windows)
    engine = load_engine(plan(engine_name, beam_size=5, patience=1.5 if engine_name != "transformers" else None))
    recorder = engine.model = _Recorder(engine.model, "transcribe" if engine_name == "whisper" else "generate")
    texts = transcribe(engine, windows)
    beam_key = {"whisper": "beam_size", "ctranslate2": "beam_size", "transformers": "num_beams"}[engine_name]
    assert recorder.calls and recorder.calls[0][beam_key] == 5
    if engine_name != "transformers":
        assert recorder.calls[0]["patience"] == 1.5
    beam_wer = corpus_wer((reference_text(n), texts[n]) for n in names)
    greedy_wer = corpus_wer((reference_text(n), greedy[n]) for n in names)
    assert beam_wer <= greedy_wer + AGREEMENT_BAND, (beam_wer, greedy_wer)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine_name", "quantization"), [("ctranslate2", "none"), ("ctranslate2", "int8"), ("transformers", "none")]
)
def test_a_file_gives_the_same_words_alone_and_in_a_mixed_batch(engine_name, quantization, samples):
    """Packing off: no_speech (which falls back to sampling) and a real file, alone and among others."""
    engine = load_engine(plan(engine_name, batch_size=4, quantization=quantization))
    mixed = transcribe(engine, windows_of(samples, ["fast_speaker", "no_speech", "r13_libri_61", "r15_ljspeech", "noisy"]))
    for name in ("no_speech", "r15_ljspeech"):
        alone = transcribe(load_engine(plan(engine_name, batch_size=4, quantization=quantization)), windows_of(samples, [name]))
        assert alone.get(name, "") == mixed.get(name, ""), name


@pytest.mark.slow
def test_batch_one_prompts_a_window_with_the_previous_windows_text(tmp_path):
    samples = load_pcm(decode_input(InputFile(str(FIXTURES / "straddle_40s.flac")), tmp_path).pcm_path)
    windows = [window_audio(w, samples) for w in plan_windows(samples, "straddle_40s")]
    assert len(windows) == 2
    engine = load_engine(plan("whisper", initial_prompt="Station announcements."))
    recorder = engine.model = _Recorder(engine.model, "transcribe")
    results = list(engine.transcribe(windows))
    prompts = [call["initial_prompt"] for call in recorder.calls]
    first_text = " ".join(s.text for s in results[0].segments)
    assert prompts[0].strip() == "Station announcements."
    assert prompts[1].startswith(prompts[0]) and word_error_rate(first_text, prompts[1][len(prompts[0]) :]) < 0.1
    list(engine.transcribe(windows))  # the same file again (a rerun in a served process): no earlier text carried
    assert [call["initial_prompt"] for call in recorder.calls[2:]] == prompts


def test_a_multilingual_file_keeps_the_language_of_its_first_window():
    """CTranslate2: detection runs on a batch with a new file; each file keeps its first window's language."""
    from types import SimpleNamespace

    from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine

    detections = iter([["de", "fr", "it"], ["es", "en"]])  # per window of each batch, most probable first
    engine = object.__new__(CTranslate2Engine)
    engine.plan = Plan(engine="ctranslate2", model="base", language=None)
    engine.file_languages = {}
    engine.model = SimpleNamespace(
        is_multilingual=True, detect_language=lambda _: [[(f"<|{code}|>", 0.9)] for code in next(detections)]
    )
    item = lambda file_id, index: SimpleNamespace(window=Window(file_id, index, 0.0, 1.0))  # noqa: E731
    encoded = SimpleNamespace(whole=None)  # the encoder output: the stub model never reads it
    assert engine._languages(encoded, [item("a", 0), item("a", 1), item("b", 0)]) == ["de", "de", "it"]
    assert engine._languages(encoded, [item("b", 1), item("c", 0)]) == ["it", "en"]
    assert engine._languages(encoded, [item("a", 2)]) == ["de"]  # no new file: no detection
