"""Quantized Whisper models for the transformers engine: what works where, and loading them.

Modes (Plan.quantization):
- `none`: the provisioned weights in the compute dtype.
- `int8`: bitsandbytes LLM.int8 (`BitsAndBytesConfig(load_in_8bit=True)`), on CUDA and on the
  CPU where the installed bitsandbytes runs it (0.50 does; it casts activations to fp16 there).
- `nf4`: bitsandbytes 4-bit NormalFloat (`load_in_4bit`, `bnb_4bit_quant_type="nf4"`), with the
  compute dtype of the plan; 0.50 runs it on the CPU too (slowly without the optional `kernels`).
- `dynamic-int8`: PyTorch dynamic int8 (`torch.ao.quantization.quantize_dynamic`) of the
  encoder's and decoder's linear layers; CPU only (its kernels are fbgemm/qnnpack).

Where each mode lives: bitsandbytes in steadyscribe.models.quantize_bnb, dynamic int8 in
steadyscribe.models.quantize_dynamic. A quantized model is cached beside the provisioned one
(steadyscribe.models.cache.quantized_model_dir) and appears by an atomic rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from steadyscribe.models.cache import quantized_model_dir

QuantizationMode = Literal["none", "int8", "nf4", "dynamic-int8"]
QUANTIZATION_MODES: tuple[QuantizationMode, ...] = ("none", "int8", "nf4", "dynamic-int8")
BITSANDBYTES_MODES = ("int8", "nf4")


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
    from steadyscribe.models.quantize_bnb import bitsandbytes_support

    return bitsandbytes_support(mode, device_type)


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
        from steadyscribe.models.quantize_bnb import save_bitsandbytes_model

        quantized_dir = quantized_model_dir(model_dir, mode, dtype, cache_dir)
        if not quantized_dir.is_dir():
            save_bitsandbytes_model(model_dir, mode, dtype, quantized_dir)
        # The saved config carries its quantization_config; device_map places the 8/4-bit tensors.
        model = WhisperForConditionalGeneration.from_pretrained(
            quantized_dir, dtype=dtype, device_map=device, attn_implementation="sdpa"
        )
        return model.eval()
    if mode == "dynamic-int8":
        from steadyscribe.models.quantize_dynamic import load_dynamic_int8

        return load_dynamic_int8(model_dir, cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


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
