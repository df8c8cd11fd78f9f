"""Channels as speakers, stage by stage: the channel split at decode, copy and silence detection,
joining the channels' transcripts, the new columns and the profile option. Real recordings
(tests/fixtures/real and the stereo call fixture); the flow end to end is in test_channels_e2e.py.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import FIXTURES, decode_fixture, fixture_script
from steadyscribe.app.job import add_run_arguments
from steadyscribe.flows.transcribe import output_settings
from steadyscribe.profiles import ProfileError, apply_overrides, load_profile, validate_profile_data
from steadyscribe.records import DecodedAudio, InputFile, Plan, Segment, StabilizationCounts, Transcript, Word
from steadyscribe.schema import SCHEMAS
from steadyscribe.tasks.channels import (
    ChannelSplit,
    channel_correlations,
    channel_file_id,
    copies_of_earlier_channels,
    join_channels,
    split_channels,
)
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import decode_input
from steadyscribe.schema import open_table
from steadyscribe.tasks.write import FileResult, RunInfo, settings_key, to_srt, write_file_results
from steadyscribe.vad import VadThresholds

CALL = FIXTURES / "stereo" / "call_r04_r05.flac"
SPEAKERS = ["agent", "customer"]


SCRIPT = fixture_script("make_stereo_fixture")


def recording(name: str) -> np.ndarray:
    return SCRIPT.read_mono(FIXTURES / "real" / f"{name}.flac")


def decoded_mono(name: str, work_dir: Path) -> np.ndarray:
    return np.asarray(decode_fixture(f"real/{name}", work_dir))


# ---- decode ------------------------------------------------------------------------------------


def test_split_decodes_each_channel_to_its_own_pcm(tmp_path):
    decoded = decode_input(InputFile(str(CALL)), tmp_path, channels="split")
    assert decoded.status == "ok" and decoded.pcm_path is None and len(decoded.channel_paths) == 2
    agent, customer = (np.asarray(load_pcm(p)) for p in decoded.channel_paths)
    assert len(agent) == len(customer) == round(decoded.duration_s * 16000)
    # Each channel is its recording where the fixture put it (to one 16-bit step: the fixture was
    # written back as 16-bit), and nothing of the other.
    r04, r05 = decoded_mono("r04_mfa_acoustic", tmp_path), decoded_mono("r05_mfa_cold", tmp_path)
    offset = 14 * 16000
    np.testing.assert_allclose(agent[: len(r04)], r04, rtol=0, atol=1.01 / 32768)
    np.testing.assert_allclose(customer[offset : offset + len(r05)], r05, rtol=0, atol=1.01 / 32768)
    assert not agent[len(r04) :].any() and not customer[:offset].any()


def test_mix_is_unchanged_and_a_mono_input_splits_into_one_channel(tmp_path):
    mixed = decode_input(InputFile(str(CALL)), tmp_path)
    assert mixed.pcm_path and mixed.channel_paths == []
    split = decode_input(InputFile(str(FIXTURES / "real" / "r13_libri_61.flac")), tmp_path, channels="split")
    [channel] = split.channel_paths
    np.testing.assert_array_equal(np.asarray(load_pcm(channel)), decoded_mono("r13_libri_61", tmp_path))


def test_a_failed_split_decode_leaves_no_channel_files(tmp_path):
    broken = tmp_path / "broken.flac"
    broken.write_bytes(CALL.read_bytes()[:4000])  # a header and a little audio: fails as too short
    work = tmp_path / "work"
    work.mkdir()
    decoded = decode_input(InputFile(str(broken)), work, channels="split")
    assert decoded.status == "failed" and list(work.iterdir()) == []


# ---- copies and silence ------------------------------------------------------------------------


def test_two_different_talkers_do_not_correlate_and_copies_do():
    speech, other = recording("r04_mfa_acoustic"), recording("r05_mfa_cold")
    n = min(len(speech), len(other))
    speech, other = speech[:n], other[:n]
    correlations = channel_correlations([speech, other, 0.3 * speech, -speech, np.zeros(n, np.float32)])
    assert abs(correlations[0, 1]) < 0.2
    assert correlations[0, 2] > 0.999 and correlations[0, 3] < -0.999
    assert not correlations[4].any()  # a channel of zeros correlates with nothing: it is silent, not a copy
    assert copies_of_earlier_channels(correlations) == {2: 0, 3: 0}


def test_copies_are_matched_to_the_first_original():
    speech = recording("r13_libri_61")
    assert copies_of_earlier_channels(channel_correlations([speech, speech, speech])) == {1: 0, 2: 0}


def split_of(tmp_path: Path, channels: np.ndarray, speakers=SPEAKERS):
    path = tmp_path / "input.flac"
    SCRIPT.write_stereo_flac(path, channels)
    decoded = decode_input(InputFile(str(path)), tmp_path, channels="split")
    return decoded, split_channels(decoded, speakers, VadThresholds())


def test_mono_stored_as_stereo_is_transcribed_once(tmp_path):
    speech = recording("r13_libri_61")
    decoded, split = split_of(tmp_path, SCRIPT.stereo(speech, speech))
    assert list(split.transcribe) == [0] and split.copies == {1: 0} and split.silent == []
    assert split.transcribe[0].file_id == channel_file_id(decoded.file_id, 0)
    assert split.transcribe[0].pcm_path == decoded.channel_paths[0]
    assert split.warnings == ["channel 1 (customer) is a copy of channel 0 (agent): transcribed once, as channel 0"]


def test_a_silent_channel_is_found_by_the_vad(tmp_path):
    speech = recording("r15_ljspeech")
    hiss = (np.random.default_rng(3).standard_normal(len(speech)) * 1e-3).astype(np.float32)
    _, split = split_of(tmp_path, SCRIPT.stereo(hiss, speech), speakers=None)
    assert list(split.transcribe) == [1] and split.silent == [0] and split.copies == {}
    assert split.warnings == ["channel 0 (ch0) is silent (the VAD found no speech in it): not transcribed"]


def test_two_talkers_are_both_transcribed(tmp_path):
    decoded = decode_input(InputFile(str(CALL)), tmp_path, channels="split")
    split = split_channels(decoded, SPEAKERS, VadThresholds())
    assert list(split.transcribe) == [0, 1] and split.warnings == []
    assert [u.file_id for u in split.transcribe.values()] == [f"{decoded.file_id}:ch0", f"{decoded.file_id}:ch1"]


# ---- joining the channels' transcripts -------------------------------------------------------


def segment(start: float, words: str) -> Segment:
    tokens = [Word(f" {w}", start + i * 0.5, start + i * 0.5 + 0.4, 0.9) for i, w in enumerate(words.split())]
    return Segment(start, tokens[-1].end, f" {words}", tokens)


def test_join_orders_segments_of_all_channels_by_time_and_tags_them():
    split = ChannelSplit("f", 20.0, ["agent", "customer", "ch2"], {}, silent=[2])
    agent = Transcript("f:ch0", "en", [segment(0.0, "hello how can I help"), segment(6.0, "sure")], batch_size=4,
                       stabilization=StabilizationCounts(words_dropped=1, skipped_ms=2000), warnings=["kept 3 words"])
    customer = Transcript("f:ch1", "en", [segment(2.0, "hi I have a question")], batch_size=4,
                          stabilization=StabilizationCounts(words_dropped=0, skipped_ms=5000))
    joined = join_channels(split, {0: agent, 1: customer})
    assert joined.file_id == "f" and joined.language == "en" and joined.batch_size == 4
    assert [(s.start, s.channel, s.speaker) for s in joined.segments] == [
        (0.0, 0, "agent"), (2.0, 1, "customer"), (6.0, 0, "agent")
    ]
    # The silent third channel's 20 s count as skipped, on top of what the two skipped.
    assert joined.stabilization == StabilizationCounts(words_dropped=1, skipped_ms=27000)
    assert joined.warnings == ["channel 0 (agent): kept 3 words"]


def test_join_of_no_transcribed_channel_is_an_empty_transcript():
    split = ChannelSplit("f", 5.0, ["ch0", "ch1"], {}, silent=[0, 1], warnings=["both silent"])
    joined = join_channels(split, {})
    assert joined.segments == [] and joined.language is None
    assert joined.stabilization == StabilizationCounts(skipped_ms=10000) and joined.warnings == ["both silent"]


# ---- tables ------------------------------------------------------------------------------------

PLAN = Plan(engine="whisper", model="tiny.en", profile="cpu-small")


def result_with(source: str, segments: list[Segment]) -> FileResult:
    file_id = hashlib.sha256(source.encode()).hexdigest()
    return FileResult.from_decoded(
        DecodedAudio(source, "ok", file_id=file_id, duration_s=10.0),
        Transcript(file_id, "en", segments),
    )


def tagged(s: Segment, channel: int, speaker: str) -> Segment:
    s.channel, s.speaker = channel, speaker
    return s


def test_rows_carry_channel_and_speaker_and_old_tables_still_read(tmp_path):
    run = RunInfo("run-1", date(2026, 3, 14), PLAN, settings_key(PLAN))
    split = result_with("/in/call.wav", [tagged(segment(0.0, "hello there"), 0, "agent"), tagged(segment(1.0, "hi"), 1, "customer")])
    mixed = result_with("/in/memo.wav", [segment(0.0, "note to self")])
    write_file_results(str(tmp_path), run, [split, mixed])
    # A words table written before the columns existed (schema as it was), in the same output.
    old_schema = SCHEMAS["words"].remove(SCHEMAS["words"].get_field_index("channel"))
    old_schema = old_schema.remove(old_schema.get_field_index("speaker"))
    old = pa.Table.from_pylist(
        [{"run_id": "run-0", "file_id": "old", "source": "/in/old.wav", "segment_index": 0, "word_index": 0,
          "word": " old", "start": 0.0, "end": 0.5, "probability": 0.9}], old_schema,
    )
    pq.write_table(old, tmp_path / "words" / "run_date=2026-03-14" / "run-0-old.parquet")

    words = {(r["source"], r["word"]): (r["channel"], r["speaker"]) for r in open_table(str(tmp_path), "words").to_table().to_pylist()}
    assert words == {
        ("/in/call.wav", " hello"): (0, "agent"), ("/in/call.wav", " there"): (0, "agent"),
        ("/in/call.wav", " hi"): (1, "customer"),
        ("/in/memo.wav", " note"): (0, None), ("/in/memo.wav", " to"): (0, None), ("/in/memo.wav", " self"): (0, None),
        ("/in/old.wav", " old"): (None, None),
    }
    rows = duckdb.sql(
        f"SELECT source, channel, speaker FROM read_parquet('{tmp_path}/words/**/*.parquet', "
        "hive_partitioning = true, union_by_name = true) WHERE source = '/in/old.wav'"
    ).fetchall()
    assert rows == [("/in/old.wav", None, None)]
    segments = open_table(str(tmp_path), "segments").to_table().to_pylist()
    assert {(s["source"], s["channel"], s["speaker"]) for s in segments} == {
        ("/in/call.wav", 0, "agent"), ("/in/call.wav", 1, "customer"), ("/in/memo.wav", 0, None)
    }


def test_subtitles_name_the_speaker_of_each_cue():
    transcript = Transcript("f", "en", [tagged(segment(0.0, "hello"), 0, "agent"), tagged(segment(1.0, "hi"), 1, "customer")])
    assert "agent: hello" in to_srt(transcript) and "customer: hi" in to_srt(transcript)
    assert "\nhello\n" in to_srt(Transcript("f", "en", [segment(0.0, "hello")]))


# ---- profile, overrides, settings key ----------------------------------------------------------


def test_profile_audio_options_are_validated():
    base = load_profile("cpu-small").model_dump()
    assert load_profile("cpu-small").audio.channels == "mix"
    good = validate_profile_data({**base, "audio": {"channels": "split", "speakers": SPEAKERS}})
    assert (good.audio.channels, good.audio.speakers) == ("split", SPEAKERS)
    for audio, message in (
        ({"channels": "stereo"}, "audio.channels"),
        ({"speakers": "agent"}, "audio.speakers"),
        ({"speakers": ["agent", "agent"]}, "distinct"),
        ({"speakers": ["agent", " "]}, "non-empty"),
    ):
        with pytest.raises(ProfileError, match=message):
            validate_profile_data({**base, "audio": audio})


def test_channels_override_and_settings_key():
    mixed = load_profile("cpu-small")
    split = apply_overrides(mixed, {"channels": "split"})
    assert split.audio.channels == "split"
    with pytest.raises(ProfileError, match="audio.channels"):
        apply_overrides(mixed, {"channels": "both"})
    # Mixed runs keep the settings key they had before the option existed; split runs get their own.
    assert "audio" not in output_settings(mixed)
    assert settings_key(PLAN, output_settings(split)) != settings_key(PLAN, output_settings(mixed))
    named = apply_overrides(validate_profile_data({**mixed.model_dump(), "audio": {"speakers": SPEAKERS}}), {"channels": "split"})
    assert settings_key(PLAN, output_settings(named)) != settings_key(PLAN, output_settings(split))


def test_run_command_takes_channels():
    import argparse

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    assert parser.parse_args(["in.wav", "-o", "out", "--channels", "split"]).channels == "split"
    assert parser.parse_args(["in.wav", "-o", "out"]).channels is None
    with pytest.raises(SystemExit):
        parser.parse_args(["in.wav", "-o", "out", "--channels", "left"])


def test_a_group_transcribes_mixed_files_whole_and_split_files_by_channel(tmp_path):
    from steadyscribe.flows.group import transcription_units

    memo = DecodedAudio("memo.wav", "ok", file_id="m", pcm_path="m.f32", duration_s=3.0)
    call = decode_input(InputFile(str(CALL)), tmp_path, channels="split")
    split = split_channels(call, SPEAKERS, VadThresholds())
    units = transcription_units({"m": memo, call.file_id: call}, {call.file_id: split})
    assert list(units) == ["m", f"{call.file_id}:ch0", f"{call.file_id}:ch1"]
    assert units["m"] is memo and units[f"{call.file_id}:ch1"].pcm_path == call.channel_paths[1]
