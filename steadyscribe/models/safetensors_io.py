"""safetensors by plain reads and writes.

`safe_open` hands out views of one private mapping of the whole file, which keeps every page
read resident (as this process's RSS) as long as any tensor from it lives; a quantizer reads
every fp32 weight once and keeps none of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class SafetensorsReader:
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
    def of_model_dir(cls, model_dir: Path) -> "SafetensorsReader | None":
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
        return self._read(path, offset, SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"])

    def rows(self, name: str, first: int, count: int) -> torch.Tensor:
        """Rows first .. first + count (fewer at the end) of a tensor, without reading the rest."""
        path, data_start, entry = self._entries[name]
        dtype, shape = SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"]
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


def write_safetensors(path: Path, tensors: dict[str, Callable[[], torch.Tensor]], metadata: dict[str, str]) -> None:
    """A safetensors file, each tensor made by its callable and written as it comes (no copy of
    the whole file in memory). Shapes and dtypes are read first, for the header."""
    import json

    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, make in tensors.items():
        tensor = make()
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for make in tensors.values():
            file.write(make().detach().contiguous().reshape(-1).view(torch.uint8).numpy())
