"""CTranslate2 engine on the real tiny.en and the committed speech fixtures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("av")  # fixtures decode as the pipeline does

from helpers import (  # noqa: E402
    SAMPLE_RATE,
    SPEECH,
    WER_MARGIN,
    decode_fixture,
    fixture_truth,
    speech_fixture_windows,
    speech_wer,
    window_audio,
)

from steadyscribe.engines.base import WindowAudio, WindowResult  # noqa: E402
from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine, compute_type_for  # noqa: E402
from steadyscribe.metrics import boundary_errors  # noqa: E402
from steadyscribe.records import Plan, Window  # noqa: E402

pytestmark = pytest.mark.slow

MAX_WER = 0.2  # a cap on top of the batch-1 bar, as for the transformers engine


def engine(**plan_fields) -> CTranslate2Engine:
    return CTranslate2Engine(Plan(engine="ctranslate2", model="tiny.en", **{"threads": 1, **plan_fields}))


@pytest.fixture(scope="module")
def speech_windows(tmp_path_factory) -> list[WindowAudio]:
    """The pipeline's windows (tasks.chunk) of every speech fixture."""
    return speech_fixture_windows(tmp_path_factory.mktemp("pcm"))


@pytest.fixture(scope="module")
def max_wer(batch1_speech_wer) -> float:
    """openai-whisper's WER at batch 1 on the same windows and weights, plus a margin."""
    return min(MAX_WER, batch1_speech_wer + WER_MARGIN)


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


def test_transcribes_the_speech_fixtures(float32_results, speech_windows, max_wer):
    assert [r.window for r in float32_results] == [w.window for w in speech_windows]
    assert speech_wer(float32_results) <= max_wer
    for result in float32_results:
        assert result.language == "en"
        for segment in result.segments:
            # Text without the tokenizer's leading space, as the other engines give it.
            assert segment.text and segment.text == segment.text.strip()
            assert all(word.word and word.word == word.word.strip() for word in segment.words)
            assert segment.avg_logprob is not None and segment.avg_logprob > -1.0
            assert 0.0 <= segment.no_speech_prob <= 1.0
            assert 0.0 < segment.compression_ratio < 2.4


def test_segments_are_the_sentences_of_each_window(float32_results):
    segments = [segment for result in float32_results for segment in result.segments]
    assert len(segments) > len(float32_results)  # windows of several sentences are split
    for segment in segments:
        assert segment.words and (segment.start, segment.end) == (segment.words[0].start, segment.words[-1].end)
        assert segment.text.count(". ") + segment.text.count("? ") + segment.text.count("! ") == 0


def test_decoding_with_timestamp_tokens_still_transcribes(speech_windows, max_wer):
    plan = Plan(engine="ctranslate2", model="tiny.en", threads=1, batch_size=4)
    results = list(CTranslate2Engine(plan, with_timestamps=True).transcribe(speech_windows))
    assert speech_wer(results) <= max_wer + 0.05  # it may lose a sentence at a window's end


# Real recordings (tests/fixtures/real, clean): Whisper without timestamp tokens drops repeated
# words and disfluencies ("words words words words", "nothing going else going on"). tiny.en greedy,
# batch 8: 14 word errors of 257 (5.4%) without timestamp tokens, 11 (4.3%) with them as shipped,
# the same as faster-whisper's `transcribe` at beam 1.
REAL_RECORDINGS = ["r01_jfk", "r04_mfa_acoustic", "r05_mfa_cold", "r09_librivox_austen", "r13_libri_61", "r15_ljspeech",
                   "r26_goforward"]


def test_real_recordings_keep_the_words_that_timestamp_decoding_keeps(tmp_path):
    import json

    from helpers import FIXTURES

    from steadyscribe.metrics import corpus_wer
    from steadyscribe.records import InputFile
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    windows = []
    for name in REAL_RECORDINGS:
        samples = load_pcm(decode_input(InputFile(str(FIXTURES / "real" / f"{name}.flac")), tmp_path).pcm_path)
        windows += [window_audio(w, samples) for w in plan_windows(samples, name)]
    texts: dict[str, list[str]] = {}
    for result in CTranslate2Engine(Plan(engine="ctranslate2", model="tiny.en", threads=2, batch_size=8)).transcribe(windows):
        texts.setdefault(result.window.file_id, []).extend(w.word for s in result.segments for w in s.words)
    references = {n: json.loads((FIXTURES / "real" / f"{n}.json").read_text())["text"] for n in REAL_RECORDINGS}
    assert corpus_wer((references[n], " ".join(texts.get(n, []))) for n in REAL_RECORDINGS) <= 0.05


class _EncodedLengths:
    """A CTranslate2 model that notes the frames of every encoder call."""

    def __init__(self, model) -> None:
        self._model, self.frames = model, []

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def encode(self, features, *args, **kwargs):
        self.frames.append(features.shape[-1])
        return self._model.encode(features, *args, **kwargs)


def test_the_rests_of_windows_are_padded_to_20_s_and_say_what_they_said_at_30_s(tmp_path):
    """Four minutes of real recordings end to end: the windows whose text ends early get rests,
    encoded at 20 s; the words come out as with every rest padded to Whisper's 30 s."""
    from helpers import long_real_speech

    from steadyscribe.engines.features import N_SAMPLES
    from steadyscribe.metrics import corpus_wer
    from steadyscribe.tasks.chunk import plan_windows

    samples, reference = long_real_speech(tmp_path)
    windows = [window_audio(w, samples) for w in plan_windows(samples, "long")]

    def transcribe(pad_rests: bool) -> tuple[float, list[int]]:
        ct2 = engine(batch_size=4)
        ct2.model = _EncodedLengths(ct2.model)
        if not pad_rests:
            ct2._padded_samples = lambda item, rest: N_SAMPLES
        said = " ".join(w.word for r in ct2.transcribe(windows) for s in r.segments for w in s.words)
        return corpus_wer([(reference, said)]), ct2.model.frames

    (padded_wer, padded_frames), (whole_wer, whole_frames) = transcribe(True), transcribe(False)
    assert len(padded_frames) > len(windows) and set(whole_frames) == {3000}  # there were rests
    assert padded_frames.count(2000) >= 1 and len(padded_frames) == len(whole_frames)
    # The engine alone (no speech-gap step, no stabilization): a rest that lost words would show here.
    assert padded_wer <= whole_wer + 0.005, (padded_wer, whole_wer)


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


def test_two_threads_run_two_replicas_that_give_the_words_of_one(float32_results, speech_windows):
    """On the CPU each replica is single-threaded and takes its share of every step, so two of
    them compute what one single-threaded model computes, side by side."""
    two = engine(batch_size=4, threads=2)
    assert two.replicas == 2 and two._shares([0, 1, 2]) == [[0, 1], [2]]
    results = list(two.transcribe(speech_windows))
    assert [r.window for r in results] == [r.window for r in float32_results]
    for shared, alone in zip(results, float32_results):
        words, expected = [w for s in shared.segments for w in s.words], [w for s in alone.segments for w in s.words]
        assert [w.word for w in words] == [w.word for w in expected]
        assert np.allclose([(w.start, w.end) for w in words], [(w.start, w.end) for w in expected], atol=0.02)


def test_a_partial_batch_reuses_the_batch_encoder_output(speech_windows):
    """Windows decoded again (at a higher temperature) take their rows of
    the batch's encoder output: the features their own encoding gives, without encoding again."""
    ct2 = engine(batch_size=4)
    mel = np.stack([ct2._log_mel(w.samples) for w in speech_windows[:3]])
    sub_batch = ct2._encode(mel).of([2, 0])
    alone = np.asarray(ct2.model.encode(ctranslate2.StorageView.from_array(mel[[2, 0]])))
    assert list(sub_batch.shape) == list(alone.shape)  # encoder states, not mel to encode again
    np.testing.assert_allclose(np.asarray(sub_batch), alone, atol=1e-3)


def test_no_speech_gives_no_words(tmp_path):
    silence = decode_fixture("no_speech", tmp_path)
    window = window_audio(Window("no_speech", 0, 0.0, silence.size / SAMPLE_RATE), silence)
    results = list(engine(batch_size=1).transcribe([window]))
    assert [w for r in results for s in r.segments for w in s.words] == []


def test_int8_transcribes_the_speech_fixtures(speech_windows, max_wer):
    int8_engine = engine(batch_size=8, quantization="int8")
    assert int8_engine.compute_type == "int8"
    assert speech_wer(list(int8_engine.transcribe(speech_windows))) <= max_wer


@pytest.mark.gpu
@pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="needs a CUDA device")
def test_float16_on_cuda(speech_windows, max_wer):
    cuda_engine = engine(batch_size=8, device="cuda", dtype="float16")
    assert cuda_engine.compute_type == "float16"
    assert speech_wer(list(cuda_engine.transcribe(speech_windows))) <= max_wer


_LARGE_BLOCK_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "engine":
    from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine
    from steadyscribe.records import Plan
    CTranslate2Engine(Plan(engine="ctranslate2", model="tiny.en", threads=1))
block = 52 * 2**20 // 8  # one tiny.en encoder layer's attention maps for one window, in float64 elements
np.ones(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_on_the_cpu_the_engine_reuses_large_blocks_instead_of_faulting_in_fresh_pages():
    """Every window's encoder allocates and frees blocks above glibc's 32 MiB mmap ceiling; the
    engine keeps them on the heap (steadyscribe.memory.reuse_large_buffers), so the next window
    reuses the pages instead of having the kernel zero new ones."""

    def page_faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _LARGE_BLOCK_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.split()[-1])

    assert page_faults("plain") > 1000  # each block mapped afresh: its pages faulted in again
    assert page_faults("engine") < 100
