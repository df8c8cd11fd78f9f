"""Read and write CTranslate2 Whisper checkpoints (`model.bin` + `config.json`).

Layout of model.bin (little-endian), as written by ctranslate2.specs.ModelSpec._serialize:
uint32 binary version; string spec name; uint32 spec revision; uint32 variable count; per
variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype id, uint32 byte count, raw
bytes; then uint32 alias count and (alias, target) string pairs. A string is a uint16 length
that counts a trailing NUL, then the bytes and the NUL.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# What a CTranslate2 Whisper directory needs besides model.bin.
CT2_AUX_FILES = ("config.json", "tokenizer.json")

BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
WHISPER_SPEC_REVISION = 3

# Index = CTranslate2's DataType enum (include/ctranslate2/types.h). bfloat16 has no numpy
# dtype: it is read as raw uint16 and widened to float32 on load.
_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(d).newbyteorder("<") for d in ("float32", "int8", "int16", "int32", "float16", "uint16")
)
_BFLOAT16 = 5


class CT2FormatError(ValueError):
    """The file is not a (complete) CTranslate2 model.bin this reader understands."""


@dataclass
class CT2Checkpoint:
    """The variables of a model.bin; arrays may be read-only views of a memory map."""

    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    spec: str = WHISPER_SPEC
    revision: int = WHISPER_SPEC_REVISION
    binary_version: int = BINARY_VERSION

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def float_weight(self, name: str) -> np.ndarray:
        """A variable as float32, dequantized when the checkpoint carries `<name>_scale`.

        CTranslate2 quantizes as q = round(w * scale) with scale = 127 / max|row| (int8, one
        scale per output row, conv kernels flattened per output channel) or one scalar scale
        (int16), so w ~= q / scale.
        """
        value = self[name]
        scale_name = f"{name}_scale"
        if scale_name not in self:
            return value.astype(np.float32)
        scale = self[scale_name].astype(np.float32)
        if scale.ndim == 1:
            scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
        return value.astype(np.float32) / scale

    def scalar(self, name: str) -> int:
        return int(self[name].reshape(()))

    def whisper_dims(self) -> dict[str, int]:
        """openai-whisper ModelDimensions of this checkpoint, as a dict."""
        encoder_positions = self["encoder/position_encodings/encodings"]
        decoder_positions = self["decoder/position_encodings/encodings"]
        return {
            "n_mels": int(self["encoder/conv1/weight"].shape[1]),
            "n_audio_ctx": int(encoder_positions.shape[0]),
            "n_audio_state": int(encoder_positions.shape[1]),
            "n_audio_head": self.scalar("encoder/num_heads"),
            "n_audio_layer": self._layer_count("encoder"),
            "n_vocab": int(self["decoder/embeddings/weight"].shape[0]),
            "n_text_ctx": int(decoder_positions.shape[0]),
            "n_text_state": int(decoder_positions.shape[1]),
            "n_text_head": self.scalar("decoder/num_heads"),
            "n_text_layer": self._layer_count("decoder"),
        }

    def _layer_count(self, stack: str) -> int:
        pattern = re.compile(rf"{stack}/layer_(\d+)/")
        indices = {int(m.group(1)) for name in self.variables if (m := pattern.match(name))}
        return max(indices) + 1 if indices else 0


def read_model_bin(path: str | Path) -> CT2Checkpoint:
    """Parse a model.bin; tensor data stays memory-mapped (no copy of a 480 MB file)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(data, str(path))
    binary_version = reader.unpack("<I")
    if binary_version != BINARY_VERSION:
        raise CT2FormatError(f"{path}: binary version {binary_version}, expected {BINARY_VERSION}")
    spec = reader.string()
    revision = reader.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("<I")):
        name = reader.string()
        rank = reader.unpack("<B")
        shape = tuple(reader.unpack("<I") for _ in range(rank))
        dtype_id = reader.unpack("<B")
        if dtype_id >= len(_DTYPES):
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        byte_count = reader.unpack("<I")
        raw = reader.take(byte_count, what=f"variable {name}")
        array = raw.view(_DTYPES[dtype_id]).reshape(shape)
        if dtype_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    aliases = {}
    for _ in range(reader.unpack("<I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    return CT2Checkpoint(variables, aliases, spec, revision, binary_version)


def write_model_bin(path: str | Path, checkpoint: CT2Checkpoint) -> None:
    """Serialize a checkpoint exactly as CTranslate2's converter does."""
    dtype_ids = {dtype.base.name: index for index, dtype in enumerate(_DTYPES[:_BFLOAT16])}
    with open(path, "wb") as out:

        def write_string(text: str) -> None:
            encoded = text.encode("utf-8")
            out.write(struct.pack("<H", len(encoded) + 1) + encoded + b"\0")

        out.write(struct.pack("<I", checkpoint.binary_version))
        write_string(checkpoint.spec)
        out.write(struct.pack("<I", checkpoint.revision))
        out.write(struct.pack("<I", len(checkpoint.variables)))
        for name, array in checkpoint.variables.items():
            if array.dtype.name not in dtype_ids:
                raise CT2FormatError(f"variable {name}: dtype {array.dtype} cannot be stored")
            write_string(name)
            out.write(struct.pack("<B", array.ndim))
            out.write(struct.pack(f"<{array.ndim}I", *array.shape))
            out.write(struct.pack("<B", dtype_ids[array.dtype.name]))
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            out.write(struct.pack("<I", len(raw)))
            out.write(raw)
        out.write(struct.pack("<I", len(checkpoint.aliases)))
        for alias, target in checkpoint.aliases.items():
            write_string(alias)
            write_string(target)


def read_config(model_dir: str | Path) -> dict:
    """config.json of a CT2 Whisper directory (alignment_heads, lang_ids, suppress_ids...)."""
    return json.loads((Path(model_dir) / "config.json").read_text())


def is_ct2_dir(path: str | Path) -> bool:
    return (Path(path) / "model.bin").is_file()


class _Reader:
    """Sequential reader over a byte buffer that reports truncation clearly."""

    def __init__(self, data: np.ndarray, source: str) -> None:
        self.data = data
        self.source = source
        self.offset = 0

    def take(self, count: int, what: str) -> np.ndarray:
        end = self.offset + count
        if end > len(self.data):
            raise CT2FormatError(
                f"{self.source} is truncated: {what} needs bytes up to {end}, file has {len(self.data)}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what="header").tobytes())[0]

    def string(self) -> str:
        length = self.unpack("<H")
        return self.take(length, what="string").tobytes()[:-1].decode("utf-8")
