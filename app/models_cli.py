"""`steadyscribe models ...` sub-commands: list, import, path."""

from __future__ import annotations

import argparse
import re
import sys

from steadyscribe.models import ModelUnavailableError
from steadyscribe.models.bundled import installed_bundles
from steadyscribe.models.cache import FORMATS, model_cache_dir
from steadyscribe.models.download import known_names
from steadyscribe.models.provision import import_model, provision


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` command group to the top-level CLI's sub-parsers."""
    models = subparsers.add_parser("models", help="list, import and locate Whisper models")
    models.add_argument("--cache-dir", default=None, help="model cache (default: $STEADYSCRIBE_MODEL_CACHE or user cache)")
    commands = models.add_subparsers(dest="models_command", required=True)

    listing = commands.add_parser("list", help="known models and where each is available from")
    listing.set_defaults(func=cmd_models_list)

    importing = commands.add_parser("import", help="copy a local model into the cache under a name")
    importing.add_argument("src", help="CTranslate2 dir, transformers dir, openai-whisper .pt, or package module name")
    importing.add_argument("--name", default=None, help="name to use as a model spec (default: the source's name)")
    importing.set_defaults(func=cmd_models_import)

    path = commands.add_parser("path", help="provision a model and print its local path")
    path.add_argument("spec", help="model name, Hugging Face id, local path or URL")
    path.add_argument("--format", choices=FORMATS, default="ctranslate2")
    path.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    path.set_defaults(func=cmd_models_path)


def cmd_models_list(args: argparse.Namespace) -> int:
    cache = model_cache_dir(args.cache_dir)
    # Imported or downloaded models; conversions carry a "-float32"/"-float16" suffix.
    imported = {
        entry.name.removesuffix(".pt")
        for fmt in FORMATS
        if (cache / fmt).is_dir()
        for entry in (cache / fmt).iterdir()
        if not entry.name.startswith(".") and not re.search(r"-float(16|32)(\.pt)?$", entry.name)
    }
    print(f"model cache: {cache}")
    print("name\tcache\tinstalled package\tdownload")
    for name in known_names() + sorted(imported - set(known_names())):
        cached = [
            fmt
            for fmt in FORMATS
            if (cache / fmt / name).exists()
            or (cache / fmt / f"{name}.pt").exists()
            or any((cache / fmt).glob(f"{name}-float*"))
        ]
        packages = [" + ".join(bundle.distributions) for bundle in installed_bundles(name)]
        download = "yes" if name in known_names() else "no"
        print(f"{name}\t{','.join(cached) or '-'}\t{'; '.join(packages) or '-'}\t{download}")
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    try:
        print(import_model(args.src, args.name, args.cache_dir))
    except ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_models_path(args: argparse.Namespace) -> int:
    try:
        print(provision(args.spec, args.format, args.cache_dir, args.dtype))
    except ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
