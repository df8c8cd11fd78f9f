"""CTranslate2 engine on the real tiny.en and the committed speech fixtures."""

from __future__ import annotations

import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")
av = pytest.importorskip("av")

from conftest import FIXTURES, fixture_truth  # noqa: E402

from steadyscribe.engines.base import WindowAudio, WindowResult  # noqa: E402
from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine, compute_type_for  # noqa: E402
from steadyscribe.metrics import boundary_errors, corpus_wer  # noqa: E402
from steadyscribe.records import Plan, Window  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE_RATE = 16000
# straddle_40s first: its two windows and two other files make the first batch of four.
SPEECH = ["straddle_40s", "clean_gb", "clean_us_slow", "fast_speaker", "long_pauses", "noisy"]
MAX_WER = 0.15


def decode_flac(name: str) -> np.ndarray:
    """A fixture as 16 kHz mono float32 samples."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(FIXTURES / f"{name}.flac")) as container:
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    frames += resampler.resample(None)
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32)


def windows_of(name: str) -> list[WindowAudio]:
    """Windows of at most 30 s; a longer file is cut in the widest pause between its words."""
    samples = decode_flac(name)
    duration = len(samples) / SAMPLE_RATE
    cuts = [0.0, duration]
    if duration > 30:
        words = fixture_truth(name)["words"]
        gaps = [(b["start"] - a["end"], (a["end"] + b["start"]) / 2) for a, b in zip(words, words[1:])]
        cuts.insert(1, max(gap for gap in gaps if gap[1] < 30)[1])
    return [
        WindowAudio(
            Window(name, index, start, end),
            samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)],
        )
        for index, (start, end) in enumerate(zip(cuts, cuts[1:]))
    ]


def engine(**plan_fields) -> CTranslate2Engine:
    return CTranslate2Engine(Plan(engine="ctranslate2", model="tiny.en", threads=1, **plan_fields))


def transcript_text(results: list[WindowResult], name: str) -> str:
    ordered = sorted((r for r in results if r.window.file_id == name), key=lambda r: r.window.index)
    return " ".join(s.text.strip() for r in ordered for s in r.segments)


def speech_wer(results: list[WindowResult]) -> float:
    return corpus_wer((fixture_truth(name)["text"], transcript_text(results, name)) for name in SPEECH)


@pytest.fixture(scope="module")
def speech_windows() -> list[WindowAudio]:
    return [window for name in SPEECH for window in windows_of(name)]


@pytest.fixture(scope="module")
def float32_results(speech_windows) -> list[WindowResult]:
    return list(engine(batch_size=4).transcribe(speech_windows))


def test_compute_types_follow_device_and_quantization():
    assert compute_type_for(Plan("ctranslate2", "tiny.en")) == "float32"
    assert compute_type_for(Plan("ctranslate2", "tiny.en", quantization="int8")) == "int8"
    assert compute_type_for(Plan("ctranslate2", "tiny.en", device="cuda", dtype="float16")) == "float16"
    cuda_int8 = Plan("ctranslate2", "tiny.en", device="cuda", dtype="float16", quantization="int8")
    assert compute_type_for(cuda_int8) == "int8_float16"
    with pytest.raises(ValueError, match="nf4"):
        compute_type_for(Plan("ctranslate2", "tiny.en", quantization="nf4"))


def test_transcribes_the_speech_fixtures(float32_results, speech_windows):
    assert [r.window for r in float32_results] == [w.window for w in speech_windows]
    assert speech_wer(float32_results) <= MAX_WER
    for result in float32_results:
        assert result.language == "en"
        for segment in result.segments:
            assert segment.avg_logprob is not None and segment.avg_logprob > -1.0
            assert 0.0 <= segment.no_speech_prob <= 1.0
            assert 0.0 < segment.compression_ratio < 2.4


def test_word_times_are_monotonic_and_inside_the_window(float32_results, speech_windows):
    audio_end = {w.window: w.window.start + len(w.samples) / SAMPLE_RATE for w in speech_windows}
    for result in float32_results:
        words = [word for segment in result.segments for word in segment.words]
        assert words, result.window
        previous_end = result.window.start
        for word in words:
            assert previous_end - 1e-6 <= word.start <= word.end <= audio_end[result.window] + 1e-6
            assert 0.0 <= word.probability <= 1.0
            previous_end = word.end
        for segment in result.segments:
            assert segment.start == segment.words[0].start and segment.end == segment.words[-1].end


def test_word_times_match_the_reference(float32_results):
    errors = np.concatenate(
        [
            boundary_errors(
                fixture_truth(name)["words"],
                [w for r in float32_results if r.window.file_id == name for s in r.segments for w in s.words],
            ).errors
            for name in SPEECH
        ]
    )
    # Over words whose text matched: DTW word times are good to a few frames, ends a little late.
    assert np.mean(np.all(np.abs(errors) <= 0.3, axis=1)) >= 0.75
    assert np.mean(np.abs(errors)) <= 0.2


def test_cross_file_batch_gives_the_same_text_as_batch_one(float32_results, speech_windows):
    first_batch = speech_windows[:4]
    assert len({w.window.file_id for w in first_batch}) == 3
    alone = {r.window: r for r in engine(batch_size=1).transcribe(first_batch)}
    for batched in float32_results[:4]:
        assert [s.text for s in batched.segments] == [s.text for s in alone[batched.window].segments]


def test_no_speech_gives_no_words():
    results = list(engine(batch_size=1).transcribe(windows_of("no_speech")))
    assert [w for r in results for s in r.segments for w in s.words] == []


def test_int8_transcribes_the_speech_fixtures(speech_windows):
    int8_engine = engine(batch_size=8, quantization="int8")
    assert int8_engine.compute_type == "int8"
    assert speech_wer(list(int8_engine.transcribe(speech_windows))) <= MAX_WER


@pytest.mark.gpu
@pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="needs a CUDA device")
def test_float16_on_cuda(speech_windows):
    cuda_engine = engine(batch_size=8, device="cuda", dtype="float16")
    assert cuda_engine.compute_type == "float16"
    assert speech_wer(list(cuda_engine.transcribe(speech_windows))) <= MAX_WER
