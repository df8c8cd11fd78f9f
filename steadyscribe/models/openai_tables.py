"""openai-whisper's tables of named models (download URLs, alignment heads), read without importing it.

`import whisper` imports torch (~300 MiB, seconds), and the CTranslate2 path needs only these
two dictionaries, which whisper/__init__.py holds as literals: they are read from its source.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path


@cache
def openai_whisper_table(name: str) -> dict:
    """The literal dictionary `name` (`_MODELS`, `_ALIGNMENT_HEADS`) of the installed openai-whisper."""
    spec = importlib.util.find_spec("whisper")  # finds the package without running it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("openai-whisper is not installed")
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"openai-whisper ({spec.origin}) has no literal {name}")
