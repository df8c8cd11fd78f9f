"""The CTranslate2 path without torch, numba or openai-whisper: same numbers as openai-whisper's functions.

The engine computes log-mel features with numpy, tokenizes with the checkpoint's tokenizer.json and
merges punctuation itself. Each piece is compared here with the openai-whisper function it replaces
(imported in this test process only), and the whole engine with the previous implementation built
from those functions. A subprocess runs the real cpu-fast pipeline and reports what it imported.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
whisper_audio = pytest.importorskip("whisper.audio")
import whisper.timing  # noqa: E402
import whisper.tokenizer  # noqa: E402

from helpers import FIXTURES, decode_fixture, fixture_truth, speech_fixture_windows, transcript_text  # noqa: E402

from steadyscribe.engines import word_timing  # noqa: E402
from steadyscribe.engines.features import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, mel_filters, pad_or_trim  # noqa: E402
from steadyscribe.engines.tokenizer import whisper_tokenizer  # noqa: E402
from steadyscribe.engines.word_timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, WordTiming  # noqa: E402
from steadyscribe.metrics import boundary_errors, corpus_wer  # noqa: E402
from steadyscribe.models.bundled import installed_bundles, module_dir  # noqa: E402

REAL = sorted(f"real/{p.stem}" for p in (FIXTURES / "real").glob("*.flac"))
# Features: float64 FFT here, float32 in torch; the inputs are log10 values in about [-1.5, 1.5].
FEATURE_TOLERANCE = 1e-4
WORD_TIME_TOLERANCE_S = 0.02  # one DTW frame
INT8_WER_MARGIN = 0.01  # about 4 words of the ~430 in these recordings
INT8_TIMING_MARGIN = 0.02  # share of reference words within 200 ms
FORBIDDEN = ("torch", "numba", "whisper", "transformers", "bitsandbytes", "tiktoken")


def reference_texts() -> list[str]:
    """Every reference transcript of the committed fixtures, real and synthetic."""
    truths = [json.loads(path.read_text()) for path in sorted(FIXTURES.rglob("*.json"))]
    return [truth["text"] for truth in truths if isinstance(truth, dict) and truth.get("text")]


def tokenizer_dir(name: str) -> Path | None:
    """The directory holding tokenizer.json of an installed bundled checkpoint (no provisioning)."""
    bundles = installed_bundles(name)
    return module_dir(bundles[0].files[0]) / bundles[0].files[1] if bundles else None


# --- log-mel features ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_openai_whispers(n_mels):
    expected = whisper_audio.mel_filters("cpu", n_mels).numpy()
    np.testing.assert_allclose(mel_filters(n_mels), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", REAL)
def test_features_match_openai_whisper_on_real_speech(name, tmp_path):
    samples = np.asarray(decode_fixture(name, tmp_path), dtype=np.float32)
    # A full window, a short clip padded to 30 s (as the engine pads) and an unpadded short clip.
    for audio in (pad_or_trim(samples[:N_SAMPLES]), pad_or_trim(samples[: 3 * SAMPLE_RATE]), samples[: 7 * SAMPLE_RATE]):
        expected = whisper_audio.log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(audio))).numpy()
        ours = log_mel_spectrogram(audio)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() < FEATURE_TOLERANCE


@pytest.mark.parametrize("trailing_zeros", [0, 100, 200, 201, 5000, N_SAMPLES - 1, N_SAMPLES])
def test_frames_of_padding_are_skipped_without_changing_features(trailing_zeros):
    """Frames that only see the padding are not transformed: the result must not show it, whatever
    the length of the digital silence at the end (the reflect padding mirrors up to 200 samples)."""
    audio = np.random.default_rng(trailing_zeros).standard_normal(N_SAMPLES).astype(np.float32) * 0.1
    audio[N_SAMPLES - trailing_zeros :] = 0
    expected = whisper_audio.log_mel_spectrogram(torch.from_numpy(audio)).numpy()
    assert np.abs(log_mel_spectrogram(audio) - expected).max() < FEATURE_TOLERANCE


# --- tokenizer -----------------------------------------------------------------------------------

MODELS = [("tiny.en", False, ["en"]), ("base", True, ["en", "fr", "zh", "ja"])]


@pytest.mark.parametrize(("model", "multilingual", "languages"), MODELS)
def test_tokenizer_gives_openai_whispers_ids(model, multilingual, languages):
    directory = tokenizer_dir(model)
    if directory is None:
        pytest.skip(f"no bundled {model} installed (the bench extra ships base)")
    texts = reference_texts() + ["Héllo wörld, 你好世界。 こんにちは ½ ♪♪ “quoted” 'single' -- ẞ $5 1,234.56"]
    for language in languages:
        theirs = whisper.tokenizer.get_tokenizer(
            multilingual, language=language if multilingual else None, task="transcribe" if multilingual else None
        )
        ours = whisper_tokenizer(str(directory), multilingual, language, "transcribe")
        assert ours.sot_sequence == theirs.sot_sequence
        assert ours.sot_sequence_including_notimestamps == theirs.sot_sequence_including_notimestamps
        for token in ("eot", "sot_prev", "no_timestamps", "timestamp_begin"):
            assert getattr(ours, token) == getattr(theirs, token), token
        for text in texts:
            for variant in (text, " " + text):
                tokens = theirs.encode(variant)
                assert ours.encode(variant) == tokens
                assert ours.decode(tokens + [theirs.timestamp_begin + 5]) == theirs.decode(tokens + [theirs.timestamp_begin + 5])
                # As word_timings calls it: text tokens, then end-of-text.
                assert ours.split_to_word_tokens(tokens + [ours.eot]) == theirs.split_to_word_tokens(tokens + [theirs.eot])


def test_unknown_language_is_refused():
    directory = tokenizer_dir("base")
    if directory is None:
        pytest.skip("no bundled base installed (the bench extra ships it)")
    with pytest.raises(ValueError, match=re.escape("no <|xx|> token")):
        whisper_tokenizer(str(directory), True, "xx", "transcribe")


# --- punctuation merging -------------------------------------------------------------------------

PIECES = [" hello", "world", " a", ".", ",", " (", ")", " \"", "\"", "'", " '", " ¿", "?", "!", " ", "", " -", "”", "“", "。"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_merge_punctuations_is_openai_whispers(pieces):
    timings = [WordTiming(piece, [i], float(i), float(i) + 0.5, 0.9) for i, piece in enumerate(pieces)]
    expected = copy.deepcopy(timings)
    whisper.timing.merge_punctuations(expected, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    word_timing.merge_punctuations(timings)
    assert [(t.word, t.tokens, t.start, t.end) for t in timings] == [(t.word, t.tokens, t.start, t.end) for t in expected]


# --- the engine against the previous implementation -----------------------------------------------


def _previous_implementation(patch: pytest.MonkeyPatch) -> None:
    """The engine as it was: openai-whisper's features (torch), tokenizer (tiktoken) and punctuation merge."""
    from steadyscribe.engines import ctranslate2_engine

    patch.setattr(
        ctranslate2_engine,
        "log_mel_spectrogram",
        lambda audio, n_mels: whisper_audio.log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(audio)), n_mels).numpy(),
    )
    patch.setattr(
        ctranslate2_engine.CTranslate2Engine,
        "_tokenizer",
        lambda self, language: whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task=self.options.task
        ),
    )
    patch.setattr(
        word_timing,
        "merge_punctuations",
        lambda timings: whisper.timing.merge_punctuations(timings, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS),
    )


@pytest.fixture(scope="module")
def real_windows(tmp_path_factory) -> list:
    return speech_fixture_windows(tmp_path_factory.mktemp("real-pcm"), REAL)


def _transcribe(windows: list, quantization: str, previous: bool) -> list:
    pytest.importorskip("ctranslate2")
    from steadyscribe.engines.ctranslate2_engine import CTranslate2Engine
    from steadyscribe.records import Plan

    plan = Plan(engine="ctranslate2", model="tiny.en", threads=2, batch_size=4, quantization=quantization)
    with pytest.MonkeyPatch.context() as patch:
        if previous:
            _previous_implementation(patch)
        return list(CTranslate2Engine(plan).transcribe(windows))


def _words(result) -> list:
    return [word for segment in result.segments for word in segment.words]


@pytest.mark.slow
def test_engine_gives_the_previous_implementations_words_on_real_speech(real_windows):
    """fp32 compute: the same text, word for word, and the same times within one DTW frame."""
    ours, previous = _transcribe(real_windows, "none", False), _transcribe(real_windows, "none", True)
    assert sum(len(_words(r)) for r in ours) > 300  # the recordings' words, not an empty comparison
    for mine, theirs in zip(ours, previous, strict=True):
        assert [s.text for s in mine.segments] == [s.text for s in theirs.segments], mine.window.file_id
        assert [w.word for w in _words(mine)] == [w.word for w in _words(theirs)], mine.window.file_id
        for a, b in zip(_words(mine), _words(theirs)):
            assert abs(a.start - b.start) <= WORD_TIME_TOLERANCE_S + 1e-9, (mine.window.file_id, a, b)
            assert abs(a.end - b.end) <= WORD_TIME_TOLERANCE_S + 1e-9, (mine.window.file_id, a, b)


@pytest.mark.slow
def test_int8_engine_is_as_accurate_as_the_previous_implementation(real_windows):
    """int8 (cpu-fast's compute type) quantizes activations batch by batch, which turns feature
    differences of 1e-5 into another near-tie choice (a comma, a hyphen) in a few windows: measured,
    2 of these 9 windows, and 3 of 9 with 1e-5 of random noise added to the same features. So the
    bar is accuracy: WER against the references and word times against the forced alignments."""
    ours, previous = _transcribe(real_windows, "int8", False), _transcribe(real_windows, "int8", True)

    def wer(results) -> float:
        return corpus_wer((fixture_truth(name)["text"], transcript_text(results, name)) for name in REAL)

    def within_200ms(results) -> float:
        timed = [name for name in REAL if fixture_truth(name).get("words")]
        stats = [boundary_errors(fixture_truth(n)["words"], [w for r in results if r.window.file_id == n for w in _words(r)]) for n in timed]
        return sum(s.within_tolerance_rate * s.reference_count for s in stats) / sum(s.reference_count for s in stats)

    (wer_ours, wer_previous), (timing_ours, timing_previous) = map(wer, (ours, previous)), map(within_200ms, (ours, previous))
    print(f"int8 WER {wer_ours:.4f} (previous {wer_previous:.4f}); within 200 ms {timing_ours:.3f} (previous {timing_previous:.3f})")
    assert wer_ours <= wer_previous + INT8_WER_MARGIN
    assert timing_ours >= timing_previous - INT8_TIMING_MARGIN


# --- what a cpu-fast run imports -------------------------------------------------------------------

RUN_AND_REPORT_MODULES = """
import json, sys
from steadyscribe.app.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)}))
"""


@pytest.mark.slow
def test_a_cpu_fast_run_imports_no_torch_numba_or_whisper(tmp_path):
    """The real pipeline (probe, plan, decode, chunk, CTranslate2, stabilize, write) in a fresh process."""
    pytest.importorskip("ctranslate2")
    import pyarrow.dataset as ds

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    names = ["r01_jfk", "r13_libri_61", "r26_goforward"]
    for name in names:
        (inputs / f"{name}.flac").write_bytes((FIXTURES / "real" / f"{name}.flac").read_bytes())
    output = tmp_path / "out"
    script = f"FORBIDDEN = {FORBIDDEN!r}\n" + RUN_AND_REPORT_MODULES
    command = [sys.executable, "-c", script, "run", str(inputs), "--output", str(output), "--profile", "cpu-fast", "--model", "tiny.en"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["status"] == 0
    assert report["modules"] == []
    words = ds.dataset(output / "words", partitioning="hive").to_table().to_pylist()
    assert len({row["file_id"] for row in words}) == len(names) and len(words) > 20  # it transcribed
    assert "plan: ctranslate2 / tiny.en" in finished.stdout
