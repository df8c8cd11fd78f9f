"""Resolve a model spec to a local artifact in the format an engine loads, converting once into the cache.

Specs: openai-whisper names (`tiny.en`, `small`, `turbo`, ...), names imported with
`steadyscribe models import`, Hugging Face ids (`openai/whisper-small`), a local CTranslate2
directory (model.bin), transformers directory (config.json) or openai-whisper `.pt` file, or an
fsspec URL to one of those (copied into the cache).

A name is looked up in the cache (steadyscribe.models.cache), then in installed Python packages
that ship a CTranslate2 checkpoint of it (steadyscribe.models.bundled), then downloaded
(steadyscribe.models.download).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steadyscribe.models import ModelUnavailableError
from steadyscribe.models.alignment import checkpoint_heads, decode_openai_heads, openai_alignment_dumps, set_alignment_heads
from steadyscribe.models.bundled import bundled_ct2_dir, installed_bundles, package_ct2_dir
from steadyscribe.models.cache import FORMATS, Format, atomic_path, model_cache_dir, native_path, short_hash
from steadyscribe.models.convert import (
    ExportDtype,
    export_openai_whisper,
    export_openai_whisper_from_transformers,
    export_transformers,
)
from steadyscribe.models.ct2 import CT2_AUX_FILES, is_ct2_dir, read_config, read_model_bin
from steadyscribe.models.download import (
    HF_REPO_OF_NAME,
    download_hf,
    download_openai,
    fetch_url,
    known_names,
    require_known_name,
)

@dataclass(frozen=True)
class ModelSource:
    """What a spec points at. `key` names its conversions in the cache."""

    kind: Literal["name", "hf-id", "ct2-dir", "hf-dir", "openai-file"]
    value: str
    key: str


def provision(
    spec: str,
    fmt: Format,
    cache_dir: str | Path | None = None,
    dtype: ExportDtype = "float32",
) -> Path:
    """Local path of `spec` in format `fmt` (a .pt file for openai-whisper, a directory otherwise).

    `dtype` is the weight dtype of conversions; models used as shipped keep theirs.
    """
    cache = model_cache_dir(cache_dir)
    source = resolve_source(spec, cache)
    if fmt == "ctranslate2":
        return _provision_ctranslate2(source, cache)
    if fmt == "openai-whisper":
        return _provision_openai(source, cache, dtype)
    if fmt == "transformers":
        return _provision_transformers(source, cache, dtype)
    raise ValueError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")


def resolve_source(spec: str, cache: Path) -> ModelSource:
    if "://" in spec:
        return _local_source(fetch_url(spec, cache), key=f"url-{short_hash(spec)}")
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(path, key=f"{path.name}-{short_hash(str(path.resolve()))}")
    if spec in known_names() or any(native_path(cache, fmt, spec).exists() for fmt in FORMATS):
        return ModelSource("name", spec, spec)
    if spec.startswith("distil-") and "/" not in spec:  # profiles name distilled models without the hub org
        spec = f"distil-whisper/{spec}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return ModelSource("hf-id", spec, spec.replace("/", "--"))
    raise ModelUnavailableError(
        f"unknown model {spec!r}: not a local path, an imported name, a Hugging Face id or one of "
        f"{', '.join(known_names())}"
    )


def local_ct2_dir(source: ModelSource, cache: Path) -> Path | None:
    """A CTranslate2 directory for the source without any download (cache, then installed packages)."""
    if source.kind == "ct2-dir":
        return Path(source.value)
    if source.kind != "name":
        return None
    cached = native_path(cache, "ctranslate2", source.value)
    if cached.is_dir():
        return cached
    problems = []
    for bundle in installed_bundles(source.value):
        try:
            return bundled_ct2_dir(bundle, cached)
        except ModelUnavailableError as error:
            problems.append(str(error))
    if problems:
        raise ModelUnavailableError("; ".join(problems))
    return None


def import_model(src: str | Path, name: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Copy a CT2 directory (or installed package holding one), transformers directory or
    openai-whisper .pt into the cache under `name`, so that `name` works as a spec offline."""
    cache = model_cache_dir(cache_dir)
    path = Path(src).expanduser()
    if not path.exists() and importlib.util.find_spec(str(src)):
        path = package_ct2_dir(str(src))
    if path.is_file():
        target = native_path(cache, "openai-whisper", name or path.stem)
        with atomic_path(target) as staging:
            shutil.copyfile(path, staging)
        return target
    if is_ct2_dir(path):
        read_model_bin(path / "model.bin")  # refuse truncated or foreign files before caching them
        missing = [f for f in CT2_AUX_FILES if not (path / f).is_file()]
        if missing:
            raise ModelUnavailableError(f"{path} is missing {', '.join(missing)}")
        fmt: Format = "ctranslate2"
    elif (path / "config.json").is_file():
        fmt = "transformers"
    else:
        raise ModelUnavailableError(
            f"{src} is neither a CTranslate2 dir (model.bin), a transformers dir (config.json), "
            "an openai-whisper .pt file nor an installed package holding model.bin"
        )
    target = native_path(cache, fmt, name or path.name)
    with atomic_path(target) as staging:
        shutil.copytree(path, staging)
    return target


def alignment_heads(spec: str, cache_dir: str | Path | None = None) -> list[tuple[int, int]]:
    """(decoder layer, head) pairs whose cross-attention follows the audio, for word timestamps."""
    cache = model_cache_dir(cache_dir)
    source = resolve_source(spec, cache)
    ct2_dir = local_ct2_dir(source, cache)
    if ct2_dir is not None:
        heads = read_config(ct2_dir)["alignment_heads"]
    elif (hf_dir := _local_hf_dir(source, cache)) is not None:
        heads = json.loads((hf_dir / "generation_config.json").read_text())["alignment_heads"]
    elif source.kind == "name" and source.value in openai_alignment_dumps():
        heads = decode_openai_heads(source.value)
    else:
        heads = checkpoint_heads(provision(spec, "openai-whisper", cache))
    return [(int(layer), int(head)) for layer, head in heads]


def load_openai_whisper(spec_or_path: str | Path, device: str = "cpu", cache_dir: str | Path | None = None):
    """An openai-whisper model with the alignment heads its checkpoint names.

    whisper.load_model on a path would fall back to the last-half-of-layers heads.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    path = provision(str(spec_or_path), "openai-whisper", cache_dir)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    if checkpoint.get("alignment_heads"):
        set_alignment_heads(model, checkpoint["alignment_heads"])
    return model.to(device)


def _provision_ctranslate2(source: ModelSource, cache: Path) -> Path:
    local = local_ct2_dir(source, cache)
    if local is not None:
        return local
    if source.kind == "openai-file":
        raise ModelUnavailableError(
            f"{source.value}: no converter from an openai-whisper .pt to CTranslate2; "
            "pass a CTranslate2 or transformers directory instead"
        )
    target = cache / "ctranslate2" / f"{source.key}-float16"
    if target.is_dir():
        return target
    hf_dir = _provision_transformers(source, cache, "float32")
    from ctranslate2.converters import TransformersConverter

    with atomic_path(target) as staging:
        TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
            str(staging), quantization="float16"
        )
    return target


def _provision_openai(source: ModelSource, cache: Path, dtype: ExportDtype) -> Path:
    if source.kind == "openai-file":
        return Path(source.value)
    if source.kind == "name" and (native := native_path(cache, "openai-whisper", source.value)).is_file():
        return native
    target = cache / "openai-whisper" / f"{source.key}-{dtype}.pt"
    if target.is_file():
        return target
    if (ct2_dir := local_ct2_dir(source, cache)) is not None:
        with atomic_path(target) as staging:
            export_openai_whisper(ct2_dir, staging, dtype)
        return target
    if (hf_dir := _local_hf_dir(source, cache)) is not None or source.kind == "hf-id":
        hf_dir = hf_dir or _provision_transformers(source, cache, dtype)
        with atomic_path(target) as staging:
            export_openai_whisper_from_transformers(hf_dir, staging, dtype)
        return target
    return download_openai(source.value, cache)


def _provision_transformers(source: ModelSource, cache: Path, dtype: ExportDtype) -> Path:
    local = _local_hf_dir(source, cache)
    if local is not None:
        return local
    if source.kind == "openai-file":
        raise ModelUnavailableError(
            f"{source.value}: an openai-whisper .pt has no tokenizer files to build a transformers "
            "directory from; pass a CTranslate2 or transformers directory instead"
        )
    target = cache / "transformers" / f"{source.key}-{dtype}"
    if target.is_dir():
        return target
    if (ct2_dir := local_ct2_dir(source, cache)) is not None:
        with atomic_path(target) as staging:
            export_transformers(ct2_dir, staging, dtype)
        return target
    if source.kind == "hf-id":
        return download_hf(source.value, native_path(cache, "transformers", source.key), source.value)
    require_known_name(source.value)
    repo_id = HF_REPO_OF_NAME.get(source.value, f"openai/whisper-{source.value}")
    return download_hf(repo_id, native_path(cache, "transformers", source.value), source.value)


def _local_source(path: Path, key: str) -> ModelSource:
    if path.is_file():
        return ModelSource("openai-file", str(path), key)
    if is_ct2_dir(path):
        return ModelSource("ct2-dir", str(path), key)
    if (path / "config.json").is_file():
        return ModelSource("hf-dir", str(path), key)
    raise ModelUnavailableError(
        f"{path} is neither a CTranslate2 dir (model.bin), a transformers dir (config.json) nor a file"
    )


def _local_hf_dir(source: ModelSource, cache: Path) -> Path | None:
    if source.kind == "hf-dir":
        return Path(source.value)
    if source.kind in ("name", "hf-id"):
        native = native_path(cache, "transformers", source.key)
        return native if native.is_dir() else None
    return None
