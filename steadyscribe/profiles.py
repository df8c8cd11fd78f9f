"""Run profiles: typed, validated YAML that says what a user wants to run.

A profile names preferences (engines, models, precisions, batch size, a memory budget);
the selection stage (tasks/select.py) turns one into a concrete Plan for the probed machine.

Lookup of a name: $STEADYSCRIBE_PROFILES_DIR/NAME.yaml, then the shipped profiles/NAME.yaml;
anything that looks like a path is read as a file. `extends: NAME` deep-merges the file over
its parent (mappings merge key by key; lists and scalars replace). A relative path in `extends`
or `candidates` is taken from the folder of the file that holds it, not the current directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator, model_validator

from steadyscribe.engines.registry import ENGINES
from steadyscribe.memory import ARCHITECTURES, ALIASES, architecture, is_english_only
from steadyscribe.records import DecodingOptions
from steadyscribe.vad import VadThresholds

# The repository's profiles/ folder, installed as the data package steadyscribe.profile_files.
SHIPPED_DIR = Path(importlib.util.find_spec("steadyscribe.profile_files").submodule_search_locations[0])
USER_DIR_ENV = "STEADYSCRIBE_PROFILES_DIR"
DEFAULT_PROFILE = "cpu-small"

EngineName = Literal[tuple(ENGINES)]  # one per engine record (steadyscribe.engines.registry)
Quantization = Literal["none", "int8", "nf4", "dynamic-int8"]
Sidecar = Literal["srt", "vtt", "json"]


class ProfileError(ValueError):
    """A profile (or a command-line override) that cannot be used; says where and why."""


# ---------------------------------------------------------------- memory sizes and budgets

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
SIZE_HELP = "a size such as '2GiB', '512MiB', '1.5GB' or a number of bytes"
BUDGET_HELP = f"{SIZE_HELP}, or a share of free memory such as '60%' (above 0, at most 100)"


@dataclass(frozen=True)
class MemoryBudget:
    """Either a fixed number of bytes or a share of the memory that is free when the run starts."""

    bytes: int | None = None
    share: float | None = None  # 0 < share <= 1

    def resolve(self, free_bytes: int) -> int:
        return self.bytes if self.bytes is not None else int(free_bytes * self.share)

    def describe(self) -> str:
        return f"{self.share * 100:g}% of free" if self.share is not None else format_bytes(self.bytes)


def parse_size(text: str | int) -> int:
    """Bytes in '2GiB', '512MiB', '1.5GB', '1000' (units are case-insensitive)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match or match[2].lower() not in _UNITS or float(match[1]) <= 0:
        raise ValueError(f"expected {SIZE_HELP}")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def parse_memory_budget(text: str | int) -> MemoryBudget:
    """'60%' → a share of free memory; '2GiB' → fixed bytes."""
    share = _SHARE.match(text) if isinstance(text, str) else None
    if share:
        percent = float(share[1])
        if not 0 < percent <= 100:
            raise ValueError(f"expected {BUDGET_HELP}")
        return MemoryBudget(share=percent / 100)
    try:
        return MemoryBudget(bytes=parse_size(text))
    except ValueError:
        raise ValueError(f"expected {BUDGET_HELP}") from None


def format_bytes(n: int | float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------- schema


def _kept_as_text(parse):
    """Validate with `parse` but keep what the user wrote, so `profiles show` prints it back."""

    def check(value: Any) -> str:
        parse(value)
        return str(value)

    return check


def _count_or_auto(what: str):
    def check(value: Any) -> int | Literal["auto"]:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"expected {what} (a whole number, 1 or more) or 'auto'")

    return check


def _known_model(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a model name")
    try:
        architecture(value)
    except KeyError:
        known = ", ".join(sorted({*ARCHITECTURES, *ALIASES}))
        raise ValueError(f"unknown model; expected one of: {known} (or a hub id like openai/whisper-small)") from None
    return value


def _as_list(value: Any) -> Any:
    """A single preference is a one-item preference list."""
    return [value] if isinstance(value, str) else value


BatchSize = Annotated[int | Literal["auto"], PlainValidator(_count_or_auto("a batch size"))]
Threads = Annotated[int | Literal["auto"], PlainValidator(_count_or_auto("a thread count"))]
BudgetText = Annotated[str, PlainValidator(_kept_as_text(parse_memory_budget))]
SizeText = Annotated[str, PlainValidator(_kept_as_text(parse_size))]
ModelName = Annotated[str, PlainValidator(_known_model)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Chunking(_Strict):
    max_window_s: float = Field(30.0, gt=0, le=30)  # Whisper sees 30 s at most
    min_pause_s: float = Field(0.3, ge=0)
    # Short files share 30-second windows, `pack_gap_s` of silence apart (steadyscribe/engines/packing.py). Only
    # where the language is known before decoding (English-only model, or `decoding.language`).
    # Off: on tiny.en it costs 1.6-3.4 WER points on unrelated real-speech clips (docs/benchmark.md).
    pack_files: bool = False
    pack_gap_s: float = Field(0.75, gt=0, le=10)


class Stabilization(_Strict):
    """Word-timestamp stabilization (tasks/stabilize.py); unset values keep the stage's tuned defaults."""

    enabled: bool = True
    min_word_s: float | None = Field(None, ge=0)
    dtw_lag_s: float | None = Field(None, ge=-0.5, le=0.5)
    drop_hallucinations: bool = True
    no_speech_threshold: float | None = Field(None, ge=0, le=1)
    min_word_probability: float | None = Field(None, ge=0, le=1)
    logprob_threshold: float | None = Field(None, le=0)
    max_drop_share: float | None = Field(None, ge=0, le=1)
    split_pause_s: float | None = Field(None, gt=0)


class Audio(_Strict):
    """How an input's channels are transcribed (tasks/channels.py).

    mix: down-mixed to mono, one transcript per file. split: each channel transcribed on its own,
    its rows tagged with `channel` and `speaker` (the name at the channel's position in `speakers`,
    else ch0, ch1, ...); a silent channel or a copy of another is detected and not transcribed.
    """

    channels: Literal["mix", "split"] = "mix"
    speakers: list[str] | None = None

    @field_validator("speakers")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not all(name.strip() for name in value) or len(set(value)) < len(value)):
            raise ValueError("expected distinct, non-empty speaker names, one per channel in order (e.g. [agent, customer])")
        return value


class Output(_Strict):
    sidecars: list[Sidecar] = Field(default_factory=list)
    row_group_size: int = Field(10_000, ge=1)


class Runner(_Strict):
    kind: Literal["threads", "dask"] = "threads"
    address: str | None = None  # an existing Dask scheduler; None starts a local cluster
    n_workers: int | None = Field(None, ge=1)
    # Files per group, the unit a worker transcribes and commits, at most; None: 16 or 4 batches, whichever
    # is more. Fewer on a cluster of several workers where each would otherwise get under two groups.
    files_per_group: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _dask_only_options(self) -> Runner:
        if self.kind != "dask" and (self.address is not None or self.n_workers is not None):
            raise ValueError("address and n_workers apply only to kind: dask")
        return self


class Profile(_Strict):
    name: str = ""  # set from the file name when loaded
    description: str = ""
    # Preference orders: selection takes the first that is available and fits the budget.
    engine: Annotated[list[EngineName], Field(min_length=1)] = ["whisper"]
    model: Annotated[list[ModelName], Field(min_length=1)] = ["tiny.en"]
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Annotated[list[Quantization], Field(min_length=1)] = ["none"]
    batch_size: BatchSize = "auto"
    memory_budget: BudgetText = "80%"
    decoding: DecodingOptions = Field(default_factory=DecodingOptions)
    audio: Audio = Field(default_factory=Audio)
    chunking: Chunking = Field(default_factory=Chunking)
    vad: VadThresholds = Field(default_factory=VadThresholds)  # speech detection (steadyscribe/vad.py)
    stabilization: Stabilization = Field(default_factory=Stabilization)
    output: Output = Field(default_factory=Output)
    model_cache_dir: str | None = None
    threads: Threads = "auto"
    runner: Runner = Field(default_factory=Runner)
    # Only for `auto`-style profiles: other profiles to try, best first; see tasks/select.py.
    candidates: list[str] = Field(default_factory=list)
    # A candidate is tried only when this much device memory is free (GPU memory for cuda).
    min_free_memory: SizeText | None = None

    @field_validator("engine", "model", "quantization", mode="before")
    @classmethod
    def _single_preference(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="before")
    @classmethod
    def _top_level_language(cls, data: Any) -> Any:
        return move_top_level_language(data) if isinstance(data, Mapping) else data

    @model_validator(mode="after")
    def _language_fits_a_model(self) -> Profile:
        need = self.decoding.multilingual_need()
        if need and all(is_english_only(m) for m in self.model):
            raise ValueError(f"{need} needs a multilingual model; {self.model} are English-only")
        return self

    @property
    def language(self) -> str | None:
        return self.decoding.language

    @property
    def budget(self) -> MemoryBudget:
        return parse_memory_budget(self.memory_budget)


def move_top_level_language(data: Mapping[str, Any]) -> dict[str, Any]:
    """Profiles written before `decoding:` set `language` at the top level; it means decoding.language.

    Applied to each file of an `extends` chain before merging, so a child's top-level language
    overrides its parent's decoding.language like any other key.
    """
    data = dict(data)
    if "language" not in data:
        return data
    language = data.pop("language")
    decoding = data.get("decoding") or {}
    if not isinstance(decoding, Mapping):
        return data  # the schema reports the bad decoding block
    if "language" in decoding and decoding["language"] != language:
        raise ProfileError(
            f"language {language!r} (top level) and decoding.language {decoding['language']!r} disagree; "
            "set decoding.language only"
        )
    data["decoding"] = {**decoding, "language": language}
    return data


# ---------------------------------------------------------------- loading


def profile_dirs() -> list[Path]:
    """Where names are looked up, first match wins."""
    user = os.environ.get(USER_DIR_ENV)
    return [*([Path(user).expanduser()] if user else []), SHIPPED_DIR]


def list_profiles() -> dict[str, Path]:
    """Every profile name that lookup can find, and the file it resolves to."""
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def resolve_profile(ref: str, *, skip: Path | None = None, relative_to: Path | None = None) -> Path:
    """The file for a profile name or path; `skip` lets a user profile extend the shipped one of its own name.

    A relative path is taken from `relative_to` (the folder of the profile that names it), else
    from the current directory.
    """
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            raise ProfileError(f"profile file {ref} does not exist")
        return path.resolve()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", ref):
        raise ProfileError(f"bad profile name {ref!r}: expected letters, digits, '-', '_' or '.'")
    for directory in profile_dirs():
        path = (directory / f"{ref}.yaml").resolve()
        if path.is_file() and path != skip:
            return path
    known = ", ".join(list_profiles()) or "none"
    raise ProfileError(f"no profile named {ref!r} in {', '.join(map(str, profile_dirs()))}; known: {known}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile keys at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _extends_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its ancestors, most derived first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    while True:
        if any(path == seen for seen, _ in chain):
            cycle = " -> ".join(str(p) for p, _ in chain) + f" -> {path}"
            raise ProfileError(f"{chain[0][0]}: extends cycle: {cycle}")
        try:
            data = move_top_level_language(_read_yaml(path))
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from None
        chain.append((path, data))
        parent = data.pop("extends", None)
        if parent is None:
            return chain
        if not isinstance(parent, str):
            raise ProfileError(f"{path}: extends: {parent!r} is not allowed; expected one profile name or path")
        try:
            path = resolve_profile(parent, skip=path, relative_to=path.parent)
        except ProfileError as exc:
            raise ProfileError(f"{path}: extends: {exc}") from None


def load_profile(ref: str | Path = DEFAULT_PROFILE) -> Profile:
    """Load, merge (`extends`) and validate a profile by name or path; raises ProfileError."""
    path = resolve_profile(str(ref))
    chain = _extends_chain(path)
    merged: dict[str, Any] = {}
    for _, data in reversed(chain):
        merged = deep_merge(merged, data)
    merged.setdefault("name", path.stem)
    profile = validate_profile_data(merged, chain)
    # Candidates given as relative paths are taken from the folder of the file that lists them.
    listed_in = next((file.parent for file, data in chain if "candidates" in data), path.parent)
    candidates = [str(resolve_profile(c, relative_to=listed_in)) if _looks_like_path(c) else c for c in profile.candidates]
    profile = profile.model_copy(update={"candidates": candidates})
    for candidate in profile.candidates:  # fail now, not when the candidate is reached
        if load_profile(candidate).candidates:
            raise ProfileError(f"{path}: candidates: {candidate!r} has candidates itself; list plain profiles")
    return profile


def validate_profile_data(data: Mapping[str, Any], chain: list[tuple[Path, dict[str, Any]]] | None = None,
                          source: str = "profile") -> Profile:
    """Validate merged profile data; errors name the file that set each bad key."""
    try:
        return Profile.model_validate(dict(data))
    except ValidationError as exc:
        lines = [_describe_error(error, chain or [], source) for error in exc.errors()]
        raise ProfileError("invalid profile:\n  " + "\n  ".join(lines)) from None


# One run's overrides (command line, flow and deployment parameters) → where they go in a profile.
OVERRIDE_KEYS = {
    "memory_budget": ("memory_budget",),
    "batch_size": ("batch_size",),
    "model": ("model",),
    "beam_size": ("decoding", "beam_size"),
    "language": ("decoding", "language"),
    "initial_prompt": ("decoding", "initial_prompt"),
    "channels": ("audio", "channels"),
}


def run_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides (OVERRIDE_KEYS) among a run's command-line arguments or flow parameters."""
    return {name: values.get(name) for name in OVERRIDE_KEYS}


def apply_overrides(profile: Profile, overrides: Mapping[str, Any] | None) -> Profile:
    """One run's overrides (OVERRIDE_KEYS; None: unset), validated like profile keys."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if unknown := set(given) - set(OVERRIDE_KEYS):
        raise ProfileError(
            f"command-line overrides: {sorted(unknown)} cannot be overridden; allowed: {sorted(OVERRIDE_KEYS)}"
        )
    if not given:
        return profile
    data = profile.model_dump()
    for name, value in given.items():
        *parents, key = OVERRIDE_KEYS[name]
        node = data
        for parent in parents:
            node = node[parent]
        node[key] = value
    return validate_profile_data(data, source="command-line override")


def profile_yaml(profile: Profile) -> str:
    return yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- error messages


def _key_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _defined_in(chain: list[tuple[Path, dict[str, Any]]], loc: tuple[Any, ...]) -> str | None:
    """The most derived file in the chain that sets the key at `loc`."""
    keys = [part for part in loc if isinstance(part, str)]
    for path, data in chain:
        node: Any = data
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return str(path)
    return str(chain[0][0]) if chain else None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Profile
    for key in loc:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _describe_error(error: Mapping[str, Any], chain: list[tuple[Path, dict[str, Any]]], source: str) -> str:
    loc = tuple(error["loc"])
    where = _defined_in(chain, loc) or source
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = ", ".join(parent.model_fields) if parent else "see docs"
        return f"{where}: {_key_path(loc)}: unknown key; allowed keys here: {known}"
    if error["type"] == "missing":
        return f"{where}: {_key_path(loc)}: required key is missing"
    allowed = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    value = "" if isinstance(error["input"], Mapping) else f"{error['input']!r} is not allowed; "
    return f"{where}: {_key_path(loc) or '(top level)'}: {value}{allowed}"
