"""Small records passed between pipeline stages.

Stages exchange these (and file paths), never audio arrays: audio lives in
per-run PCM files on local disk and is memory-mapped where it is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

Status = Literal["ok", "failed", "skipped", "duplicate"]


@dataclass(frozen=True)
class InputFile:
    """One discovered input: a local path or an fsspec URL."""

    source: str
    size: int | None = None


@dataclass(frozen=True)
class PassedOver:
    """Entries that discovery found and left out, for one reason: how many, and the first few names."""

    reason: str
    count: int
    first: tuple[str, ...]


@dataclass
class DecodedAudio:
    """Result of decoding one input to 16 kHz mono float32 PCM on local disk."""

    source: str
    status: Status
    file_id: str | None = None  # sha256 of the input's bytes
    pcm_path: str | None = None  # raw little-endian float32 samples (the mono mix)
    # audio.channels: split: one such file per channel instead of the mix (tasks/channels.py).
    channel_paths: list[str] = field(default_factory=list)
    duration_s: float | None = None  # None: not decoded (failed before its audio was measured, or skipped)
    decode_s: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. the input was truncated
    # status duplicate: the source, in this run, whose transcription this content has (steadyscribe/claims.py).
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Window:
    """A span of one file's audio (seconds) that an engine decodes as one unit (at most 30 s)."""

    file_id: str
    index: int
    start: float
    end: float


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    channel: int = 0  # the input channel it was heard on (0 when the channels were mixed)
    speaker: str | None = None  # the channel's speaker name (None when the channels were mixed)


@dataclass
class StabilizationCounts:
    """What the stages after inference counted in one transcript, or in all of a run's (a sum).

    None: not counted in this mode.
    """

    words_moved: int = 0
    words_dropped: int = 0  # removed as hallucinations (tasks/stabilize.py)
    segments_dropped: int = 0
    segments_split: int = 0  # extra segments from splitting at long pauses
    skipped_ms: int = 0  # audio not transcribed: confidently silent, or a silent or copied channel
    speech_without_text_ms: int | None = None  # transcribe mode: VAD speech left without words (engines/speech_gaps.py)
    text_words: int | None = None  # align mode: the text's words
    words_aligned: int | None = None  # align mode: those aligned with confidence

    def __add__(self, other: StabilizationCounts) -> StabilizationCounts:
        def add(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else a + b

        return StabilizationCounts(**{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


@dataclass
class Transcript:
    """All segments of one file, with absolute times in seconds."""

    file_id: str
    language: str | None
    segments: list[Segment]
    batch_size: int | None = None  # batch size the engine finally ran with
    stabilization: StabilizationCounts = field(default_factory=StabilizationCounts)
    warnings: list[str] = field(default_factory=list)  # e.g. words the filter would drop were kept

    def save(self, path: str | Path) -> str:
        Path(path).write_text(json.dumps(asdict(self)))
        return str(path)

    @classmethod
    def load(cls, path: str | Path) -> Transcript:
        data = json.loads(Path(path).read_text())
        segments = [
            Segment(**{**s, "words": [Word(**w) for w in s["words"]]}) for s in data.pop("segments")
        ]
        return cls(segments=segments, stabilization=StabilizationCounts(**data.pop("stabilization")), **data)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


# openai-whisper's temperature schedule: greedy (or beam) first, then sampling when the text looks wrong.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _language_code(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[a-z]{2,3}", value):
        raise ValueError("expected a language code such as 'en' or 'de', or null to detect it")
    return value


class DecodingOptions(BaseModel):
    """How windows are decoded, the same for every engine: the profile's `decoding:` block, and a plan's.

    `initial_prompt` and `hotwords` prompt every window (a vocabulary keeps helping all through a
    file); with `condition_on_previous_text` the previous window's text follows them.
    None for `condition_on_previous_text` means the engine's default (on for the batch-1 engine,
    which decodes a file's windows in order; off for the batched engines).
    An option the chosen engine cannot honour is refused when the plan is made (tasks/select.py),
    since only then is the engine known.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    beam_size: int = Field(1, ge=1, le=16)
    # Beam search: stop after round(beam_size * patience) finished hypotheses.
    patience: float | None = Field(None, gt=0)
    best_of: int | None = Field(None, ge=1, le=16)  # samples drawn at each temperature above 0; the likeliest is kept
    temperatures: Annotated[tuple[Annotated[float, Field(ge=0, le=1)], ...], Field(min_length=1)] = DEFAULT_TEMPERATURES
    initial_prompt: str | None = None
    hotwords: tuple[str, ...] = ()
    # None: detected once per file (English-only models imply "en"); a plan's is resolved for its model.
    language: Annotated[str | None, PlainValidator(_language_code)] = None
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: into English, multilingual models only
    suppress_tokens: tuple[int, ...] = (-1,)  # -1: the model's own list of non-speech symbols
    condition_on_previous_text: bool | None = None

    @field_validator("temperatures", mode="before")
    @classmethod
    def _one_temperature(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("temperatures")
    @classmethod
    def _rising(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(value):
            raise ValueError("expected temperatures in rising order: each is tried when the one before fails")
        return value

    @field_validator("suppress_tokens")
    @classmethod
    def _token_ids(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(token < -1 for token in value):
            raise ValueError("expected token ids (0 or more), or -1 for the model's own list")
        return value

    @model_validator(mode="after")
    def _beam_options(self) -> DecodingOptions:
        if self.patience is not None and self.beam_size == 1:
            raise ValueError("patience applies to beam search only; set beam_size above 1")
        return self

    def options(self, language: str | None) -> DecodingOptions:
        """The options for one plan, with the language resolved for its model."""
        return self.model_copy(update={"language": language})

    def multilingual_need(self) -> str | None:
        """What of these options an English-only model cannot do ("language 'de'", "task translate"), or None."""
        if self.language not in (None, "en"):
            return f"language {self.language!r}"
        if self.task == "translate":
            return "task translate"
        return None


@dataclass
class Plan:
    """What the selection stage chose to run, and why."""

    engine: str  # a name in steadyscribe.engines.registry.ENGINES
    model: str  # model spec, resolved by steadyscribe.models.provision
    device: str = "cpu"
    dtype: str = "float32"
    quantization: str = "none"  # none | int8 | nf4 | dynamic-int8
    batch_size: int = 1
    chunk_s: float = 30.0
    threads: int = 1
    language: str | None = None
    memory_budget_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    profile: str = "cpu-small"
    model_cache_dir: str | None = None  # None: STEADYSCRIBE_MODEL_CACHE or the user cache
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data, its decoding options included (for the run summary)."""
        return {**asdict(self), "decoding": self.decoding.model_dump()}


@dataclass
class FileOutcome:
    """How one input ended, for the run summary."""

    source: str
    status: Status
    duration_s: float = 0.0
    error: str | None = None
    stabilization: StabilizationCounts = field(default_factory=StabilizationCounts)
    warnings: list[str] = field(default_factory=list)
    processing_s: float = 0.0  # decoding plus inference, for the summary's slowest files
