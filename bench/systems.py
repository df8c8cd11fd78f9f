"""The systems under test and how each transcribes a list of files (run inside bench.worker).

Every system gets the same weights: `provision` produces the openai-whisper, transformers and
CTranslate2 formats from one checkpoint. Every system decodes audio with the same decoder
(steadyscribe's PyAV stage), inside its timed span. Heavy libraries are imported only by the
runners, so the parent process reads this registry cheaply.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SAMPLE_RATE

Words = list[dict]  # {"word", "start", "end"}


@dataclass(frozen=True)
class System:
    name: str
    label: str  # how tables and plots name it
    runner: str  # class in this module
    options: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # modules; a system missing one is skipped
    quick: bool = False  # part of --quick

    def missing(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


SYSTEMS = [
    System("steadyscribe-whisper", "steadyscribe whisper b1", "SteadyscribeRunner",
           {"profile": "cpu-small", "engine": "whisper"}, ("whisper", "steadyscribe.engines.whisper_batch1"), quick=True),
    System("steadyscribe-ctranslate2", "steadyscribe ctranslate2 int8", "SteadyscribeRunner",
           {"profile": "cpu-fast", "engine": "ctranslate2"}, ("ctranslate2", "steadyscribe.engines.ctranslate2_engine"),
           quick=True),
    System("steadyscribe-transformers", "steadyscribe transformers", "SteadyscribeRunner",
           {"profile": "cpu-batched", "engine": "transformers"},
           ("transformers", "steadyscribe.engines.transformers_engine"), quick=True),
    System("openai-whisper", "openai-whisper transcribe", "OpenAIWhisperRunner", {}, ("whisper",), quick=True),
    System("hf-pipeline", "transformers pipeline b24", "HFPipelineRunner",
           {"chunk_length_s": 30, "batch_size": 24}, ("transformers",)),
    System("faster-whisper", "faster-whisper int8", "FasterWhisperRunner",
           {"compute_type": "int8", "batched": False}, ("faster_whisper", "ctranslate2")),
    System("faster-whisper-batched", "faster-whisper batched int8", "FasterWhisperRunner",
           {"compute_type": "int8", "batched": True, "batch_size": 8}, ("faster_whisper", "ctranslate2"), quick=True),
    # stable-ts imports torchaudio at import time; without torchaudio it runs on bench/standins.
    System("stable-ts", "stable-ts", "StableTsRunner", {}, ("stable_whisper",)),
]
SYSTEMS_BY_NAME = {system.name: system for system in SYSTEMS}


def read_audio(path: Path, work_dir: str) -> np.ndarray:
    """16 kHz mono float32 samples, through steadyscribe's decode stage (the same for every system)."""
    from steadyscribe.records import InputFile
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input

    decoded = decode_input(InputFile(str(path)), work_dir)
    if decoded.status != "ok":
        raise RuntimeError(decoded.error)
    return np.array(load_pcm(decoded.pcm_path))


class Runner:
    """Loads a model once, then transcribes parts of the set.

    `prepare` imports the libraries (and plans), so that the timed `load` builds the model alone.
    `transcribe` returns, per file name, {"words": Words} and, for systems with a separate
    timestamp stabilization stage, "raw_words" (the engine's words before it).
    `settings` describes the decoding setup for the report.
    """

    imports: tuple[str, ...] = ()
    settings: dict[str, Any]

    def __init__(self, model: str, threads: int, options: dict[str, Any]):
        self.model_spec = model
        self.threads = threads
        self.options = options
        self.work_dir = tempfile.mkdtemp(prefix="steadyscribe-bench-")

    def prepare(self) -> None:
        # Every system decodes with steadyscribe's decode stage (and so imports Prefect) in its timed span.
        for module in ("steadyscribe.tasks.decode", *self.imports):
            importlib.import_module(module)

    def load(self) -> None:
        raise NotImplementedError

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        raise NotImplementedError


class SteadyscribeRunner(Runner):
    """The pipeline's stages as the flow runs them: decode -> chunk -> infer -> stabilize.

    The plan comes from the profile's own selection, with the engine and model fixed.
    """

    imports = ("steadyscribe.tasks.chunk", "steadyscribe.tasks.infer", "steadyscribe.tasks.stabilize")

    def prepare(self) -> None:
        super().prepare()
        from steadyscribe.engines import ENGINES
        from steadyscribe.models.cache import model_cache_dir
        from steadyscribe.profiles import load_profile, validate_profile_data
        from steadyscribe.tasks.probe import probe_resources
        from steadyscribe.tasks.select import select_plan

        profile = load_profile(self.options["profile"])
        self.profile = validate_profile_data({**profile.model_dump(), "model": [self.model_spec]}, source="bench")
        probe = probe_resources([str(model_cache_dir())])
        # An explicit batch size (bench.batching) is a run's override, as `--batch-size` would be.
        overrides = {"batch_size": self.options["batch_size"]} if "batch_size" in self.options else None
        self.plan = select_plan(self.profile, probe, {self.options["engine"]}, overrides)
        importlib.import_module(ENGINES[self.plan.engine].module)

    def load(self) -> None:
        from steadyscribe.engines import load_engine

        self.engine = load_engine(self.plan)
        self.settings = {
            "profile": self.profile.name,
            "engine": self.plan.engine,
            "batch_size": self.plan.batch_size,
            "dtype": self.plan.dtype,
            "quantization": self.plan.quantization,
            "threads": self.plan.threads,
            "decoding": "greedy, temperature fallback",
            "predicted_peak_bytes": self.plan.estimated_peak_bytes,
        }
        self.stabilize_s = 0.0

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        from steadyscribe.records import InputFile, Transcript
        from steadyscribe.tasks.chunk import plan_windows
        from steadyscribe.pcm import load_pcm
        from steadyscribe.tasks.decode import decode_input
        from steadyscribe.inference import transcribe_files
        from steadyscribe.tasks.stabilize import options_from_profile, stabilize

        decoded = {}
        name_of = {}
        for name, path in paths.items():
            item = decode_input(InputFile(str(path)), self.work_dir)
            if item.status != "ok":
                raise RuntimeError(item.error)
            decoded[item.file_id] = item
            name_of[item.file_id] = name
        windows = {
            file_id: plan_windows(load_pcm(item.pcm_path), file_id, max_window_s=self.plan.chunk_s,
                                  min_pause_s=self.profile.chunking.min_pause_s)
            for file_id, item in decoded.items()
        }
        inference = transcribe_files(
            self.engine, decoded, [w for file_windows in windows.values() for w in file_windows], self.work_dir
        )
        options = options_from_profile(self.profile.stabilization)
        outputs = {}
        for file_id, result in inference.items():
            raw = Transcript.load(result.transcript_path)
            started = time.perf_counter()
            stable = stabilize(raw, load_pcm(decoded[file_id].pcm_path), options, windows[file_id])
            self.stabilize_s += time.perf_counter() - started
            outputs[name_of[file_id]] = {"words": _words_of(stable.words), "raw_words": _words_of(raw.words)}
        return outputs


class OpenAIWhisperRunner(Runner):
    """openai-whisper's own `transcribe` with word timestamps, at its defaults (greedy, batch 1)."""

    imports = ("torch", "whisper")

    def load(self) -> None:
        import torch

        from steadyscribe.models.provision import load_openai_whisper

        torch.set_num_threads(self.threads)
        self.model = load_openai_whisper(self.model_spec)
        self.settings = {"batch_size": 1, "dtype": "float32", "threads": self.threads,
                         "decoding": "transcribe() defaults: greedy, temperature fallback, conditioned on previous text"}

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        outputs = {}
        for name, path in paths.items():
            result = self.model.transcribe(
                read_audio(path, self.work_dir), word_timestamps=True, fp16=False, verbose=None
            )
            words = [w for segment in result["segments"] for w in segment.get("words", [])]
            outputs[name] = {"words": [_word(w["word"], w["start"], w["end"]) for w in words]}
        return outputs


class HFPipelineRunner(Runner):
    """transformers' ASR pipeline: 30 s chunks (with its default stride), batched, word timestamps."""

    imports = ("torch", "transformers.pipelines")

    def load(self) -> None:
        import torch
        from transformers import pipeline

        from steadyscribe.models.provision import provision

        torch.set_num_threads(self.threads)
        self.pipe = pipeline(
            "automatic-speech-recognition", model=str(provision(self.model_spec, "transformers")),
            device="cpu", dtype=torch.float32,
        )
        self.settings = {**self.options, "dtype": "float32", "threads": self.threads,
                         "decoding": "pipeline defaults: greedy, no fallback"}

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        audio = {name: read_audio(path, self.work_dir) for name, path in paths.items()}
        if self.options.get("per_file"):
            # One call per file, as a user transcribing a folder file by file would: batches
            # hold only that file's chunks.
            results = [
                self.pipe({"raw": samples, "sampling_rate": SAMPLE_RATE},
                          chunk_length_s=self.options["chunk_length_s"], batch_size=self.options["batch_size"],
                          return_timestamps="word")
                for samples in audio.values()
            ]
        else:
            # One call for the whole part, so chunks of different files share batches.
            results = self.pipe(
                [{"raw": samples, "sampling_rate": SAMPLE_RATE} for samples in audio.values()],
                chunk_length_s=self.options["chunk_length_s"],
                batch_size=self.options["batch_size"],
                return_timestamps="word",
            )
        outputs = {}
        for (name, samples), result in zip(audio.items(), results):
            duration = len(samples) / SAMPLE_RATE
            # The last word of a file may come without an end time.
            words = [_word(c["text"], c["timestamp"][0], c["timestamp"][1] or duration) for c in result["chunks"]]
            outputs[name] = {"words": words}
        return outputs


class FasterWhisperRunner(Runner):
    """faster-whisper on the same CTranslate2 checkpoint: sequential `transcribe` or the batched pipeline.

    The batched pipeline cuts audio at speech found by its Silero VAD, which needs onnxruntime;
    without it the audio is cut every 30 s (noted in the settings).
    """

    imports = ("faster_whisper",)

    def load(self) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from steadyscribe.models.provision import provision

        self.model = WhisperModel(
            str(provision(self.model_spec, "ctranslate2")), device="cpu",
            compute_type=self.options["compute_type"], cpu_threads=self.threads,
        )
        self.batched = BatchedInferencePipeline(self.model) if self.options["batched"] else None
        # transcribe()'s own default is beam 5; a beam of 1 matches steadyscribe's greedy decoding.
        self.beam_size = self.options.get("beam_size", 5)
        self.settings = {"compute_type": self.options["compute_type"], "threads": self.threads,
                         "decoding": f"beam {self.beam_size}, temperature fallback"}
        if self.batched:
            self.has_vad = importlib.util.find_spec("onnxruntime") is not None
            self.settings.update(batch_size=self.options["batch_size"],
                                 segmentation="Silero VAD" if self.has_vad else "fixed 30 s (no onnxruntime for VAD)")

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        outputs = {}
        for name, path in paths.items():
            audio = read_audio(path, self.work_dir)
            if self.batched is None:
                segments, _ = self.model.transcribe(audio, beam_size=self.beam_size, word_timestamps=True)
            elif self.has_vad:
                segments, _ = self.batched.transcribe(
                    audio, batch_size=self.options["batch_size"], beam_size=self.beam_size, word_timestamps=True
                )
            else:
                duration = len(audio) / SAMPLE_RATE
                clips = [{"start": t, "end": min(t + 30.0, duration)} for t in np.arange(0.0, duration, 30.0)]
                segments, _ = self.batched.transcribe(
                    audio, batch_size=self.options["batch_size"], beam_size=self.beam_size, word_timestamps=True,
                    clip_timestamps=clips,
                )
            # segments is a generator: decoding happens while it is consumed, inside the timed span.
            outputs[name] = {"words": [_word(w.word, w.start, w.end) for s in segments for w in s.words or []]}
        return outputs


class StableTsRunner(Runner):
    """stable-ts on the openai-whisper model, at its defaults (silence suppression, regrouping)."""

    imports = ("torch", "stable_whisper")

    def prepare(self) -> None:
        if importlib.util.find_spec("torchaudio") is None:
            sys.path.insert(0, str(Path(__file__).parent / "standins"))
        super().prepare()

    def load(self) -> None:
        import stable_whisper
        import torch

        from steadyscribe.models.provision import load_openai_whisper

        torch.set_num_threads(self.threads)
        self.model = load_openai_whisper(self.model_spec)
        stable_whisper.modify_model(self.model)
        self.settings = {"batch_size": 1, "dtype": "float32", "threads": self.threads,
                         "decoding": "transcribe() defaults"}

    def transcribe(self, paths: dict[str, Path]) -> dict[str, dict[str, Words]]:
        outputs = {}
        for name, path in paths.items():
            result = self.model.transcribe(read_audio(path, self.work_dir), fp16=False, verbose=None)
            outputs[name] = {"words": [_word(w.word, w.start, w.end) for w in result.all_words()]}
        return outputs


def _word(text: str, start: float, end: float) -> dict:
    return {"word": text.strip(), "start": float(start), "end": float(end)}


def _words_of(words) -> Words:
    return [_word(w.word, w.start, w.end) for w in words]
