"""Selection stage: a profile and a probe become one concrete Plan, with the reason for it.

Search order (first fit wins): engines in preference order that are available; for each,
models in preference order; for each, quantizations in preference order that work here; for
each, the largest allowed batch that fits the memory budget. So when the first choice does
not fit, a smaller batch is tried first, then quantization, then the next model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prefect import task

from steadyscribe.engines import available_engines, engine_spec, provisioning_error
from steadyscribe.engines.decoding import unsupported_options
from steadyscribe.errors import PlanError
from steadyscribe.isolation import ChildProcess
from steadyscribe.memory import estimate_peak_bytes, is_english_only
from steadyscribe.models.distil import recommended_window_s
from steadyscribe.profiles import Profile, ProfileError, apply_overrides, format_bytes, load_profile, parse_size
from steadyscribe.records import Plan
from steadyscribe.tasks.probe import Probe

log = logging.getLogger(__name__)

BATCH_SIZES = (24, 16, 8, 4, 2, 1)  # `auto` on a GPU takes the largest that fits; 24 is transformers' default
# On a CPU a larger batch soon buys no speed, only memory: `auto` takes the smallest batch within
# THROUGHPUT_TOLERANCE of the best measured throughput (EngineSpec.cpu_throughput) of those that fit.
THROUGHPUT_TOLERANCE = 0.05
# A provisioning child that reads and writes nothing for this long (no download, no conversion) hangs.
PROVISION_HANG_S = 600.0


@dataclass(frozen=True)
class _Target:
    """Where the model would run and how much memory it may use there."""

    device: str
    free_bytes: int
    budget_bytes: int
    description: str
    process_rss_bytes: int  # resident in the run's process, beside the engine's own process (CPU only)


# (model, engine) → None when the model can be had in that engine's format, else why not.
ModelCheck = Callable[[str, str], "str | None"]


def select_plan(
    profile: Profile,
    probe: Probe,
    available_engines: Collection[str],
    overrides: Mapping[str, Any] | None = None,
    model_unavailable: ModelCheck | None = None,
) -> Plan:
    """Choose engine, model, precision, quantization and batch size that fit this machine.

    `overrides` holds one run's overrides (profiles.OVERRIDE_KEYS; None: unset).
    `model_unavailable` lets selection skip models that cannot be provisioned (e.g. offline).
    Raises PlanError when nothing fits, ProfileError for bad overrides and for decoding options
    the chosen engine cannot honour.
    """
    profile = apply_overrides(profile, overrides)
    if profile.candidates:
        return _select_candidate(profile, probe, available_engines, overrides, model_unavailable)
    plan = _plan_for(profile, probe, available_engines, model_unavailable)
    log.info("plan for profile %s: %s", profile.name, plan.reason)
    return plan


def _select_candidate(
    auto: Profile, probe: Probe, available_engines: Collection[str], overrides: Mapping[str, Any] | None,
    model_unavailable: ModelCheck | None,
) -> Plan:
    """The first candidate profile whose device is present, whose memory floor is met and that fits."""
    skipped: list[str] = []
    for name in auto.candidates:
        candidate = apply_overrides(load_profile(name), overrides)
        target_free = probe.gpu_free_bytes if candidate.device == "cuda" else probe.memory_available_bytes
        if candidate.device == "cuda" and not probe.cuda_available:
            skipped.append(f"{name}: no usable GPU")
            continue
        if candidate.min_free_memory and target_free < parse_size(candidate.min_free_memory):
            skipped.append(f"{name}: needs {candidate.min_free_memory} free, {format_bytes(target_free)} is")
            continue
        try:
            plan = _plan_for(candidate, probe, available_engines, model_unavailable)
        except PlanError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        plan.reason = f"{auto.name} chose {name} ({'; '.join(skipped) or 'first candidate'}): {plan.reason}"
        log.info("plan for profile %s: %s", auto.name, plan.reason)
        return plan
    raise PlanError(f"profile {auto.name}: no candidate fits: " + "; ".join(skipped))


def _plan_for(
    profile: Profile, probe: Probe, available_engines: Collection[str], model_unavailable: ModelCheck | None = None
) -> Plan:
    target = _target(profile, probe)
    notes: list[str] = []
    engines = []
    for engine in profile.engine:
        if engine in available_engines:
            engines.append(engine)
        else:
            _note(notes, f"{engine} engine not available")
    if not engines:
        raise PlanError(
            f"profile {profile.name}: none of its engines {profile.engine} is available "
            f"(available: {sorted(available_engines) or 'none'})"
        )

    threads = probe.usable_cpus if profile.threads == "auto" else profile.threads
    tried: list[str] = []
    for engine in engines:
        dtype, dtype_note = _dtype(profile.dtype, engine, target.device)
        for model in profile.model:
            language = profile.decoding.language or ("en" if is_english_only(model) else None)
            if is_english_only(model) and (need := profile.decoding.multilingual_need()):
                _note(notes, f"{need} needs a multilingual model; {model} is English-only")
                continue
            if model_unavailable and (missing := model_unavailable(model, engine)):
                _note(notes, f"{model} for {engine} unavailable: {missing}")
                continue
            for quantization in profile.quantization:
                why_not = _quantization_unusable(quantization, engine, target.device, probe)
                if why_not:
                    _note(notes, f"no {quantization}: {why_not}")
                    continue
                batch, need, batch_note = _choose_batch(
                    profile, engine, model, target.device, dtype, quantization, target, threads
                )
                if batch is None:
                    precision = _precision(dtype, quantization)
                    tried.append(f"{engine} {model} {precision} needs ~{format_bytes(need)} at batch 1")
                    continue
                reason = "; ".join(
                    [target.description, *filter(None, [dtype_note]), *notes, *tried]
                    + [
                        f"{model} with {engine} in {_precision(dtype, quantization)} needs "
                        f"~{format_bytes(need)} at batch {batch} -> chose {_engine_choice(profile, engine)}{model}, "
                        f"batch {batch}{batch_note}"
                    ]
                )
                decoding = profile.decoding.options(language)
                if problems := unsupported_options(engine, decoding):
                    raise ProfileError(
                        f"profile {profile.name}: the {engine} engine cannot honour " + "; ".join(problems)
                    )
                return Plan(
                    engine=engine,
                    model=model,
                    device=target.device,
                    dtype=dtype,
                    quantization=quantization,
                    batch_size=batch,
                    chunk_s=min(profile.chunking.max_window_s, recommended_window_s(model) or 30.0),
                    threads=threads,
                    language=language,
                    memory_budget_bytes=target.budget_bytes,
                    estimated_peak_bytes=need,
                    profile=profile.name,
                    model_cache_dir=profile.model_cache_dir,
                    decoding=decoding,
                    reason=reason,
                )
    raise PlanError(
        f"profile {profile.name}: nothing fits the memory budget: {target.description}; "
        f"tried: {'; '.join(tried) or 'nothing usable'}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + ". Raise memory_budget, or pick a smaller model or a profile such as cpu-lowmem."
    )


def accelerators_needed(profile: Profile) -> tuple[bool, frozenset[str]]:
    """Whether `profile` (or any of its candidates) could use a GPU, and on which devices bitsandbytes.

    The probe looks only for what selection could choose: importing torch to look for a GPU, or
    bitsandbytes to test its kernels, costs seconds and memory on every run.
    """
    profiles = [load_profile(name) for name in profile.candidates] if profile.candidates else [profile]
    gpu = any(p.device in ("cuda", "auto") for p in profiles)
    bitsandbytes = frozenset(
        "cpu" if p.device == "cpu" else "cuda"
        for p in profiles
        if any(engine_spec(e).quantizations.get(q) == "bitsandbytes" for e in p.engine for q in p.quantization)
    )
    return gpu, bitsandbytes


def refit_plan(plan: Plan, profile: Profile, probe: Probe, overrides: Mapping[str, Any] | None = None) -> Plan:
    """`plan` with the batch size and threads chosen again for another machine's `probe` (a worker's).

    Engine, model, device, precision and quantization stay as planned: they are part of the
    settings key, and one run's outputs must not mix them. Raises PlanError when the planned
    model does not fit this machine's budget at any batch size.
    """
    if profile.candidates:  # `auto`: the candidate that was chosen holds the batch and budget settings
        profile = load_profile(plan.profile)
    profile = apply_overrides(profile, overrides)
    fixed = profile.model_copy(
        update={
            "engine": [plan.engine], "model": [plan.model], "quantization": [plan.quantization],
            "dtype": plan.dtype, "device": plan.device,
            "decoding": profile.decoding.model_copy(update={"language": plan.language}),
        }
    )
    refitted = _plan_for(fixed, probe, {plan.engine})
    return replace(plan, batch_size=refitted.batch_size, threads=refitted.threads,
                   memory_budget_bytes=refitted.memory_budget_bytes, estimated_peak_bytes=refitted.estimated_peak_bytes)


def _engine_choice(profile: Profile, engine: str) -> str:
    """How the engine was chosen, when the profile offered several."""
    if len(profile.engine) == 1:
        return ""
    return f"{engine} (engine order {' > '.join(profile.engine)}: the first installed that fits), "


def _target(profile: Profile, probe: Probe) -> _Target:
    budget = profile.budget
    if profile.device == "cuda" and not probe.cuda_available:
        raise PlanError(f"profile {profile.name} needs a CUDA GPU and none works here; use auto or a cpu-* profile")
    gpu = probe.best_gpu() if profile.device in ("cuda", "auto") and probe.cuda_available else None
    if gpu is not None:
        free, where = gpu.free_bytes, f"GPU {gpu.name}: {format_bytes(gpu.free_bytes)} free"
    else:
        free = probe.memory_available_bytes
        where = f"no GPU; {format_bytes(free)} free" if profile.device == "auto" else f"CPU: {format_bytes(free)} free"
    budget_bytes = min(budget.resolve(free), free)
    description = f"{where}, budget {budget.describe()} = {format_bytes(budget_bytes)}"
    return _Target(
        "cuda" if gpu else "cpu", free, budget_bytes, description,
        0 if gpu else probe.process_rss_bytes,
    )


def _dtype(requested: str, engine: str, device: str) -> tuple[str, str | None]:
    """The compute dtype, and a note when the request cannot be honoured here."""
    if device == "cuda":
        return ("float16" if requested == "auto" else requested), None
    if requested in ("auto", "float32"):
        return "float32", None
    if requested in engine_spec(engine).cpu_dtypes:
        return requested, None
    return "float32", f"{requested} is not used on the CPU by {engine}; float32 instead"


def _quantization_unusable(quantization: str, engine: str, device: str, probe: Probe) -> str | None:
    """Why a quantization cannot run with this engine on this device; None when it can."""
    if quantization == "none":
        return None
    kernels = engine_spec(engine).quantizations
    if not kernels:
        return f"the {engine} engine runs unquantized"
    if quantization not in kernels:
        return f"{engine} has no {quantization}"
    if kernels[quantization] == "native":
        return None
    if kernels[quantization] == "native-cpu":
        return None if device == "cpu" else f"{quantization} is CPU-only"
    if device == "cuda":
        return None if probe.bitsandbytes_cuda else "bitsandbytes does not work on this GPU"
    if quantization == "int8":
        return None if probe.bitsandbytes_int8_cpu else "bitsandbytes int8 does not work on this CPU"
    return None if probe.bitsandbytes_nf4_cpu else "bitsandbytes nf4 does not work on this CPU"


def _choose_batch(
    profile: Profile, engine: str, model: str, device: str, dtype: str, quantization: str, target: _Target, threads: int
) -> tuple[int | None, int, str]:
    """The batch to run (the profile's, or a smaller one that fits), its estimated peak, and why.

    The largest that fits; on a CPU with `batch_size: auto`, the smallest within
    THROUGHPUT_TOLERANCE of the best measured throughput that fits. When none fits: (None, the
    estimate at batch 1, "").
    """
    spec = engine_spec(engine)
    if not spec.batched:
        sizes: list[int] = [1]
    elif profile.batch_size == "auto":
        sizes = list(BATCH_SIZES)
    else:
        sizes = [profile.batch_size, *(b for b in BATCH_SIZES if b < profile.batch_size)]
    # The estimate is calibrated in a bare process, as the engine's own process is (tasks/infer.py);
    # the run's process (Prefect, the VAD, probes) stays resident beside it.
    host_overhead = target.process_rss_bytes
    margin = 1 + spec.memory.cpu_run_margin if device == "cpu" else 1
    needs = {
        batch: host_overhead + int(margin * estimate_peak_bytes(
            model, engine=engine, device=device, dtype=dtype, quantization=quantization, batch_size=batch,
            beam_size=profile.decoding.beam_size, threads=threads,
        ))
        for batch in sizes
    }
    fitting = [batch for batch in sizes if needs[batch] <= target.budget_bytes]
    if not fitting:
        return None, needs[sizes[-1]], ""
    measured = {b: t for b, t in spec.cpu_throughput.items() if b in fitting}
    if device != "cpu" or profile.batch_size != "auto" or not measured:
        return fitting[0], needs[fitting[0]], ""
    best = max(measured, key=measured.__getitem__)
    batch = min(b for b, t in measured.items() if t >= (1 - THROUGHPUT_TOLERANCE) * measured[best])
    if batch == fitting[0]:
        return batch, needs[batch], ""
    return batch, needs[batch], (
        f" (not {fitting[0]}: on a CPU batch {batch} is within {THROUGHPUT_TOLERANCE:.0%} of the best measured "
        f"throughput, batch {best}, for {format_bytes(needs[fitting[0]] - needs[batch])} less)"
    )


def _note(notes: list[str], note: str) -> None:
    """Each reason for skipping a choice once, however many combinations it ruled out."""
    if note not in notes:
        notes.append(note)


def _precision(dtype: str, quantization: str) -> str:
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    return short if quantization == "none" else f"{quantization} ({short} compute)"


def plan_markdown(plan: Plan, probe: Probe) -> str:
    """The plan and the machine it was made for, as Markdown for the Prefect UI."""
    rows = [
        ("profile", plan.profile),
        ("engine", plan.engine),
        ("model", plan.model),
        ("device / dtype", f"{plan.device} / {plan.dtype}"),
        ("quantization", plan.quantization),
        ("batch size", plan.batch_size),
        ("threads", plan.threads),
        ("memory budget", format_bytes(plan.memory_budget_bytes) if plan.memory_budget_bytes else "none"),
        ("estimated peak", format_bytes(plan.estimated_peak_bytes) if plan.estimated_peak_bytes else "unknown"),
        ("CPUs usable", probe.usable_cpus),
        ("memory available", format_bytes(probe.memory_available_bytes)),
        ("GPUs", ", ".join(f"{g.name} ({format_bytes(g.free_bytes)} free)" for g in probe.gpus) or "none"),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Execution plan\n\n{plan.reason}\n\n{table}\n"


@task(name="select")
def select_task(profile: Profile, probe: Probe, overrides: Mapping[str, Any] | None = None) -> Plan:
    """Select a plan for the engines installed here and a model that can be provisioned here (cached, shipped in a package, or downloaded).

    Provisioning (a conversion between formats loads the model and its framework) runs in a child
    process, so the run's process stays as small as the plan assumes beside the engine's own.
    """
    provisioner = ChildProcess()

    def model_unavailable(model: str, engine: str) -> str | None:
        return provisioner.call(provisioning_error, model, engine, profile.model_cache_dir, hang_s=PROVISION_HANG_S)

    try:
        return select_plan(profile, probe, available_engines(), overrides, model_unavailable)
    finally:
        provisioner.close()
