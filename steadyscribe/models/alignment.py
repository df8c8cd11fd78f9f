"""Alignment heads: the decoder cross-attention heads whose attention follows the audio, for word timestamps.

From openai-whisper's packed masks of its named models, or a checkpoint's own list.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import numpy as np

from steadyscribe.models.openai_tables import openai_whisper_table

def openai_alignment_dumps() -> dict[str, bytes]:
    return openai_whisper_table("_ALIGNMENT_HEADS")


def decode_openai_heads(name: str) -> list[tuple[int, int]]:
    """openai-whisper's base85(gzip(flat bool mask)) of a named model's heads, as (layer, head) pairs."""
    flat = np.frombuffer(gzip.decompress(base64.b85decode(openai_alignment_dumps()[name])), dtype=bool)
    size = name.split(".")[0].split("-")[0]  # "large-v3-turbo" -> "large", "tiny.en" -> "tiny"
    mask = flat.reshape(-1, TEXT_HEADS_BY_SIZE[size])
    return [(int(layer), int(head)) for layer, head in zip(*np.nonzero(mask), strict=True)]


# Decoder heads per layer of the openai-whisper sizes, to reshape their flat head masks.
TEXT_HEADS_BY_SIZE = {"tiny": 6, "base": 8, "small": 12, "medium": 16, "large": 20, "turbo": 20}


def checkpoint_heads(path: Path) -> list[list[int]]:
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if checkpoint.get("alignment_heads"):
        return checkpoint["alignment_heads"]
    dims = checkpoint["dims"]
    return [
        [layer, head]
        for layer in range(dims["n_text_layer"] // 2, dims["n_text_layer"])
        for head in range(dims["n_text_head"])
    ]


def set_alignment_heads(model, heads: list[list[int]] | list[tuple[int, int]]) -> None:
    """Same buffer as Whisper.set_alignment_heads builds, from (layer, head) pairs."""
    import torch

    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
