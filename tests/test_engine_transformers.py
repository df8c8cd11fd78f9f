"""transformers engine on the real tiny.en and the committed speech fixtures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

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
from steadyscribe.engines.transformers_engine import (  # noqa: E402
    TransformersEngine,
    is_out_of_memory,
    torch_dtype_for,
)
from steadyscribe.metrics import boundary_errors, normalize_text  # noqa: E402
from steadyscribe.records import Plan, Window  # noqa: E402

pytestmark = pytest.mark.slow

MAX_WER = 0.2
GiB = 1024**3


def plan(**fields) -> Plan:
    return Plan(engine="transformers", model="tiny.en", threads=2, **fields)


def words_of(results: list[WindowResult], name: str) -> list:
    ordered = sorted((r for r in results if r.window.file_id == name), key=lambda r: r.window.index)
    return [word for r in ordered for segment in r.segments for word in segment.words]


@pytest.fixture(scope="module")
def speech_windows(tmp_path_factory) -> list[WindowAudio]:
    """The pipeline's windows (tasks.chunk) of every speech fixture, then one whole no-speech window."""
    work_dir = tmp_path_factory.mktemp("pcm")
    silence = decode_fixture("no_speech", work_dir)
    no_speech = window_audio(Window("no_speech", 0, 0.0, silence.size / SAMPLE_RATE), silence)
    return speech_fixture_windows(work_dir) + [no_speech]


@pytest.fixture(scope="module")
def backed_off(speech_windows) -> tuple[TransformersEngine, list[int], list[WindowResult]]:
    """Eight windows at batch 8, where any batch above four runs out of memory (injected)."""
    attempted: list[int] = []

    def out_of_memory_above_four(batch: list[WindowAudio]) -> None:
        attempted.append(len(batch))
        if len(batch) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    assert len(speech_windows) == 8
    engine = TransformersEngine(plan(batch_size=8), batch_hook=out_of_memory_above_four)
    return engine, attempted, list(engine.transcribe(speech_windows))


def test_dtype_follows_device():
    assert torch_dtype_for(plan(dtype="float16")) == torch.float32
    assert torch_dtype_for(plan(device="cuda", dtype="float16")) == torch.float16
    assert torch_dtype_for(plan(device="cuda", dtype="auto")) == torch.float16
    assert torch_dtype_for(plan(device="cuda", dtype="bfloat16")) == torch.bfloat16


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_out_of_memory_halves_the_batch_and_decodes_every_window_once(backed_off, speech_windows):
    engine, attempted, results = backed_off
    assert attempted == [8, 4, 4]  # the failed batch of eight, then its windows in two halves
    assert engine.batch_size == 4
    assert Counter(r.window for r in results) == Counter(w.window for w in speech_windows)


def test_transcribes_like_openai_whisper_at_batch_one(backed_off, batch1_speech_wer):
    _, _, results = backed_off
    assert speech_wer(results) <= min(MAX_WER, batch1_speech_wer + WER_MARGIN)


def test_cross_file_batch_gives_the_same_text_as_batch_one(backed_off, speech_windows):
    _, _, results = backed_off
    first_batch = speech_windows[:4]
    assert len({w.window.file_id for w in first_batch}) == 3
    alone = {r.window: r for r in TransformersEngine(plan(batch_size=1)).transcribe(first_batch)}
    for batched in results[:4]:
        assert [s.text for s in batched.segments] == [s.text for s in alone[batched.window].segments]


def test_segments_carry_scores_and_word_times_inside_their_window(backed_off, speech_windows):
    _, _, results = backed_off
    audio_end = {w.window: w.window.start + len(w.samples) / SAMPLE_RATE for w in speech_windows}
    for result in results:
        assert result.language == "en"
        previous_end = result.window.start
        for segment in result.segments:
            assert segment.words and segment.text == segment.text.strip()
            assert segment.start == segment.words[0].start and segment.end == segment.words[-1].end
            assert segment.avg_logprob > -1.0 and 0.0 <= segment.no_speech_prob <= 1.0
            assert 0.0 < segment.compression_ratio < 2.4
            for word in segment.words:
                assert word.word == word.word.strip() and word.word
                assert previous_end - 1e-6 <= word.start <= word.end <= audio_end[result.window] + 1e-6
                assert 0.0 <= word.probability <= 1.0
                previous_end = word.end


def test_word_times_match_the_reference(backed_off):
    """openai-whisper's batch-1 engine gets 0.53 to 0.85 of each file's words within 0.3 s, 0.73 overall."""
    _, _, results = backed_off
    rates = {
        name: boundary_errors(fixture_truth(name)["words"], words_of(results, name), tolerance=0.3).within_tolerance_rate
        for name in SPEECH
    }
    assert min(rates.values()) >= 0.45 and np.mean(list(rates.values())) >= 0.65, rates


def test_no_speech_gives_no_words(backed_off):
    _, _, results = backed_off
    assert words_of(results, "no_speech") == []


def test_a_sentence_across_a_window_boundary_keeps_every_word_once(backed_off, speech_windows):
    """straddle_40s: a sentence runs across 30 s; the words either side of the cut appear once each."""
    _, _, results = backed_off
    boundaries = [w.window.end for w in speech_windows if w.window.file_id == "straddle_40s"][:-1]
    assert boundaries, "straddle_40s should need two windows"
    truth = fixture_truth("straddle_40s")["words"]
    heard = Counter(normalize_text(word.word) for word in words_of(results, "straddle_40s"))
    for boundary in boundaries:
        before = max((w for w in truth if w["end"] <= boundary), key=lambda w: w["end"])
        after = min((w for w in truth if w["start"] >= boundary), key=lambda w: w["start"])
        spoken = Counter(normalize_text(w["word"]) for w in truth)
        for word in (before, after):
            text = normalize_text(word["word"])
            assert heard[text] == spoken[text], (boundary, text, heard[text], spoken[text])


class _GrowingPeak:
    """A memory meter whose peak grows 600 MiB per window of the batch last started."""

    def __init__(self) -> None:
        self.windows = 0

    def start(self) -> int:
        return GiB

    def peak(self) -> int:
        return GiB + self.windows * 600 * 2**20


def test_memory_budget_halves_the_batch(speech_windows):
    meter = _GrowingPeak()
    engine = TransformersEngine(
        plan(batch_size=2, memory_budget_bytes=2 * GiB),
        batch_hook=lambda batch: setattr(meter, "windows", len(batch)),
        memory=meter,
    )
    # Three 2 s slices of one clip: cheap to decode.
    clip = next(w for w in speech_windows if w.window.file_id == "fast_speaker")
    windows = [
        WindowAudio(Window("clip", i, 2.0 * i, 2.0 * i + 2), clip.samples[i * 2 * SAMPLE_RATE : (i + 1) * 2 * SAMPLE_RATE])
        for i in range(3)
    ]
    results = list(engine.transcribe(windows))
    # After two windows peaking at 1 GiB + 2 x 600 MiB, another pair would pass 2 GiB.
    assert engine.batch_size == 1
    assert [r.window for r in results] == [w.window for w in windows]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_on_cuda(speech_windows):
    engine = TransformersEngine(plan(batch_size=8, device="cuda", dtype="float16"))
    assert engine.model.dtype == torch.float16
    results = list(engine.transcribe(speech_windows))
    assert Counter(r.window for r in results) == Counter(w.window for w in speech_windows)
    assert speech_wer(results) <= MAX_WER
