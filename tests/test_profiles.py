"""Profiles: shipped files validate, extends merges, errors say where, what and what is allowed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from steadyscribe.profiles import (
    SHIPPED_DIR,
    OVERRIDE_KEYS,
    MemoryBudget,
    ProfileError,
    apply_overrides,
    list_profiles,
    load_profile,
    parse_memory_budget,
    run_overrides,
)
from steadyscribe.app.profiles_cli import register

SHIPPED = ["auto", "cpu-accurate", "cpu-batched", "cpu-fast", "cpu-lowmem", "cpu-small", "gpu-24gb", "gpu-80gb", "gpu-8gb"]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEADYSCRIBE_PROFILES_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_validates(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.chunking.max_window_s <= 30


def test_shipped_profiles_are_the_ones_listed():
    assert sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml")) == SHIPPED


def test_default_profile_is_whisper_tiny_en_batch_1():
    profile = load_profile()
    assert (profile.name, profile.engine, profile.model) == ("cpu-small", ["whisper"], ["tiny.en"])
    assert profile.batch_size == 1


def test_extends_deep_merges_over_the_parent(user_dir):
    write(user_dir, "mine", "extends: cpu-small\nbatch_size: 4\nstabilization:\n  dtw_lag_s: 0.1\n")
    profile = load_profile("mine")
    assert profile.batch_size == 4
    assert profile.stabilization.dtw_lag_s == 0.1
    assert profile.stabilization.enabled is True  # kept from cpu-small
    assert profile.model == ["tiny.en"]


def test_extends_chain_through_shipped_profiles():
    profile = load_profile("gpu-80gb")  # gpu-80gb -> gpu-24gb -> gpu-8gb -> cpu-small
    assert (profile.device, profile.dtype, profile.quantization, profile.memory_budget) == (
        "cuda", "float16", ["none"], "90%")
    assert profile.stabilization.enabled


def test_user_profile_may_extend_the_shipped_one_of_its_name(user_dir):
    write(user_dir, "cpu-small", "extends: cpu-small\nthreads: 3\n")
    profile = load_profile("cpu-small")
    assert profile.threads == 3 and profile.model == ["tiny.en"]


def test_extends_cycle_is_an_error(user_dir):
    write(user_dir, "a", "extends: b\n")
    write(user_dir, "b", "extends: a\n")
    with pytest.raises(ProfileError, match=r"extends cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_profile("a")


def test_candidates_must_be_plain_profiles(user_dir):
    write(user_dir, "meta", "candidates: [auto]\n")
    with pytest.raises(ProfileError, match="candidates: 'auto' has candidates itself"):
        load_profile("meta")
    write(user_dir, "typo", "candidates: [gpu-8gb, cpu-smal]\n")
    with pytest.raises(ProfileError, match="no profile named 'cpu-smal'"):
        load_profile("typo")


def test_profile_by_path(tmp_path):
    path = write(tmp_path, "x", "extends: cpu-batched\nmemory_budget: 2GiB\n")
    profile = load_profile(str(path))
    assert profile.name == "x" and profile.budget == MemoryBudget(bytes=2 * 2**30)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match="no profile named 'nope'.*cpu-small"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("text", "key", "value", "allowed"),
    [
        ("batch_size: big", "batch_size", "'big'", "a whole number, 1 or more) or 'auto'"),
        ("batch_size: 0", "batch_size", "0", "or 'auto'"),
        ("device: tpu", "device", "'tpu'", "'auto', 'cpu' or 'cuda'"),
        ("quantization: [none, int4]", "quantization[1]", "'int4'", "'none', 'int8', 'nf4' or 'dynamic-int8'"),
        ("engine: whisperx", "engine[0]", "'whisperx'", "'whisper', 'transformers' or 'ctranslate2'"),
        ("model: huge-v9", "model[0]", "'huge-v9'", "tiny.en"),
        ("memory_budget: lots", "memory_budget", "'lots'", "'2GiB', '512MiB'"),
        ("memory_budget: 150%", "memory_budget", "'150%'", "at most 100"),
        ("stabilization:\n  min_word_s: -1", "stabilization.min_word_s", "-1", "greater than or equal to 0"),
        ("chunking:\n  max_window_s: 45", "chunking.max_window_s", "45", "less than or equal to 30"),
        ("output:\n  sidecars: [srt, docx]", "output.sidecars[1]", "'docx'", "'srt', 'vtt' or 'json'"),
        ("threads: many", "threads", "'many'", "'auto'"),
    ],
)
def test_bad_value_names_file_key_value_and_allowed(tmp_path, text, key, value, allowed):
    path = write(tmp_path, "bad", f"extends: cpu-small\n{text}\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    message = str(caught.value)
    assert f"{path}: {key}: {value} is not allowed; " in message
    assert allowed in message


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = write(tmp_path, "bad", "stabilization:\n  min_word: 0.1\n")
    with pytest.raises(ProfileError, match=r"bad\.yaml: stabilization\.min_word: unknown key; allowed keys here: "
                                           r"enabled, min_word_s, dtw_lag_s, drop_hallucinations, no_speech_threshold, "
                                           r"min_word_probability, logprob_threshold, max_drop_share, split_pause_s"):
        load_profile(str(path))


def test_vad_thresholds_are_validated_in_order(tmp_path):
    path = write(tmp_path, "bad", "extends: cpu-small\nvad:\n  threshold: 0.3\n  neg_threshold: 0.4\n")
    with pytest.raises(ProfileError, match=r"silence_threshold <= neg_threshold <= threshold"):
        load_profile(str(path))
    path = write(tmp_path, "odd", "extends: cpu-small\nvad:\n  silence_threshold: 1.5\n")
    with pytest.raises(ProfileError, match=r"vad\.silence_threshold: 1\.5 is not allowed"):
        load_profile(str(path))
    assert load_profile("cpu-small").vad.silence_threshold == 0.1


def test_error_names_the_file_that_set_the_bad_key(user_dir):
    parent = write(user_dir, "parent", "batch_size: -3\n")
    write(user_dir, "child", "extends: parent\nthreads: 2\n")
    with pytest.raises(ProfileError, match=f"{parent}: batch_size: -3 is not allowed"):
        load_profile("child")


def test_runner_options_only_for_dask(tmp_path):
    ok = load_profile(str(write(tmp_path, "d", "runner: {kind: dask, address: 'tcp://s:8786', n_workers: 2}\n")))
    assert ok.runner.address == "tcp://s:8786"
    with pytest.raises(ProfileError, match="runner: address and n_workers apply only to kind: dask"):
        load_profile(str(write(tmp_path, "t", "runner: {kind: threads, n_workers: 2}\n")))


def test_english_only_models_refuse_another_language(tmp_path):
    with pytest.raises(ProfileError, match="needs a multilingual model"):
        load_profile(str(write(tmp_path, "fr", "model: [tiny.en]\nlanguage: fr\n")))


def test_yaml_syntax_and_shape_errors_name_the_file(tmp_path):
    with pytest.raises(ProfileError, match=r"broken\.yaml: not valid YAML"):
        load_profile(str(write(tmp_path, "broken", "batch_size: [1\n")))
    with pytest.raises(ProfileError, match=r"list\.yaml: expected a mapping"):
        load_profile(str(write(tmp_path, "list", "- a\n- b\n")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", MemoryBudget(bytes=2 * 2**30)),
        ("512MiB", MemoryBudget(bytes=512 * 2**20)),
        ("1.5 GB", MemoryBudget(bytes=1_500_000_000)),
        ("60%", MemoryBudget(share=0.6)),
        ("100%", MemoryBudget(share=1.0)),
        (1024, MemoryBudget(bytes=1024)),
    ],
)
def test_budget_parsing(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("text", ["lots", "0%", "150%", "-1GiB", "2 GiBs", "", "60 %%", "0GiB", True])
def test_bad_budgets_are_rejected(text):
    with pytest.raises(ValueError, match="expected a size such as"):
        parse_memory_budget(text)


def test_budget_resolves_against_free_memory():
    assert parse_memory_budget("60%").resolve(10 * 2**30) == 6 * 2**30
    assert parse_memory_budget("2GiB").resolve(10 * 2**30) == 2 * 2**30


def test_overrides_are_validated_like_profile_keys():
    profile = apply_overrides(load_profile("cpu-batched"), {"memory_budget": "1GiB", "batch_size": 2})
    assert (profile.memory_budget, profile.batch_size) == ("1GiB", 2)
    with pytest.raises(ProfileError, match="command-line override: batch_size: 'x' is not allowed"):
        apply_overrides(profile, {"batch_size": "x"})
    with pytest.raises(ProfileError, match="cannot be overridden"):
        apply_overrides(profile, {"dtype": "float16"})


def test_decoding_overrides_land_in_the_decoding_block():
    profile = apply_overrides(
        load_profile("cpu-small"), {"model": "base", "beam_size": 5, "language": "de", "initial_prompt": "Protokoll."}
    )
    assert profile.model == ["base"]
    assert (profile.decoding.beam_size, profile.decoding.language, profile.decoding.initial_prompt) == (5, "de", "Protokoll.")
    with pytest.raises(ProfileError, match="decoding.beam_size: 0 is not allowed"):
        apply_overrides(profile, {"beam_size": 0})
    with pytest.raises(ProfileError, match="needs a multilingual model"):
        apply_overrides(load_profile("cpu-small"), {"language": "de"})  # tiny.en


def test_every_override_is_a_command_line_option_and_a_flow_parameter():
    """The CLI and the flow take their overrides by OVERRIDE_KEYS' names (profiles.run_overrides)."""
    import inspect

    from steadyscribe.app.job import add_run_arguments
    from steadyscribe.flows.transcribe import transcribe

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["in.wav", "-o", "out", "--beam-size", "3", "--channels", "split"])
    assert run_overrides(vars(args)) == {**dict.fromkeys(OVERRIDE_KEYS), "beam_size": 3, "channels": "split"}
    assert set(OVERRIDE_KEYS) <= set(inspect.signature(transcribe.fn).parameters)


# ---------------------------------------------------------------- decoding block


def test_decoding_block_is_validated(tmp_path):
    profile = load_profile(str(write(tmp_path, "ok", (
        "model: base\ndecoding: {beam_size: 5, patience: 2, best_of: 3, temperatures: [0, 0.5], initial_prompt: Hi.,"
        " hotwords: [Kubernetes, Nvidia], language: de, task: translate, suppress_tokens: [-1, 50], "
        "condition_on_previous_text: false}\n"
    ))))
    options = profile.decoding.options("de")
    assert (options.beam_size, options.patience, options.best_of, options.temperatures) == (5, 2.0, 3, (0.0, 0.5))
    assert (options.hotwords, options.task, options.suppress_tokens) == (("Kubernetes", "Nvidia"), "translate", (-1, 50))
    bad = {
        "decoding: {beam_size: 0}": "decoding.beam_size",
        "decoding: {patience: 2}": "patience applies to beam search only",
        "decoding: {temperatures: [0.4, 0.2]}": "rising order",
        "decoding: {temperatures: [1.5]}": r"decoding.temperatures\[0\]",
        "decoding: {task: summarize}": "decoding.task",
        "decoding: {suppress_tokens: [-5]}": "token ids",
        "decoding: {language: English}": "language code",
        "decoding: {beams: 5}": "unknown key; allowed keys here: beam_size",
        "model: tiny.en\ndecoding: {task: translate}": "task translate needs a multilingual model",
    }
    for i, (text, message) in enumerate(bad.items()):
        with pytest.raises(ProfileError, match=message):
            load_profile(str(write(tmp_path, f"bad{i}", text + "\n")))


def test_top_level_language_still_works_and_moves_into_decoding(tmp_path):
    old = load_profile(str(write(tmp_path, "old", "model: base\nlanguage: fr\n")))
    assert old.decoding.language == "fr" and old.language == "fr"
    # A child's top-level language overrides its parent's decoding.language like any key.
    write(tmp_path, "parent", "model: base\ndecoding: {language: de, beam_size: 3}\n")
    child = load_profile(str(write(tmp_path, "child", f"extends: {tmp_path / 'parent.yaml'}\nlanguage: fr\n")))
    assert (child.decoding.language, child.decoding.beam_size) == ("fr", 3)
    with pytest.raises(ProfileError, match="disagree"):
        load_profile(str(write(tmp_path, "both", "model: base\nlanguage: fr\ndecoding: {language: de}\n")))


def test_cpu_accurate_uses_beam_search():
    assert load_profile("cpu-accurate").decoding.beam_size == 5
    assert load_profile("cpu-small").decoding.beam_size == 1


# ---------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["profiles", *argv])
    return args.func(args)


def test_cli_list(capsys):
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)


def test_cli_show_prints_the_merged_profile(capsys):
    import yaml

    assert run_cli("show", "cpu-batched") == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["engine"] == ["transformers", "ctranslate2", "whisper"]
    assert "extends" not in shown
    assert load_profile("cpu-batched").model_dump(mode="json") == shown


def test_cli_show_unknown_profile_fails(capsys):
    assert run_cli("show", "nope") == 2
    assert "no profile named 'nope'" in capsys.readouterr().err


def test_cli_validate(tmp_path, capsys):
    good = write(tmp_path, "good", "extends: cpu-small\n")
    bad = write(tmp_path, "bad", "dtype: float8\n")
    assert run_cli("validate", str(good)) == 0
    assert run_cli("validate", str(good), str(bad)) == 2
    captured = capsys.readouterr()
    assert f"ok: {good}" in captured.out
    assert f"{bad}: dtype: 'float8' is not allowed" in captured.err


def test_list_profiles_includes_user_dir(user_dir):
    write(user_dir, "studio", "extends: cpu-small\n")
    assert list_profiles()["studio"] == user_dir / "studio.yaml"


def test_help_names_the_profile_each_command_runs_with():
    from steadyscribe.app.cli import build_parser

    parser = build_parser()
    for command, profile in (("run", "cpu-small"), ("align", "cpu-fast")):
        assert parser.parse_args([command, "in", "--output", "out"]).profile == profile
        subparser = parser._subparsers._group_actions[0].choices[command]
        assert f"(default: {profile})" in " ".join(subparser.format_help().split())


def test_relative_extends_and_candidates_are_taken_from_the_profiles_folder(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    write(folder / "shared", "base", "extends: cpu-small\nbatch_size: 3\n")
    child = write(folder, "child", "extends: shared/base.yaml\nthreads: 1\n")
    picker = write(folder, "picker", "extends: auto\ncandidates: [shared/base.yaml, cpu-small]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    profile = load_profile(str(child))
    assert (profile.batch_size, profile.threads) == (3, 1)
    assert load_profile(str(picker)).candidates == [str(folder / "shared" / "base.yaml"), "cpu-small"]


@pytest.mark.slow
def test_every_profile_error_exits_2_from_any_folder(tmp_path):
    """The real commands, started from another folder, as a cron job starts them."""
    import subprocess
    import sys

    folder = tmp_path / "conf"
    write(folder, "base", "extends: cpu-small\nbatch_size: 3\n")
    good = write(folder, "good", "extends: ./base.yaml\n")
    bad = write(folder, "bad", "extends: ./base.yaml\ndtype: float8\n")
    missing_parent = write(folder, "orphan", "extends: ./nowhere.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def steadyscribe(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "steadyscribe.app.cli", *argv], capture_output=True, text=True, cwd=elsewhere, timeout=300
        )

    shown = steadyscribe("profiles", "show", str(good))
    assert shown.returncode == 0, shown.stderr
    assert "batch_size: 3" in shown.stdout
    assert steadyscribe("profiles", "validate", str(good)).returncode == 0
    for profile in (bad, missing_parent):
        for argv in (("profiles", "validate", str(profile)), ("profiles", "show", str(profile)),
                     ("run", str(folder), "--output", str(tmp_path / "out"), "--profile", str(profile))):
            result = steadyscribe(*argv)
            assert result.returncode == 2, (argv, result.stdout, result.stderr)
            assert str(profile) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
