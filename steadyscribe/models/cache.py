"""Where models live on disk: the cache directory, its layout, and entries that appear whole.

Layout under the cache directory: `<format>/<name>` for models imported or downloaded in that
format, `<format>/<source>-<dtype>` for conversions, `sources/` for URL copies, and
`transformers-<mode>/<source>-<hash>-<dtype>` for quantized models. Every entry appears by an
atomic rename, so a concurrent process sees a whole model or none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Format = Literal["openai-whisper", "transformers", "ctranslate2"]
FORMATS: tuple[Format, ...] = ("openai-whisper", "transformers", "ctranslate2")
CACHE_ENV = "STEADYSCRIBE_MODEL_CACHE"


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The argument, else $STEADYSCRIBE_MODEL_CACHE, else the user cache ($XDG_CACHE_HOME or ~/.cache)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    user_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(user_cache) / "steadyscribe" / "models"


def native_path(cache: Path, fmt: Format, name: str) -> Path:
    if fmt == "openai-whisper":
        return cache / fmt / f"{name}.pt"
    return cache / fmt / name


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a staging path beside `final`; rename it into place when the block succeeds.

    If another process renamed its copy first, ours is dropped and theirs kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def quantized_model_dir(
    model_dir: str | Path, mode: str, dtype: object, cache_dir: str | Path | None = None
) -> Path:
    """Where the `mode` quantization of `model_dir` is cached: keyed by the source's resolved
    path (two directories may share a name) and the compute dtype saved in its config."""
    source = Path(model_dir).resolve()
    digest = short_hash(str(source))
    dtype_name = str(dtype).removeprefix("torch.")
    return model_cache_dir(cache_dir) / f"transformers-{mode}" / f"{source.name}-{digest}-{dtype_name}"
