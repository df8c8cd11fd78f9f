"""Distilled Whisper models (distil-whisper): their long-form settings, and an offline student.

distil-whisper checkpoints (distil-small.en, distil-medium.en, distil-large-v2, distil-large-v3)
are ordinary Whisper checkpoints with the teacher's encoder and a shallow decoder; the batched
transformers engine runs them as they are. What differs is the window length their model cards
recommend for long audio (recommended_window_s).

Offline there are no distilled weights to download, so build_student makes a student from a
teacher the way distil-whisper initialises one (its create_student_model_from_teacher.py): the
teacher's encoder, embeddings and final layer norm copied whole; a decoder of N layers taken from
the teacher's layers evenly spaced from the first to the last (for 2 layers: the first and the
last). THE STUDENT IS UNTRAINED: it has the architecture and the run-time cost of a distilled
model, and its transcripts are not meaningful (its accuracy says nothing about distil-whisper).
It exists to exercise loading, batching, quantization and word timing on a two-layer decoder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from steadyscribe.models.cache import atomic_path, model_cache_dir
from steadyscribe.models.provision import provision

STUDENT_NAMESPACE = "steadyscribe"
# Files of a transformers directory that build_student writes itself; the rest (tokenizer,
# processor) is copied from the teacher.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")

# Longest window (seconds) the model cards recommend for long-form audio. distil-large-v2 and the
# first English models: "a chunk length of 15-seconds is optimal" (chunked algorithm). distil-large-v3
# (and v3.5) were trained for OpenAI's sequential 30 s algorithm and "25-seconds is optimal" chunked;
# the pipeline's windows tile the audio at pauses like the sequential algorithm, so they keep 30 s.
_RECOMMENDED_WINDOW_S = {
    "distil-small.en": 15.0,
    "distil-medium.en": 15.0,
    "distil-large-v2": 15.0,
    "distil-large-v3": 30.0,
    "distil-large-v3.5": 30.0,
}


def is_distilled(model: str) -> bool:
    """True for distil-whisper names and hub ids, and for students built here."""
    return _distil_name(model) is not None


def recommended_window_s(model: str) -> float | None:
    """The longest window the model's card recommends for long audio; None for non-distilled models.

    Students built here follow distil-whisper's default for its shallow-decoder models (15 s).
    """
    name = _distil_name(model)
    if name is None:
        return None
    return _RECOMMENDED_WINDOW_S.get(name, 15.0)


def student_spec(teacher: str, decoder_layers: int = 2) -> str:
    """The model spec of the student of `teacher`, e.g. steadyscribe/distil-tiny.en-student."""
    suffix = "" if decoder_layers == 2 else f"-{decoder_layers}l"
    return f"{STUDENT_NAMESPACE}/distil-{teacher}-student{suffix}"


def build_student(teacher: str = "tiny.en", decoder_layers: int = 2, cache_dir: str | Path | None = None) -> str:
    """Build (once) the untrained distil-whisper-style student of `teacher` in the model cache.

    Returns its spec; `provision(spec, "transformers")` then finds it, as for an imported model.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    spec = student_spec(teacher, decoder_layers)
    cache = model_cache_dir(cache_dir)
    target = cache / "transformers" / spec.replace("/", "--")  # provision's cache path of a hub id
    if target.is_dir():
        return spec
    teacher_dir = provision(teacher, "transformers", cache)
    teacher_model = WhisperForConditionalGeneration.from_pretrained(teacher_dir, dtype=torch.float32)
    kept_layers = _decoder_layer_mapping(teacher_model.config.decoder_layers, decoder_layers)

    config = teacher_model.config.to_dict()
    config["decoder_layers"] = decoder_layers
    student = WhisperForConditionalGeneration(type(teacher_model.config).from_dict(config))
    # Everything whose shape matches (encoder, embeddings, layer norms) comes from the teacher...
    teacher_state = teacher_model.state_dict()
    student_state = {name: tensor for name, tensor in teacher_state.items() if not _is_decoder_layer(name)}
    # ...and student decoder layer i from teacher decoder layer kept_layers[i].
    for student_layer, teacher_layer in enumerate(kept_layers):
        prefix = f"model.decoder.layers.{teacher_layer}."
        for name, tensor in teacher_state.items():
            if name.startswith(prefix):
                student_state[f"model.decoder.layers.{student_layer}.{name[len(prefix):]}"] = tensor
    student.load_state_dict(student_state, strict=True)
    student.generation_config = teacher_model.generation_config
    student.generation_config.alignment_heads = _student_alignment_heads(
        teacher_model.generation_config.alignment_heads, kept_layers, teacher_model.config.decoder_attention_heads
    )

    with atomic_path(target) as staging:
        staging.mkdir()
        for item in teacher_dir.iterdir():
            if item.is_file() and item.name not in _MODEL_FILES:
                shutil.copy(item, staging / item.name)
        student.save_pretrained(staging)
        (staging / "STUDENT.json").write_text(
            json.dumps(
                {
                    "teacher": teacher,
                    "decoder_layers_from_teacher": kept_layers,
                    "trained": False,
                    "note": "untrained distil-whisper-style student: its transcripts are not meaningful",
                },
                indent=2,
            )
        )
    return spec


def _distil_name(model: str) -> str | None:
    """`distil-large-v3` for distil-whisper/distil-large-v3, distil-large-v3, faster-distil-whisper-large-v3."""
    name = re.sub(r"^.*/", "", model.strip().lower())
    name = re.sub(r"^(faster-)?distil-whisper-", "distil-", name)
    return name if name.startswith("distil-") else None


def _decoder_layer_mapping(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher decoder layers the student's start from: evenly spaced, first and last included."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} decoder layers, not {student_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [int(i) for i in np.linspace(0, teacher_layers - 1, student_layers).round()]


def _is_decoder_layer(name: str) -> bool:
    return name.startswith("model.decoder.layers.")


def _student_alignment_heads(
    teacher_heads: list[list[int]] | None, kept_layers: list[int], heads_per_layer: int
) -> list[list[int]]:
    """The teacher's word-timing heads that the student kept, renumbered to its layers.

    When it kept none of them: every head of the last layer (openai-whisper's fallback uses the
    last half of the layers).
    """
    renumbered = {teacher: student for student, teacher in enumerate(kept_layers)}
    heads = [[renumbered[layer], head] for layer, head in teacher_heads or [] if layer in renumbered]
    return heads or [[len(kept_layers) - 1, head] for head in range(heads_per_layer)]
