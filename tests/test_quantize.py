"""Quantized loading (steadyscribe.models.quantize) and transcription through the transformers engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from helpers import speech_fixture_windows, speech_wer  # noqa: E402

from steadyscribe.engines.base import WindowAudio, WindowResult  # noqa: E402
from steadyscribe.models import quantize_bnb, quantize_dynamic  # noqa: E402
from steadyscribe.models.cache import quantized_model_dir  # noqa: E402
from steadyscribe.models.quantize import (  # noqa: E402
    QuantizationUnavailableError,
    load_quantized_transformers,
    quantization_support,
    weight_bytes,
)
from steadyscribe.models.quantize_dynamic import Int8TiedVocabulary  # noqa: E402
from steadyscribe.models.safetensors_io import SafetensorsReader, write_safetensors  # noqa: E402
from steadyscribe.records import Plan  # noqa: E402

INT8_WER_MARGIN = 0.02  # int8 against fp32 on the same weights
NF4_WER_MARGIN = 0.05  # 4-bit weights lose more


def test_unquantized_and_dynamic_int8_work_on_the_cpu():
    assert quantization_support("none", "cpu") is None
    assert quantization_support("dynamic-int8", "cpu") is None


def test_dynamic_int8_is_refused_on_cuda_with_the_reason():
    assert "CPU only" in quantization_support("dynamic-int8", "cuda")


def test_unknown_mode_is_refused():
    assert "unknown quantization 'int4'" in quantization_support("int4", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bitsandbytes_on_cuda_without_a_gpu_says_why(tmp_path):
    assert quantization_support("int8", "cuda") is not None
    with pytest.raises(QuantizationUnavailableError, match="with int8 quantization on cuda"):
        load_quantized_transformers(tmp_path, "int8", "cuda", torch.float16)


def test_cache_key_separates_sources_and_compute_dtypes(tmp_path):
    first, second = tmp_path / "a" / "tiny.en", tmp_path / "b" / "tiny.en"
    assert quantized_model_dir(first, "int8", torch.float32, tmp_path) != quantized_model_dir(
        second, "int8", torch.float32, tmp_path
    )
    assert quantized_model_dir(first, "nf4", torch.float16, tmp_path).name.endswith("-float16")
    assert quantized_model_dir(first, "nf4", torch.float16, tmp_path).parent == tmp_path / "transformers-nf4"


def test_int8_tied_vocabulary_is_close_to_the_fp32_matrix():
    weight = torch.randn(300, 64)
    vocabulary = Int8TiedVocabulary(weight)
    embedding = quantize_dynamic.Int8Embedding(vocabulary)
    projection = quantize_dynamic.Int8OutputProjection(vocabulary)
    ids = torch.tensor([[0, 5, 299]])
    torch.testing.assert_close(embedding(ids), weight[ids], atol=0.02, rtol=0.02)
    hidden = torch.randn(2, 3, 64)
    logits = projection(hidden)
    assert logits.shape == (2, 3, 300)
    assert (logits - hidden @ weight.T).abs().max() < 0.02 * (hidden @ weight.T).abs().max()


def test_safetensors_written_piecewise_read_back_whole_and_by_rows(tmp_path):
    from safetensors import safe_open

    tensors = {
        "a": torch.randn(7, 5),
        "b": torch.arange(12, dtype=torch.int8).reshape(3, 4),
        "c": torch.randn(6, dtype=torch.float64),
        "d": torch.randn(4, 3).to(torch.bfloat16),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {k: (lambda t=t: t) for k, t in tensors.items()}, {"format": "test"})
    reader = SafetensorsReader([path])
    assert reader.metadata == {"format": "test"} and reader.keys() == set(tensors)
    with safe_open(str(path), framework="pt") as file:  # a valid safetensors file
        for name, tensor in tensors.items():
            assert torch.equal(reader.get(name), tensor) and torch.equal(file.get_tensor(name), tensor)
    assert torch.equal(reader.rows("a", 2, 3), tensors["a"][2:5])
    assert torch.equal(reader.rows("a", 5, 4096), tensors["a"][5:])


# --- the real tiny.en through the engine ---------------------------------------------------------


def _engine(quantization: str):
    from steadyscribe.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        Plan(engine="transformers", model="tiny.en", quantization=quantization, batch_size=8, threads=2)
    )


@pytest.fixture(scope="module")
def speech_windows(tmp_path_factory) -> list[WindowAudio]:
    return speech_fixture_windows(tmp_path_factory.mktemp("pcm"))


@pytest.fixture(scope="module")
def fp32_wer(speech_windows) -> float:
    return speech_wer(list(_engine("none").transcribe(speech_windows)))


def _assert_words_with_times(results: list[WindowResult]) -> None:
    words = [(r.window, word) for r in results for segment in r.segments for word in segment.words]
    assert len(words) > 100
    for window, word in words:
        assert window.start - 0.01 <= word.start <= word.end <= window.end + 0.01
        assert 0.0 <= word.probability <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "margin"), [("dynamic-int8", INT8_WER_MARGIN), ("int8", INT8_WER_MARGIN), ("nf4", NF4_WER_MARGIN)]
)
def test_quantized_tiny_en_transcribes_with_word_times_close_to_fp32(mode, margin, speech_windows, fp32_wer):
    reason = quantization_support(mode, "cpu")
    if reason is not None:
        pytest.skip(reason)
    results = list(_engine(mode).transcribe(speech_windows))
    _assert_words_with_times(results)
    assert speech_wer(results) <= fp32_wer + margin


def _dynamic_int8_state(model) -> dict[str, torch.Tensor | None]:
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            state[f"{name}.int8"] = weight.int_repr()
            state[f"{name}.scales"] = weight.q_per_channel_scales()
            state[f"{name}.zero_points"] = weight.q_per_channel_zero_points()
            state[f"{name}.bias"] = bias
    state.update({name: t for name, t in [*model.named_parameters(), *model.named_buffers()]})
    return state


def _assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert (tensor is None and actual[name] is None) or torch.equal(tensor, actual[name]), name


@pytest.mark.slow
def test_dynamic_int8_is_built_without_fp32_weights_cached_and_transcribes_as_quantize_dynamic(
    monkeypatch, tmp_path, speech_windows
):
    from transformers import WhisperForConditionalGeneration

    from steadyscribe.models.provision import provision

    model_dir = provision("tiny.en", "transformers")
    # The reference: the whole fp32 model, quantized in place by torch's quantize_dynamic.
    reference = quantize_dynamic._dynamic_int8_from_fp32_model(model_dir)

    def no_fp32_model(*args, **kwargs):
        raise AssertionError("built the fp32 model")

    with monkeypatch.context() as patch:
        patch.setattr(WhisperForConditionalGeneration, "from_pretrained", no_fp32_model)
        fresh = quantize_dynamic.load_dynamic_int8(model_dir, cache_dir=tmp_path)  # layer by layer from the source
        cached = quantized_model_dir(model_dir, "dynamic-int8", torch.float32, tmp_path)
        assert (cached / quantize_dynamic.DYNAMIC_INT8_FILE).is_file() and (cached / "generation_config.json").is_file()
        assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no staging left behind
        patch.setattr(quantize_dynamic, "_dynamic_int8_from_source", no_fp32_model)
        loaded = load_quantized_transformers(model_dir, "dynamic-int8", "cpu", torch.float32, cache_dir=tmp_path)

    for model in (fresh, loaded):
        _assert_same_tensors(_dynamic_int8_state(reference), _dynamic_int8_state(model))
        assert weight_bytes(model) == weight_bytes(reference)
        assert model.proj_out.vocabulary is model.model.decoder.embed_tokens.vocabulary
        assert model.config._attn_implementation == "sdpa" and not model.training
        assert model.generation_config.alignment_heads == reference.generation_config.alignment_heads

    engine = _engine("dynamic-int8")
    windows = [w for w in speech_windows if w.window.file_id in ("clean_gb", "noisy")]

    def transcript(model) -> list:
        engine.model, engine.batch_size = model, 8
        return [(r.window, r.segments) for r in engine.transcribe(windows)]

    expected = transcript(reference)
    assert sum(len(segments) for _, segments in expected) > 0
    assert transcript(loaded) == expected


@pytest.mark.slow
def test_bitsandbytes_model_is_quantized_once_and_loaded_from_the_cache(monkeypatch, tmp_path):
    reason = quantization_support("int8", "cpu")
    if reason is not None:
        pytest.skip(reason)
    from steadyscribe.models.provision import provision

    model_dir = provision("tiny.en", "transformers")
    load_quantized_transformers(model_dir, "int8", "cpu", torch.float32, cache_dir=tmp_path)
    cached = quantized_model_dir(model_dir, "int8", torch.float32, tmp_path)
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no staging left behind

    def quantize_again(*args):
        raise AssertionError("quantized again despite the cache")

    monkeypatch.setattr(quantize_bnb, "save_bitsandbytes_model", quantize_again)
    model = load_quantized_transformers(model_dir, "int8", "cpu", torch.float32, cache_dir=tmp_path)
    assert model.model.encoder.layers[0].fc1.weight.dtype == torch.int8


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bitsandbytes_on_cuda_transcribes(mode, speech_windows):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = quantization_support(mode, "cuda")
    if reason is not None:
        pytest.skip(reason)
    from steadyscribe.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(
        Plan(engine="transformers", model="tiny.en", device="cuda", dtype="float16", quantization=mode, batch_size=8)
    )
    results = list(engine.transcribe(speech_windows))
    _assert_words_with_times(results)
    assert np.isfinite(speech_wer(results))
