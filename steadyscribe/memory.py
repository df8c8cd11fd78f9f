"""Peak-memory estimates for running a Whisper model, calibrated on measurements.

peak = runtime overhead + weights + max(load transient, decoding)
decoding = fixed decoding memory + weight factor x weights + activations of a batch

Weights come from the architecture (parameter count x bytes per parameter for the dtype or
quantization). Activations are an analytic count of the tensors a batch of 30 s windows
keeps alive (encoder scratch, cross- and self-attention caches, the word-alignment pass),
scaled by a per-engine factor fitted from docs/memory-calibration.md (bench/measure_memory.py).
"""

from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass

from steadyscribe.engines.registry import engine_spec

GiB = 1024**3
MiB = 1024**2

AUDIO_CTX = 1500  # encoder frames per 30 s window
TEXT_CTX = 448  # decoder positions
DECODE_TOKENS = 224  # tokens one window decodes at most (openai-whisper's sample_len)


@dataclass(frozen=True)
class Architecture:
    """The shape of one Whisper checkpoint."""

    width: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    n_mels: int = 80
    vocab: int = 51865

    @property
    def parameter_count(self) -> int:
        """Parameters plus the encoder's positional table (it is loaded and held like one)."""
        d = self.width
        encoder = (
            self.n_mels * d * 3 + d  # conv1
            + d * d * 3 + d  # conv2
            + AUDIO_CTX * d  # positional table
            + self.encoder_layers * (12 * d * d + 12 * d)  # self-attention + MLP + 2 layer norms
            + 2 * d  # final layer norm
        )
        decoder = (
            self.vocab * d  # token embedding, tied with the output projection
            + TEXT_CTX * d
            + self.decoder_layers * (16 * d * d + 17 * d)  # self- and cross-attention + MLP + 3 norms
            + 2 * d
        )
        return encoder + decoder

    @property
    def linear_parameter_count(self) -> int:
        """Weights of the attention and MLP projections: the part quantization shrinks."""
        d = self.width
        return self.encoder_layers * 12 * d * d + self.decoder_layers * 16 * d * d

    def batch_elements(self, engine: str, batch_size: int, device: str = "cpu", threads: int = 1) -> int:
        """Activation tensor elements a batch of 30 s windows keeps alive at peak (before calibration),
        as the engine's record describes them (steadyscribe.engines.registry.EngineCalibration),
        on `threads` CPU threads."""
        shape = engine_spec(engine).memory
        d, h, t = self.width, self.heads, AUDIO_CTX
        caches = 2 * self.decoder_layers * (t + TEXT_CTX) * d  # cross- and self-attention keys/values
        encoder_scratch = 10 * t * d  # one layer's projections and MLP
        if shape.attention_maps:
            encoder_scratch += 2 * h * t * t
        alignment = {
            "logits": DECODE_TOKENS * (self.vocab + self.decoder_layers * h * t),
            "queries-keys": self.decoder_layers * (DECODE_TOKENS + t) * d,
            "none": 0,
        }[shape.alignment]
        if shape.cpu_window_by_window and device == "cpu":
            # Each window is encoded and aligned on its own: only the decoder's caches grow with the batch.
            windows_at_once = shape.replicas_on_cpu(threads)
            return windows_at_once * (encoder_scratch + alignment) + batch_size * (t * d + caches)
        return batch_size * (encoder_scratch + caches + alignment)

    def beam_elements(self) -> int:
        """Elements each further beam hypothesis of a window holds where the engine keeps beam state
        (EngineCalibration.beam_state): its copy of the encoder output and its cross-attention keys
        and values (its self-attention cache grows with the few tokens decoded and is left out)."""
        d = self.width
        return AUDIO_CTX * d + 2 * self.decoder_layers * AUDIO_CTX * d


_TINY = dict(width=384, heads=6, encoder_layers=4, decoder_layers=4)
_BASE = dict(width=512, heads=8, encoder_layers=6, decoder_layers=6)
_SMALL = dict(width=768, heads=12, encoder_layers=12, decoder_layers=12)
_MEDIUM = dict(width=1024, heads=16, encoder_layers=24, decoder_layers=24)
_LARGE = dict(width=1280, heads=20, encoder_layers=32, decoder_layers=32)
_EN = 51864  # English-only vocabulary
_V3 = dict(n_mels=128, vocab=51866)

ARCHITECTURES: dict[str, Architecture] = {
    "tiny": Architecture(**_TINY),
    "tiny.en": Architecture(**_TINY, vocab=_EN),
    "base": Architecture(**_BASE),
    "base.en": Architecture(**_BASE, vocab=_EN),
    "small": Architecture(**_SMALL),
    "small.en": Architecture(**_SMALL, vocab=_EN),
    "medium": Architecture(**_MEDIUM),
    "medium.en": Architecture(**_MEDIUM, vocab=_EN),
    "large-v1": Architecture(**_LARGE),
    "large-v2": Architecture(**_LARGE),
    "large-v3": Architecture(**_LARGE, **_V3),
    "large-v3-turbo": Architecture(width=1280, heads=20, encoder_layers=32, decoder_layers=4, **_V3),
    # Distil-Whisper keeps the teacher's encoder and two decoder layers.
    "distil-small.en": Architecture(width=768, heads=12, encoder_layers=12, decoder_layers=4, vocab=_EN),
    "distil-medium.en": Architecture(width=1024, heads=16, encoder_layers=24, decoder_layers=2, vocab=_EN),
    "distil-large-v2": Architecture(width=1280, heads=20, encoder_layers=32, decoder_layers=2),
    "distil-large-v3": Architecture(width=1280, heads=20, encoder_layers=32, decoder_layers=2, **_V3),
    # steadyscribe.models.distil.build_student("tiny.en"): untrained, for tests and benchmarks only.
    "distil-tiny.en-student": Architecture(width=384, heads=6, encoder_layers=4, decoder_layers=2, vocab=_EN),
}
ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo", "distil-large-v3.5": "distil-large-v3"}


def architecture(model: str) -> Architecture:
    """The architecture of a model name, also for hub ids such as openai/whisper-small.en."""
    name = re.sub(r"^.*/", "", model.strip().lower())
    name = re.sub(r"^(faster-)?(distil-)?whisper-", r"\2", name)
    name = ALIASES.get(name, name)
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown Whisper model {model!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def is_english_only(model: str) -> bool:
    return architecture(model).vocab == _EN


def whisper_dims(arch: Architecture) -> dict[str, int]:
    """openai-whisper ModelDimensions for an architecture."""
    return dict(
        n_mels=arch.n_mels, n_audio_ctx=AUDIO_CTX, n_audio_state=arch.width, n_audio_head=arch.heads,
        n_audio_layer=arch.encoder_layers, n_vocab=arch.vocab, n_text_ctx=TEXT_CTX,
        n_text_state=arch.width, n_text_head=arch.heads, n_text_layer=arch.decoder_layers,
    )


def hf_config_kwargs(arch: Architecture) -> dict[str, int]:
    """transformers WhisperConfig arguments for an architecture."""
    return dict(
        vocab_size=arch.vocab, num_mel_bins=arch.n_mels, d_model=arch.width,
        encoder_layers=arch.encoder_layers, decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads, decoder_attention_heads=arch.heads,
        encoder_ffn_dim=4 * arch.width, decoder_ffn_dim=4 * arch.width,
        max_source_positions=AUDIO_CTX, max_target_positions=TEXT_CTX,
    )


# ---------------------------------------------------------------- estimate

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANTIZED_BYTES = {"int8": 1.0, "dynamic-int8": 1.0, "nf4": 0.5 + 4 / 64}  # nf4: fp32 scale per 64 weights
# A CUDA context plus cuBLAS/cuDNN workspaces on the device. Not measurable on this CPU-only
# machine: a typical figure for CUDA 12 on recent cards, kept on the safe side.
CUDA_CONTEXT_BYTES = 600 * MiB


def weight_bytes(model: str, dtype: str = "float32", quantization: str = "none") -> int:
    """Bytes of the loaded weights; quantization shrinks the linear projections only."""
    arch = architecture(model)
    if quantization == "none":
        return arch.parameter_count * DTYPE_BYTES[dtype]
    linear = arch.linear_parameter_count
    return int(linear * QUANTIZED_BYTES[quantization] + (arch.parameter_count - linear) * DTYPE_BYTES[dtype])


def estimate_peak_bytes(
    model: str,
    *,
    engine: str,
    device: str = "cpu",
    dtype: str = "float32",
    quantization: str = "none",
    batch_size: int = 1,
    beam_size: int = 1,
    threads: int = 1,
) -> int:
    """Peak memory (CPU RSS, or GPU memory on cuda) of loading `model` and decoding one batch.

    peak = runtime + weights + max(load transient, decoding), where
    decoding = fixed + weight_factor x weights + activation_factor x analytic bytes of the batch;
    with beam search, the windows of an engine that keeps beam state hold beam_size hypotheses.
    The calibration is the engine's record's (steadyscribe.engines.registry).
    """
    calibration = engine_spec(engine).memory
    arch = architecture(model)
    weights = weight_bytes(model, dtype, quantization)
    # dynamic-int8 is built layer by layer (steadyscribe.models.quantize), never holding the fp32 model.
    load_copy = weights * calibration.load_copy_factor
    elements = arch.batch_elements(engine, batch_size, device, threads)
    if calibration.beam_state:
        elements += batch_size * (beam_size - 1) * arch.beam_elements()
    activations = elements * DTYPE_BYTES[dtype] * calibration.activation_factor
    decoding = calibration.decode_fixed_bytes + calibration.weight_factor * weights + activations
    runtime = CUDA_CONTEXT_BYTES if device == "cuda" else calibration.runtime_bytes
    return int(runtime + weights + max(load_copy, decoding))


# ---------------------------------------------------------------- measuring a process's peak

_CLEAR_REFS = "/proc/self/clear_refs"
_peak_before_resets = 0  # the process's peak before its latest reset_peak_rss()
_engine_process_peak = 0


def vm_hwm_bytes() -> int:
    """This process's peak RSS as the kernel keeps it (VmHWM); 0 where /proc is not available."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Restart the kernel's high-water mark, to measure the peak of what follows; False where
    Linux does not allow it. The peak so far is kept for process_peak_rss_bytes(): the reset
    also clears what getrusage's ru_maxrss reports."""
    global _peak_before_resets
    _peak_before_resets = max(_peak_before_resets, vm_hwm_bytes())
    try:
        with open(_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def process_peak_rss_bytes() -> int:
    """Peak RSS of this process so far, across any reset_peak_rss().

    Linux's VmHWM where /proc has it: getrusage's ru_maxrss survives exec, so a process that a
    large one started (a test runner, a scheduler's worker) would report its starter's size.
    """
    if hwm := vm_hwm_bytes():
        return max(hwm, _peak_before_resets)
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere
    except ImportError:  # Windows
        return 0


def note_engine_process_peak(peak_bytes: int) -> None:
    """Keep the peak RSS that this process's engine child (tasks/infer.py) reported, for run_peak_rss_bytes()."""
    global _engine_process_peak
    _engine_process_peak = max(_engine_process_peak, peak_bytes)


def run_peak_rss_bytes() -> int:
    """The run's peak memory: this process's peak plus its engine child's (their sum bounds what both held at once)."""
    return process_peak_rss_bytes() + _engine_process_peak


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Above the attention maps of one encoder layer for one window up to Whisper small (12 heads x
# 1500 x 1500 float32: 103 MiB).
HEAP_BUFFER_LIMIT = 128 * MiB


def reuse_large_buffers(limit_bytes: int = HEAP_BUFFER_LIMIT) -> bool:
    """Serve allocations up to `limit_bytes` from glibc's heap and keep freed ones for reuse; False where that cannot be set.

    glibc maps every block above its ceiling of 32 MiB afresh, and the kernel zeroes each page on
    first touch. CTranslate2's encoder allocates and frees such blocks for every window on the
    CPU (one layer's attention maps: 51 MiB for tiny), and a run of short clips spent much of its
    time in those page faults (docs/benchmark.md, "Whole runs, start to exit"). Kept on the heap,
    they are reused from one window to the next, at the cost of holding up to `limit_bytes`
    more between windows. Process-wide: it changes where large blocks come from, not what is allocated.
    One heap serves every thread, so a block that one engine thread frees serves the next window
    of another instead of staying in a heap of its own (two threads held ~290 MiB more without).
    """
    if not sys.platform.startswith("linux"):
        return False
    # The process's own symbols include its C library's (find_library would run ldconfig for its name).
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:  # not glibc (musl has no mallopt)
        return False
    return all(
        mallopt(parameter, value)
        for parameter, value in ((_M_MMAP_THRESHOLD, limit_bytes), (_M_TRIM_THRESHOLD, limit_bytes), (_M_ARENA_MAX, 1))
    )
