"""Convert a CTranslate2 Whisper directory into the formats the other engines load.

- openai-whisper: one torch.save'd dict {"dims", "model_state_dict", "alignment_heads"}.
- transformers: a directory that WhisperForConditionalGeneration / WhisperProcessor load offline.

CTranslate2 fuses projections: self-attention `linear_0` stacks query, key and value rows,
cross-attention `linear_1` stacks key and value. Whisper's key projections have no bias (CT2
stores zeros there), so those bias rows are dropped.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from steadyscribe.models.ct2 import CT2Checkpoint, read_config, read_model_bin

if TYPE_CHECKING:  # torch is imported by the conversions only: finding a model's cache must not load it
    import torch

ExportDtype = Literal["float32", "float16"]

# Whisper is trained on 30 s windows: timestamps <|0.00|> ... <|30.00|> in 0.02 s steps.
TIMESTAMP_TOKEN_COUNT = 1501
MAX_TARGET_LENGTH = 448

# openai-whisper module path inside a residual block -> transformers module path.
_BLOCK_TO_HF = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
# openai-whisper top-level parameter or module -> transformers name.
_TOP_TO_HF = {
    "encoder.conv1": "model.encoder.conv1",
    "encoder.conv2": "model.encoder.conv2",
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "encoder.ln_post": "model.encoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.ln": "model.decoder.layer_norm",
}
_BLOCK_FROM_HF = {hf: openai for openai, hf in _BLOCK_TO_HF.items()}
_TOP_FROM_HF = {hf: openai for openai, hf in _TOP_TO_HF.items()}


def ct2_to_openai_state_dict(
    checkpoint: CT2Checkpoint, dtype: ExportDtype = "float32"
) -> dict[str, torch.Tensor]:
    """openai-whisper `Whisper` state dict (parameters and persistent buffers) of a CT2 checkpoint."""
    import torch

    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(checkpoint.float_weight(name)).to(torch_dtype).contiguous()

    def linear(name: str) -> dict[str, torch.Tensor]:
        params = {"weight": tensor(f"{name}/weight")}
        if f"{name}/bias" in checkpoint:
            params["bias"] = tensor(f"{name}/bias")
        return params

    def layer_norm(name: str) -> dict[str, torch.Tensor]:
        return {"weight": tensor(f"{name}/gamma"), "bias": tensor(f"{name}/beta")}

    def split_rows(name: str, parts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        weights = tensor(f"{name}/weight").chunk(len(parts))
        biases = tensor(f"{name}/bias").chunk(len(parts))
        return {
            part: {"weight": w.contiguous()} if part.endswith("key") else {"weight": w.contiguous(), "bias": b.contiguous()}
            for part, w, b in zip(parts, weights, biases, strict=True)
        }

    modules: dict[str, dict[str, torch.Tensor]] = {
        "encoder.conv1": linear("encoder/conv1"),
        "encoder.conv2": linear("encoder/conv2"),
        "encoder.ln_post": layer_norm("encoder/layer_norm"),
        "decoder.token_embedding": {"weight": tensor("decoder/embeddings/weight")},
        "decoder.ln": layer_norm("decoder/layer_norm"),
    }
    dims = checkpoint.whisper_dims()
    for stack, count in (("encoder", dims["n_audio_layer"]), ("decoder", dims["n_text_layer"])):
        for index in range(count):
            source = f"{stack}/layer_{index}"
            block = f"{stack}.blocks.{index}"
            for part, params in split_rows(
                f"{source}/self_attention/linear_0", ["attn.query", "attn.key", "attn.value"]
            ).items():
                modules[f"{block}.{part}"] = params
            modules[f"{block}.attn.out"] = linear(f"{source}/self_attention/linear_1")
            modules[f"{block}.attn_ln"] = layer_norm(f"{source}/self_attention/layer_norm")
            if stack == "decoder":
                modules[f"{block}.cross_attn.query"] = linear(f"{source}/attention/linear_0")
                for part, params in split_rows(
                    f"{source}/attention/linear_1", ["cross_attn.key", "cross_attn.value"]
                ).items():
                    modules[f"{block}.{part}"] = params
                modules[f"{block}.cross_attn.out"] = linear(f"{source}/attention/linear_2")
                modules[f"{block}.cross_attn_ln"] = layer_norm(f"{source}/attention/layer_norm")
            modules[f"{block}.mlp.0"] = linear(f"{source}/ffn/linear_0")
            modules[f"{block}.mlp.2"] = linear(f"{source}/ffn/linear_1")
            modules[f"{block}.mlp_ln"] = layer_norm(f"{source}/ffn/layer_norm")

    state = {f"{module}.{param}": value for module, params in modules.items() for param, value in params.items()}
    state["encoder.positional_embedding"] = tensor("encoder/position_encodings/encodings")
    state["decoder.positional_embedding"] = tensor("decoder/position_encodings/encodings")
    return state


def openai_to_hf_name(name: str) -> str:
    """transformers parameter name of an openai-whisper parameter name."""
    if block := re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", name):
        stack, index, module, param = block.groups()
        return f"model.{stack}.layers.{index}.{_BLOCK_TO_HF[module]}.{param}"
    if name in _TOP_TO_HF:
        return _TOP_TO_HF[name]
    module, param = name.rsplit(".", 1)
    return f"{_TOP_TO_HF[module]}.{param}"


def hf_to_openai_name(name: str) -> str:
    """openai-whisper parameter name of a transformers parameter name."""
    if block := re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
        stack, index, module, param = block.groups()
        return f"{stack}.blocks.{index}.{_BLOCK_FROM_HF[module]}.{param}"
    if name in _TOP_FROM_HF:
        return _TOP_FROM_HF[name]
    module, param = name.rsplit(".", 1)
    return f"{_TOP_FROM_HF[module]}.{param}"


def export_openai_whisper(ct2_dir: str | Path, out_path: str | Path, dtype: ExportDtype = "float32") -> Path:
    """Write an openai-whisper checkpoint (loadable by whisper.load_model) with the alignment heads."""
    import torch

    checkpoint = read_model_bin(Path(ct2_dir) / "model.bin")
    config = read_config(ct2_dir)
    torch.save(
        {
            "dims": checkpoint.whisper_dims(),
            "model_state_dict": ct2_to_openai_state_dict(checkpoint, dtype),
            "alignment_heads": [list(map(int, head)) for head in config["alignment_heads"]],
        },
        out_path,
    )
    return Path(out_path)


def export_transformers(ct2_dir: str | Path, out_dir: str | Path, dtype: ExportDtype = "float32") -> Path:
    """Write a transformers Whisper directory: weights, model/generation config, tokenizer, feature extractor."""
    from safetensors.torch import save_file

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = read_model_bin(ct2_dir / "model.bin")
    ct2_config = read_config(ct2_dir)
    dims = checkpoint.whisper_dims()
    special_ids = _special_token_ids(ct2_dir / "tokenizer.json")

    state = ct2_to_openai_state_dict(checkpoint, dtype)
    # proj_out shares embed_tokens (tie_word_embeddings), so it is not stored.
    save_file(
        {openai_to_hf_name(name): value for name, value in state.items()},
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    eos_id = special_ids["<|endoftext|>"]
    start_id = special_ids["<|startoftranscript|>"]
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": dims["n_vocab"],
        "num_mel_bins": dims["n_mels"],
        "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"],
        "encoder_attention_heads": dims["n_audio_head"],
        "encoder_ffn_dim": int(checkpoint["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_layers": dims["n_text_layer"],
        "decoder_attention_heads": dims["n_text_head"],
        "decoder_ffn_dim": int(checkpoint["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": dims["n_audio_ctx"],
        "max_target_positions": dims["n_text_ctx"],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "decoder_start_token_id": start_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps(_generation_config(dims, ct2_config, special_ids), indent=2)
    )
    _save_tokenizer_and_feature_extractor(ct2_dir / "tokenizer.json", out_dir, dims, special_ids)
    return out_dir


def _special_token_ids(tokenizer_json: Path) -> dict[str, int]:
    added = json.loads(tokenizer_json.read_text())["added_tokens"]
    return {token["content"]: token["id"] for token in added if token.get("special")}


def _generation_config(dims: dict[str, int], ct2_config: dict, special_ids: dict[str, int]) -> dict:
    """generation_config.json as published with openai/whisper-* on the Hugging Face hub."""
    eos_id = special_ids["<|endoftext|>"]
    start_id = special_ids["<|startoftranscript|>"]
    # Same rule as openai-whisper: only multilingual vocabularies reach 51865 tokens.
    is_multilingual = dims["n_vocab"] >= 51865
    generation = {
        "alignment_heads": [list(map(int, head)) for head in ct2_config["alignment_heads"]],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "decoder_start_token_id": start_id,
        "is_multilingual": is_multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": MAX_TARGET_LENGTH,
        "no_timestamps_token_id": special_ids["<|notimestamps|>"],
        "prev_sot_token_id": special_ids["<|startofprev|>"],
        "return_timestamps": False,
    }
    if is_multilingual:
        # Language tokens sit between <|startoftranscript|> and <|translate|> in every Whisper vocabulary.
        generation["lang_to_id"] = {
            token: token_id
            for token, token_id in special_ids.items()
            if start_id < token_id < special_ids["<|translate|>"]
        }
        generation["task_to_id"] = {
            "transcribe": special_ids["<|transcribe|>"],
            "translate": special_ids["<|translate|>"],
        }
    return generation


def _save_tokenizer_and_feature_extractor(
    tokenizer_json: Path, out_dir: Path, dims: dict[str, int], special_ids: dict[str, int]
) -> None:
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    staging = out_dir / ".tokenizer-source"
    staging.mkdir(exist_ok=True)
    shutil.copy(tokenizer_json, staging / "tokenizer.json")
    eos = "<|endoftext|>"
    # All special tokens but <|endoftext|> are "extra": transformers derives the first timestamp
    # id from the last special id (<|notimestamps|>).
    extras = [token for token, _ in sorted(special_ids.items(), key=lambda item: item[1]) if token != eos]
    tokenizer = WhisperTokenizer.from_pretrained(
        staging,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        additional_special_tokens=extras,
        model_max_length=1024,
    )
    shutil.rmtree(staging)
    timestamp_count = min(TIMESTAMP_TOKEN_COUNT, dims["n_vocab"] - len(tokenizer))
    tokenizer.add_tokens(["<|%.2f|>" % (index * 0.02) for index in range(timestamp_count)])
    feature_extractor = WhisperFeatureExtractor(feature_size=dims["n_mels"])
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)


def export_openai_whisper_from_transformers(
    hf_dir: str | Path, out_path: str | Path, dtype: ExportDtype = "float32"
) -> Path:
    """Write an openai-whisper checkpoint from a transformers Whisper directory (safetensors weights)."""
    import torch
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    weight_files = sorted(hf_dir.glob("*.safetensors"))
    if not weight_files:
        raise FileNotFoundError(f"{hf_dir} has no *.safetensors weights to convert")
    config = json.loads((hf_dir / "config.json").read_text())
    generation_path = hf_dir / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    weights: dict[str, torch.Tensor] = {}
    for weight_file in weight_files:
        weights.update(load_file(str(weight_file)))
    dims = {
        "n_mels": config["num_mel_bins"],
        "n_audio_ctx": config["max_source_positions"],
        "n_audio_state": config["d_model"],
        "n_audio_head": config["encoder_attention_heads"],
        "n_audio_layer": config["encoder_layers"],
        "n_vocab": config["vocab_size"],
        "n_text_ctx": config["max_target_positions"],
        "n_text_state": config["d_model"],
        "n_text_head": config["decoder_attention_heads"],
        "n_text_layer": config["decoder_layers"],
    }
    # openai-whisper's own default when a checkpoint names no heads: the last half of the layers.
    heads = generation.get("alignment_heads") or [
        [layer, head]
        for layer in range(dims["n_text_layer"] // 2, dims["n_text_layer"])
        for head in range(dims["n_text_head"])
    ]
    state = {
        hf_to_openai_name(name): value.to({"float32": torch.float32, "float16": torch.float16}[dtype])
        for name, value in weights.items()
        if name != "proj_out.weight"  # tied to the token embedding
    }
    torch.save({"dims": dims, "model_state_dict": state, "alignment_heads": heads}, out_path)
    return Path(out_path)
