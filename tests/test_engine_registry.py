"""The engine records: each describes its module truly, and selection, the decoding checks and the
memory estimate take an engine from its record alone."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest

from helpers import machine
from steadyscribe.engines import ENGINES, available_engines
from steadyscribe.engines.decoding import conditions_on_previous_text, unsupported_options
from steadyscribe.engines.registry import EngineSpec
from steadyscribe.memory import estimate_peak_bytes
from steadyscribe.profiles import load_profile
from steadyscribe.records import DecodingOptions
from steadyscribe.tasks.select import accelerators_needed, select_plan


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_each_record_names_its_engine_class_and_whether_it_aligns(name):
    spec = ENGINES[name]
    if name not in available_engines():
        pytest.skip(f"{name}: {spec.packages} not installed")
    engine_class = getattr(importlib.import_module(spec.module), spec.class_name)
    assert engine_class.name == name
    assert callable(getattr(engine_class, "align", None)) == spec.aligns
    assert callable(engine_class.transcribe)


@pytest.fixture
def toy(monkeypatch) -> EngineSpec:
    """An engine that exists only as a record: batched, its own int8 only, no patience, CTranslate2's memory."""
    spec = replace(
        ENGINES["ctranslate2"],
        name="toy",
        packages=("numpy",),
        quantizations={"int8": "native"},
        refused_options={"patience": "toy's beam search has no patience"},
        cpu_throughput={1: 10.0, 2: 19.0, 4: 20.0},
    )
    monkeypatch.setitem(ENGINES, "toy", spec)
    return spec


def test_an_engine_added_as_a_record_is_available_selected_checked_and_estimated(toy, monkeypatch):
    assert "toy" in available_engines()
    monkeypatch.setitem(ENGINES, "toy", replace(toy, packages=("numpy", "no_such_package_for_steadyscribe")))
    assert "toy" not in available_engines()
    monkeypatch.setitem(ENGINES, "toy", toy)

    profile = load_profile("cpu-batched").model_copy(
        update={"engine": ["toy"], "model": ["tiny.en"], "quantization": ["nf4", "int8"], "batch_size": "auto"}
    )
    plan = select_plan(profile, machine(), {"toy"})
    assert (plan.engine, plan.quantization) == ("toy", "int8")
    assert "no nf4: toy has no nf4" in plan.reason
    # On a CPU, `auto` takes the smallest batch within 5% of the record's best measured throughput.
    assert plan.batch_size == 2, plan.reason
    assert plan.estimated_peak_bytes == estimate_peak_bytes(
        "tiny.en", engine="toy", quantization="int8", batch_size=2, threads=plan.threads
    ) == estimate_peak_bytes("tiny.en", engine="ctranslate2", quantization="int8", batch_size=2, threads=plan.threads)

    assert unsupported_options("toy", DecodingOptions(beam_size=5, patience=2.0)) == [
        "decoding.patience: toy's beam search has no patience"
    ]
    assert unsupported_options("toy", DecodingOptions(condition_on_previous_text=True))
    assert not conditions_on_previous_text("toy", DecodingOptions())
    batch_one = replace(toy, batched=False, quantizations={}, refused_options={})
    monkeypatch.setitem(ENGINES, "toy", batch_one)
    assert conditions_on_previous_text("toy", DecodingOptions())
    assert unsupported_options("toy", DecodingOptions(condition_on_previous_text=True, beam_size=5, patience=2.0)) == []
    plan = select_plan(profile.model_copy(update={"quantization": ["int8", "none"]}), machine(), {"toy"})
    assert (plan.quantization, plan.batch_size) == ("none", 1)
    assert "no int8: the toy engine runs unquantized" in plan.reason


def test_a_record_that_quantizes_through_bitsandbytes_makes_the_probe_test_it(toy, monkeypatch):
    profile = load_profile("cpu-batched").model_copy(update={"engine": ["toy"], "quantization": ["int8"]})
    assert accelerators_needed(profile) == (False, frozenset())
    monkeypatch.setitem(ENGINES, "toy", replace(toy, quantizations={"int8": "bitsandbytes"}))
    assert accelerators_needed(profile) == (False, frozenset({"cpu"}))


def test_an_unknown_engine_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown engine 'nope'; known: whisper, transformers, ctranslate2"):
        estimate_peak_bytes("tiny.en", engine="nope")
