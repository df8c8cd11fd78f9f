"""bitsandbytes quantization (LLM.int8 and 4-bit NF4) of a transformers Whisper model.

bitsandbytes is imported only here, inside the functions, so a run whose plan does not use it
never loads it (its import warns about optional packages).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import torch

from steadyscribe.models.cache import atomic_path

logger = logging.getLogger(__name__)

def bitsandbytes_config(mode: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def save_bitsandbytes_model(model_dir: Path, mode: str, dtype: torch.dtype, target: Path) -> None:
    """Quantize the provisioned weights once and cache the result (with the processor files)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    logger.info("quantizing %s to %s (cached at %s)", model_dir, mode, target)
    model = WhisperForConditionalGeneration.from_pretrained(
        model_dir, dtype=dtype, quantization_config=bitsandbytes_config(mode, dtype), device_map="cpu"
    )
    with atomic_path(target) as staging:
        model.save_pretrained(staging)
        WhisperProcessor.from_pretrained(model_dir).save_pretrained(staging)


@functools.cache
def bitsandbytes_support(mode: str, device_type: str) -> str | None:
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
