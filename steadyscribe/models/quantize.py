"""Quantized Whisper models for the transformers engine: what works where, and loading them.

Modes (Plan.quantization):
- `none`: the provisioned weights in the compute dtype.
- `int8`: bitsandbytes LLM.int8 (`BitsAndBytesConfig(load_in_8bit=True)`), on CUDA and on the
  CPU where the installed bitsandbytes runs it (0.50 does; it casts activations to fp16 there).
- `nf4`: bitsandbytes 4-bit NormalFloat (`load_in_4bit`, `bnb_4bit_quant_type="nf4"`), with the
  compute dtype of the plan; 0.50 runs it on the CPU too (slowly without the optional `kernels`).
- `dynamic-int8`: PyTorch dynamic int8 (`torch.ao.quantization.quantize_dynamic`) of the
  encoder's and decoder's linear layers; CPU only (its kernels are fbgemm/qnnpack).

The token embedding and the output projection tied to it stay in the compute dtype with
bitsandbytes (transformers keeps the output projection out of it by default; quantizing it would
untie it from the embedding). Dynamic int8 stores them once, as one int8 matrix both use.

Caching: a bitsandbytes model is quantized from the provisioned weights once and saved with
`save_pretrained` under `<cache>/transformers-<mode>/<source dir name>-<hash>-<compute dtype>`,
which appears by an atomic rename like every cache entry. A dynamic-int8 model is cached there
too, as one safetensors file (`DYNAMIC_INT8_FILE`: each quantized layer's int8 weight with its
per-channel scales and zero points, the int8 vocabulary with its row scales, the remaining
tensors in fp32) beside config.json and generation_config.json.

No dynamic-int8 load holds the fp32 model: the model is built on the `meta` device (no
storage), each linear layer that `quantize_linear_layers_dynamic` would quantize is replaced by
a dynamic int8 one filled from the file, the vocabulary by the shared int8 matrix, and only the
small remaining tensors are materialized. The first load quantizes the same way, layer by layer
from the provisioned safetensors (one layer's fp32 weight at a time, the vocabulary in row
blocks), then writes the cache; a source that is not safetensors with the expected keys is
loaded whole in fp32 and quantized in place, paying the fp32 peak once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from steadyscribe.models.provision import _atomic_path, model_cache_dir

QuantizationMode = Literal["none", "int8", "nf4", "dynamic-int8"]
QUANTIZATION_MODES: tuple[QuantizationMode, ...] = ("none", "int8", "nf4", "dynamic-int8")
BITSANDBYTES_MODES = ("int8", "nf4")

logger = logging.getLogger(__name__)


class QuantizationUnavailableError(RuntimeError):
    """The requested quantization cannot run on this device with the installed libraries."""


def quantization_support(mode: str, device: str) -> str | None:
    """None when `mode` runs on `device` ("cpu", "cuda", "cuda:N") here; otherwise the reason.

    bitsandbytes modes are checked by quantizing and running one small layer, once per process.
    """
    if mode not in QUANTIZATION_MODES:
        return f"unknown quantization {mode!r}; known: {', '.join(QUANTIZATION_MODES)}"
    device_type = torch.device(device).type
    if mode == "none":
        return None
    if mode == "dynamic-int8":
        return None if device_type == "cpu" else "dynamic-int8 (PyTorch dynamic quantization) runs on the CPU only"
    return _bitsandbytes_support(mode, device_type)


def load_quantized_transformers(
    model_dir: str | Path,
    mode: str,
    device: str,
    dtype: torch.dtype,
    cache_dir: str | Path | None = None,
):
    """A WhisperForConditionalGeneration from a provisioned transformers directory, quantized by
    `mode`, on `device`, in eval mode; `dtype` is the compute dtype of what is not quantized.

    Raises QuantizationUnavailableError (with the reason) when the mode cannot run here.
    """
    from transformers import WhisperForConditionalGeneration

    reason = quantization_support(mode, device)
    if reason is not None:
        raise QuantizationUnavailableError(f"cannot load {model_dir} with {mode} quantization on {device}: {reason}")
    model_dir = Path(model_dir)
    if mode in BITSANDBYTES_MODES:
        quantized_dir = quantized_model_dir(model_dir, mode, dtype, cache_dir)
        if not quantized_dir.is_dir():
            _save_bitsandbytes_model(model_dir, mode, dtype, quantized_dir)
        # The saved config carries its quantization_config; device_map places the 8/4-bit tensors.
        model = WhisperForConditionalGeneration.from_pretrained(
            quantized_dir, dtype=dtype, device_map=device, attn_implementation="sdpa"
        )
        return model.eval()
    if mode == "dynamic-int8":
        return load_dynamic_int8(model_dir, cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def quantized_model_dir(
    model_dir: str | Path, mode: str, dtype: torch.dtype, cache_dir: str | Path | None = None
) -> Path:
    """Where the `mode` quantization of `model_dir` is cached: keyed by the source's resolved
    path (two directories may share a name) and the compute dtype saved in its config."""
    source = Path(model_dir).resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    dtype_name = str(dtype).removeprefix("torch.")
    return model_cache_dir(cache_dir) / f"transformers-{mode}" / f"{source.name}-{digest}-{dtype_name}"


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


# --- dynamic int8: quantize layer by layer, cache, load without fp32 weights --------------------

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
    source = _SafetensorsReader.of_model_dir(model_dir)
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
    file = _SafetensorsReader([cached / DYNAMIC_INT8_FILE])
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
    with _atomic_path(target) as staging:
        staging.mkdir(parents=True)
        metadata = {"format": _DYNAMIC_INT8_FORMAT, "source": str(model_dir)}
        _write_safetensors(staging / DYNAMIC_INT8_FILE, tensors, metadata)
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


# safetensors by plain reads and writes: `safe_open` hands out views of one private mapping of
# the whole file, which keeps every page read resident (as this process's RSS) as long as any
# tensor from it lives; a quantizer reads every fp32 weight once and keeps none of them.

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


class _SafetensorsReader:
    """Tensors of safetensors files (one model's shards), each read into its own memory."""

    def __init__(self, paths: list[Path]) -> None:
        import json

        self._entries: dict[str, tuple[Path, int, dict]] = {}
        self.metadata: dict[str, str] = {}
        for path in paths:
            with open(path, "rb") as file:
                header_size = int.from_bytes(file.read(8), "little")
                header = json.loads(file.read(header_size))
            self.metadata.update(header.pop("__metadata__", None) or {})
            for name, entry in header.items():
                self._entries[name] = (path, 8 + header_size, entry)

    @classmethod
    def of_model_dir(cls, model_dir: Path) -> "_SafetensorsReader | None":
        import json

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return cls([model_dir / name for name in files])
        single = model_dir / "model.safetensors"
        return cls([single]) if single.is_file() else None

    def keys(self) -> set[str]:
        return set(self._entries)

    def get(self, name: str) -> torch.Tensor:
        path, data_start, entry = self._entries[name]
        offset = data_start + entry["data_offsets"][0]
        return self._read(path, offset, _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"])

    def rows(self, name: str, first: int, count: int) -> torch.Tensor:
        """Rows first .. first + count (fewer at the end) of a tensor, without reading the rest."""
        path, data_start, entry = self._entries[name]
        dtype, shape = _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"]
        count = max(0, min(count, shape[0] - first))
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        return self._read(path, data_start + entry["data_offsets"][0] + first * row_bytes, dtype, [count, *shape[1:]])

    @staticmethod
    def _read(path: Path, offset: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        buffer = torch.empty(math.prod(shape) * dtype.itemsize, dtype=torch.uint8)
        with open(path, "rb") as file:
            file.seek(offset)
            if file.readinto(buffer.numpy()) != buffer.numel():
                raise ValueError(f"{path} is truncated")
        return buffer.view(dtype).reshape(shape)


def _write_safetensors(path: Path, tensors: dict[str, Callable[[], torch.Tensor]], metadata: dict[str, str]) -> None:
    """A safetensors file, each tensor made by its callable and written as it comes (no copy of
    the whole file in memory). Shapes and dtypes are read first, for the header."""
    import json

    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, make in tensors.items():
        tensor = make()
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for make in tensors.values():
            file.write(make().detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def weight_bytes(model) -> int:
    """Bytes held by the model's weights: parameters and buffers, plus what quantized layers
    keep outside them (dynamic int8's packed weights, bitsandbytes' scales)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:  # tied weights count once
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            total += weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * bias.element_size())
        weight = getattr(module, "weight", None)
        scales = getattr(weight, "SCB", None)  # LLM.int8: one scale per output row
        quant_state = getattr(weight, "quant_state", None)  # nf4: one absmax per block
        for extra in (scales, getattr(quant_state, "absmax", None)):
            if isinstance(extra, torch.Tensor):
                total += extra.numel() * extra.element_size()
    return total


# --- bitsandbytes ----------------------------------------------------------------------------


def _bitsandbytes_config(mode: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _save_bitsandbytes_model(model_dir: Path, mode: str, dtype: torch.dtype, target: Path) -> None:
    """Quantize the provisioned weights once and cache the result (with the processor files)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    logger.info("quantizing %s to %s (cached at %s)", model_dir, mode, target)
    model = WhisperForConditionalGeneration.from_pretrained(
        model_dir, dtype=dtype, quantization_config=_bitsandbytes_config(mode, dtype), device_map="cpu"
    )
    with _atomic_path(target) as staging:
        model.save_pretrained(staging)
        WhisperProcessor.from_pretrained(model_dir).save_pretrained(staging)


@functools.cache
def _bitsandbytes_support(mode: str, device_type: str) -> str | None:
    if device_type not in ("cpu", "cuda"):
        return f"bitsandbytes is not planned on {device_type}"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'steadyscribe[quant]')"
    if importlib.util.find_spec("accelerate") is None:
        return "transformers needs accelerate to load bitsandbytes models (pip install 'steadyscribe[quant]')"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no usable CUDA device"
    try:
        import bitsandbytes as bnb

        # On the CPU, LLM.int8 casts activations to fp16 on every call and logs it each time.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        compute_dtype = torch.float16 if device_type == "cuda" else torch.float32
        if mode == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=compute_dtype)
        layer = layer.to(device_type)
        with torch.inference_mode():
            output = layer(torch.randn(2, 64, device=device_type, dtype=compute_dtype))
        if output.shape != (2, 64) or not torch.isfinite(output).all():
            return f"bitsandbytes {bnb.__version__} {mode} gives no valid output on {device_type}"
    except Exception as error:  # any failure of the installed build means "do not plan on it"
        return f"bitsandbytes {mode} fails on {device_type}: {type(error).__name__}: {error}"
    return None
