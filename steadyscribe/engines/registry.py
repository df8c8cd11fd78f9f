"""One record per engine: what it needs, what it can do, and what it costs in memory.

Selection (steadyscribe.tasks.select), the decoding-option checks (steadyscribe.engines.decoding),
alignment (steadyscribe.tasks.align) and the memory estimate (steadyscribe.memory) read these
records; adding an engine is its module plus one record here (docs/engines.md, "Adding an engine").
Nothing here imports an engine's runtime: the flow's process reads the records without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

MiB = 1024**2

# How an engine runs a quantization: with its own kernels on any device, with its own kernels on
# the CPU only, or through bitsandbytes (whose kernels the probe tests on each device).
QuantizationKernels = Literal["native", "native-cpu", "bitsandbytes"]


@dataclass(frozen=True)
class EngineCalibration:
    """An engine's memory model and the constants fitted for it (steadyscribe.memory.estimate_peak_bytes).

    The constants come from docs/memory-calibration.md (CPU, fp32; `bench/measure_memory.py --fit`).
    The shape fields say which tensors a batch keeps alive (steadyscribe.memory.Architecture.batch_elements).
    """

    runtime_bytes: int  # process RSS once the engine's libraries are imported
    load_copy_factor: float  # transient copy while loading, as a share of the weights' bytes
    weight_factor: float  # decoding memory that grows with the weights, as a share of them
    activation_factor: float  # measured per-window bytes / analytic per-window bytes
    decode_fixed_bytes: int = 0  # decoding memory that grows with neither the weights nor the batch
    # The encoder holds one layer's attention maps (eager attention); False where SDPA never materializes them.
    attention_maps: bool = True
    # What word alignment keeps alive per window beyond decoding: "logits" (the decoder rerun over every
    # token, full-vocabulary logits and cross-attention maps), "queries-keys" (a teacher-forced pass that
    # keeps the alignment layers' cross-attention queries and keys) or "none" (within the decoding's).
    alignment: Literal["logits", "queries-keys", "none"] = "none"
    # On the CPU the encoder runs (and alignment aligns) one window at a time: only the decoder's
    # caches grow with the batch.
    cpu_window_by_window: bool = False
    # On the CPU, this many replicas of the model where the threads divide among them evenly, each
    # encoding and aligning a window of its own at once: the per-window memory counts once per replica.
    cpu_replicas: int = 1
    # Each further beam hypothesis of a window holds its own copy of the encoder output and of
    # the cross-attention keys and values.
    beam_state: bool = False
    # On the CPU, selection plans a whole run this share above the one-batch estimate (a run of many
    # batches, beside the rest of the pipeline, peaks higher than one batch in a bare process).
    cpu_run_margin: float = 0.0

    def replicas_on_cpu(self, threads: int) -> int:
        """How many replicas run on `threads` CPU threads: cpu_replicas where each gets as many
        threads (no core left idle), else one."""
        return self.cpu_replicas if threads >= self.cpu_replicas and threads % self.cpu_replicas == 0 else 1


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is: where it lives, what it needs, and what it can do."""

    name: str  # as profiles name it (`engine:`)
    module: str  # the module that implements it,
    class_name: str  # and its class (steadyscribe.engines.base.Engine)
    packages: tuple[str, ...]  # runtime packages it imports: the engine is available where all are installed
    model_format: str  # the checkpoint format it loads (steadyscribe.models.provision)
    # Whether windows of many files are decoded side by side; False: one window at a time, each
    # prompted with the text before it.
    batched: bool
    quantizations: Mapping[str, QuantizationKernels]  # beside "none"
    aligns: bool  # it implements base.AligningEngine.align (aligning a known text)
    refused_options: Mapping[str, str]  # decoding option → why the engine cannot honour it
    memory: EngineCalibration
    cpu_dtypes: tuple[str, ...] = ("float32",)  # compute dtypes it runs on the CPU
    # Throughput (audio s / s) per batch size on the CPU: the benchmark's ten-minute file, 2 cores,
    # tiny.en (docs/benchmark.md, "Batching"). `batch_size: auto` on a CPU picks from these.
    cpu_throughput: Mapping[int, float] = field(default_factory=dict)


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            name="whisper",
            module="steadyscribe.engines.whisper_batch1",
            class_name="WhisperBatch1Engine",
            packages=("whisper", "torch"),
            model_format="openai-whisper",
            batched=False,
            quantizations={},
            aligns=False,
            refused_options={},
            # Its beam search was not measured (batch 1).
            memory=EngineCalibration(
                runtime_bytes=370 * MiB, load_copy_factor=0.67, weight_factor=1.75, activation_factor=1.43,
                alignment="logits",
            ),
        ),
        EngineSpec(
            name="transformers",
            module="steadyscribe.engines.transformers_engine",
            class_name="TransformersEngine",
            packages=("transformers", "torch", "whisper"),
            model_format="transformers",
            batched=True,
            quantizations={"dynamic-int8": "native-cpu", "int8": "bitsandbytes", "nf4": "bitsandbytes"},
            aligns=False,
            refused_options={
                "patience": "transformers' beam search has no patience (it stops at beam_size finished hypotheses)",
            },
            # Fitted on the engine itself (tiny.en at batch 1, 8, 24; base at 1, 8): no-speech step, generate, a
            # temperature fallback and the alignment pass. The fixed term (numba compiling the DTW, full-vocabulary
            # logits of the aligned tokens, the no-speech step) is raised so that no measured row is underestimated.
            # Beam state: generate copies each window's encoder output and cross-attention cache per hypothesis
            # (docs/benchmark.md, "Beam search and memory").
            memory=EngineCalibration(
                runtime_bytes=490 * MiB, load_copy_factor=0.53, weight_factor=0.09, activation_factor=1.04,
                decode_fixed_bytes=335 * MiB, attention_maps=False, alignment="queries-keys", beam_state=True,
                # The engine's peak over a whole run exceeds its one-batch estimate; the margin covers
                # the largest excess measured (docs/memory-calibration.md, "Limits").
                cpu_run_margin=0.20,
            ),
            cpu_dtypes=("float32", "bfloat16"),
            cpu_throughput={1: 19.3, 4: 28.5, 8: 36.0, 24: 36.7},
        ),
        EngineSpec(
            name="ctranslate2",
            module="steadyscribe.engines.ctranslate2_engine",
            class_name="CTranslate2Engine",
            packages=("ctranslate2", "tokenizers"),
            model_format="ctranslate2",
            batched=True,
            # Its int8 is its own (weights int8, activations quantized per batch); dynamic-int8 means the same.
            quantizations={"int8": "native", "dynamic-int8": "native"},
            aligns=True,
            refused_options={},
            # Fitted on the engine itself (tiny.en at batch 1, 8 and 24, decoding to the length limit), which imports
            # neither torch nor openai-whisper. Loading touches library pages beyond the weights (in runtime_bytes).
            # One model measured: the least-squares fit puts nothing on the weights; a quarter of them is kept so
            # that larger models stay over-, not underestimated. No beam state: its peak is its encoder's, whatever
            # the beam (docs/benchmark.md, "Beam search and memory").
            memory=EngineCalibration(
                runtime_bytes=190 * MiB, load_copy_factor=0.35, weight_factor=0.25, activation_factor=1.1,
                cpu_window_by_window=True, cpu_replicas=2,
            ),
            cpu_throughput={1: 35.3, 2: 53.7, 4: 59.2, 8: 57.4, 16: 60.5, 24: 61.9},  # int8, two replicas
        ),
    )
}


def engine_spec(name: str) -> EngineSpec:
    """The record of the engine `name`; ValueError for an unknown name."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    return ENGINES[name]
