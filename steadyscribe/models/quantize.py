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
which appears by an atomic rename like every cache entry. Dynamic int8 is not cached: its
quantized modules cannot be rebuilt from a state dict without an fp32 model to quantize first,
and quantizing at load is cheap: it added 1.6 s (base) and 3 s (tiny.en) to a 1.8 s load on a
heavily loaded 2-core machine, once per engine, against minutes of decoding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
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
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    if mode == "dynamic-int8":
        quantize_linear_layers_dynamic(model)
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
    """A vocabulary x width matrix as int8 with one symmetric scale per token row."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight_int8", torch.round(weight.float() / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)


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
