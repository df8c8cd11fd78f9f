"""PyTorch dynamic int8 of a transformers Whisper model, built and loaded without ever holding the fp32 weights.

The encoder's and decoder's linear layers become dynamic int8 ones; the token embedding and the
output projection tied to it share one int8 matrix (Int8TiedVocabulary). The model is cached as
one safetensors file (DYNAMIC_INT8_FILE: each quantized layer's int8 weight with its per-channel
scales and zero points, the int8 vocabulary with its row scales, the remaining tensors in fp32)
beside config.json and generation_config.json.

No load holds the fp32 model: the model is built on the `meta` device (no storage), each linear
layer that `quantize_linear_layers_dynamic` would quantize is replaced by a dynamic int8 one
filled from the file, the vocabulary by the shared int8 matrix, and only the small remaining
tensors are materialized. The first load quantizes the same way, layer by layer from the
provisioned safetensors (one layer's fp32 weight at a time, the vocabulary in row blocks), then
writes the cache; a source that is not safetensors with the expected keys is loaded whole in
fp32 and quantized in place, paying the fp32 peak once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from steadyscribe.models.cache import atomic_path, quantized_model_dir
from steadyscribe.models.safetensors_io import SafetensorsReader, write_safetensors

logger = logging.getLogger(__name__)


def quantize_linear_layers_dynamic(model) -> None:
    """Dynamic int8 in place: the encoder's and decoder's nn.Linear layers become int8 ones
    (per-output-channel weight scales; activations quantized per batch at run time), and the
    token embedding and tied output projection share one int8 matrix (Int8TiedVocabulary).

    The vocabulary is a third of base's weights: left in fp32, it would keep int8 above 35% of them.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantize_dynamic(model.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    vocabulary = Int8TiedVocabulary(model.model.decoder.embed_tokens.weight.detach())
    model.model.decoder.embed_tokens = Int8Embedding(vocabulary)
    model.proj_out = Int8OutputProjection(vocabulary)


class Int8TiedVocabulary(torch.nn.Module):
    """A vocabulary x width matrix as int8 with one symmetric scale per token row.

    Built from the fp32 matrix (quantized in blocks of rows, so the fp32 temporaries stay small;
    rows are independent, so the result is the same as in one piece), or from a meta tensor of
    its shape: buffers without storage, to be filled by `set_rows` or replaced.
    """

    ROW_BLOCK = 4096

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_int8", torch.empty(weight.shape, dtype=torch.int8, device=weight.device))
        self.register_buffer("scale", torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device))
        if weight.device.type != "meta":
            for first in range(0, weight.shape[0], self.ROW_BLOCK):
                self.set_rows(first, weight[first : first + self.ROW_BLOCK])

    def set_rows(self, first: int, block: torch.Tensor) -> None:
        """Quantize fp32 rows first .. first + len(block) into place."""
        block = block.float()
        scale = block.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.weight_int8[first : first + len(block)] = torch.round(block / scale[:, None]).to(torch.int8)
        self.scale[first : first + len(block)] = scale


class Int8Embedding(torch.nn.Module):
    """Token embedding lookup from the shared int8 vocabulary."""

    def __init__(self, vocabulary: Int8TiedVocabulary) -> None:
        super().__init__()
        self.vocabulary = vocabulary

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.vocabulary.weight_int8[input_ids].float()
        return rows * self.vocabulary.scale[input_ids].unsqueeze(-1)


class Int8OutputProjection(torch.nn.Module):
    """Logits from the shared int8 vocabulary: torch's weight-only int8 matmul, no fp32 copy."""

    def __init__(self, vocabulary: Int8TiedVocabulary) -> None:
        super().__init__()
        self.vocabulary = vocabulary

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1]).float().contiguous()
        logits = torch._weight_int8pack_mm(flat, self.vocabulary.weight_int8, self.vocabulary.scale)
        return logits.reshape(*hidden.shape[:-1], -1)


DYNAMIC_INT8_FILE = "dynamic-int8.safetensors"
_DYNAMIC_INT8_FORMAT = "steadyscribe-dynamic-int8-v1"
# Suffixes of a quantized linear layer's entries in DYNAMIC_INT8_FILE.
_QWEIGHT, _QSCALES, _QZERO_POINTS = ".weight_int8", ".weight_scales", ".weight_zero_points"


def load_dynamic_int8(model_dir: str | Path, cache_dir: str | Path | None = None):
    """The dynamic-int8 WhisperForConditionalGeneration of a provisioned transformers directory,
    on the CPU in eval mode: from the cache, or quantized now and cached (module docstring)."""
    cached = quantized_model_dir(model_dir, "dynamic-int8", torch.float32, cache_dir)
    if (cached / DYNAMIC_INT8_FILE).is_file():
        return _dynamic_int8_from_cache(cached)
    logger.info("quantizing %s to dynamic-int8 (cached at %s)", model_dir, cached)
    model = _dynamic_int8_from_source(Path(model_dir))
    _save_dynamic_int8(model, Path(model_dir), cached)
    return model


def dynamic_int8_linear_names(model) -> list[str]:
    """The layers quantize_linear_layers_dynamic quantizes: every plain nn.Linear under
    model.model (quantize_dynamic matches the exact type), by their names in `model`."""
    return [f"model.{name}" for name, module in model.model.named_modules() if type(module) is torch.nn.Linear]


def _whisper_skeleton(config_dir: Path):
    """A WhisperForConditionalGeneration with its config and generation config, every tensor on
    the meta device (no storage)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(config_dir)
    return model


def _dynamic_int8_from_source(model_dir: Path):
    """Quantize layer by layer from the provisioned safetensors; the whole fp32 model only when
    the source cannot be read that way."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    model = _whisper_skeleton(model_dir)
    source = SafetensorsReader.of_model_dir(model_dir)
    needed = {name for name, _ in _meta_tensors(model) if not name.startswith("proj_out.")}
    if source is None or not needed <= source.keys():
        why = "no safetensors weights" if source is None else f"missing {sorted(needed - source.keys())[:3]}"
        logger.info("%s: %s; quantizing the whole fp32 model", model_dir, why)
        return _dynamic_int8_from_fp32_model(model_dir)

    def quantized(name: str, layer: torch.nn.Linear):
        fp32 = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        fp32.weight = torch.nn.Parameter(source.get(f"{name}.weight").float(), requires_grad=False)
        if layer.bias is not None:
            fp32.bias = torch.nn.Parameter(source.get(f"{name}.bias").float(), requires_grad=False)
        fp32.qconfig = per_channel_dynamic_qconfig
        return DynamicLinear.from_float(fp32)

    _replace_linear_layers(model, quantized)
    rows, width = model.model.decoder.embed_tokens.weight.shape
    vocabulary = Int8TiedVocabulary(torch.empty(rows, width, device="meta")).to_empty(device="cpu")
    block = Int8TiedVocabulary.ROW_BLOCK
    for first in range(0, rows, block):
        vocabulary.set_rows(first, source.rows("model.decoder.embed_tokens.weight", first, block))
    _attach_vocabulary(model, vocabulary)
    _materialize(model, lambda name: source.get(name).float())
    return model.eval()


def _dynamic_int8_from_fp32_model(model_dir: Path):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    quantize_linear_layers_dynamic(model)
    return model.eval()


def _dynamic_int8_from_cache(cached: Path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = _whisper_skeleton(cached)
    file = SafetensorsReader([cached / DYNAMIC_INT8_FILE])
    if file.metadata.get("format") != _DYNAMIC_INT8_FORMAT:
        raise ValueError(f"{cached / DYNAMIC_INT8_FILE} is not {_DYNAMIC_INT8_FORMAT}; delete {cached} to redo it")

    def quantized(name: str, layer: torch.nn.Linear):
        weight = torch._make_per_channel_quantized_tensor(
            file.get(name + _QWEIGHT), file.get(name + _QSCALES), file.get(name + _QZERO_POINTS), 0
        )
        bias = file.get(f"{name}.bias") if f"{name}.bias" in file.keys() else None
        # Its constructor packs a placeholder weight of the layer's size, replaced at once.
        module = DynamicLinear(layer.in_features, layer.out_features, bias_=bias is not None, dtype=torch.qint8)
        module.set_weight_bias(weight, bias)
        return module

    _replace_linear_layers(model, quantized)
    vocabulary_shape = model.model.decoder.embed_tokens.weight.shape
    _attach_vocabulary(model, Int8TiedVocabulary(torch.empty(vocabulary_shape, device="meta")))
    _materialize(model, file.get)
    return model.eval()


def _save_dynamic_int8(model, model_dir: Path, target: Path) -> None:
    """Write the quantized model's tensors (module docstring) and configs; atomically."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    tensors: dict[str, Callable[[], torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, DynamicLinear):
            # Unpacked one layer at a time, while the file is written.
            tensors[name + _QWEIGHT] = lambda m=module: m._weight_bias()[0].int_repr()
            tensors[name + _QSCALES] = lambda m=module: m._weight_bias()[0].q_per_channel_scales()
            tensors[name + _QZERO_POINTS] = lambda m=module: m._weight_bias()[0].q_per_channel_zero_points()
            if module._weight_bias()[1] is not None:
                tensors[f"{name}.bias"] = lambda m=module: m._weight_bias()[1]
    # named_parameters/buffers name the shared vocabulary once, under the embedding (registered first).
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensors[name] = lambda t=tensor: t
    with atomic_path(target) as staging:
        staging.mkdir(parents=True)
        metadata = {"format": _DYNAMIC_INT8_FORMAT, "source": str(model_dir)}
        write_safetensors(staging / DYNAMIC_INT8_FILE, tensors, metadata)
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)


def _replace_linear_layers(model, quantized) -> None:
    """Each layer named by dynamic_int8_linear_names replaced by quantized(name, layer)."""
    for name in dynamic_int8_linear_names(model):
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attribute, quantized(name, getattr(parent, attribute)))


def _attach_vocabulary(model, vocabulary: Int8TiedVocabulary) -> None:
    model.model.decoder.embed_tokens = Int8Embedding(vocabulary)
    model.proj_out = Int8OutputProjection(vocabulary)


def _meta_tensors(model) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def _materialize(model, tensor) -> None:
    """Every parameter and buffer still on the meta device replaced by tensor(its name), which
    must have its shape and dtype."""
    for name, placeholder in _meta_tensors(model):
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = tensor(name)
        if value.shape != placeholder.shape or value.dtype != placeholder.dtype:
            expected, got = f"{placeholder.dtype} {tuple(placeholder.shape)}", f"{value.dtype} {tuple(value.shape)}"
            raise ValueError(f"{name}: expected {expected}, got {got}")
        if attribute in module._parameters:
            module._parameters[attribute] = torch.nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[attribute] = value
    if left := _meta_tensors(model):
        raise ValueError(f"tensors left without storage: {[name for name, _ in left][:5]}")
