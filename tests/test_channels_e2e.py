"""Channels as speakers, end to end: the flow with `audio.channels: split`, tiny.en, real recordings.

One run transcribes, in the same engine batches: the stereo call fixture (tests/fixtures/stereo:
r04 on channel 0, r05 from 14 s on channel 1), the two recordings on their own as mono files
(what each channel is held to), a mono recording stored as stereo and a recording beside a
silent channel. The DuckDB queries are the ones docs/tables.md shows, read from the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from helpers import FIXTURES, documented_query, fixture_script
from steadyscribe.flows.transcribe import transcribe
from steadyscribe.metrics import corpus_wer, normalize_text

pytestmark = pytest.mark.slow

CALL = FIXTURES / "stereo" / "call_r04_r05.flac"
TRUTH = json.loads(CALL.with_suffix(".json").read_text())
# A channel's WER may trail its recording's own (mono) WER by this much: its windows are cut
# elsewhere (the customer's channel starts with 14 s of silence), which moves a word or two.
WER_MARGIN = 0.05
# Issue 20 asks for 0.5 s. Measured: agent +0.17 s, customer +0.41 s. What is left is filler
# time: Whisper writes no "uh", so its words take the fillers' time beside them, and the customer's
# congested voice hides them from the VAD too.
TALK_TIME_TOLERANCE_S = 0.5
TURN_PAUSE_S = 0.5  # the documented talk-time query's turn break


@pytest.fixture(scope="module")
def split_run(prefect_server, tmp_path_factory):
    script = fixture_script("make_stereo_fixture")
    inputs = tmp_path_factory.mktemp("inputs")
    shutil.copy(CALL, inputs)
    for channel in TRUTH["channels"]:
        shutil.copy(FIXTURES / "real" / f"{channel['recording']}.flac", inputs)
    mono = script.read_mono(FIXTURES / "real" / "r13_libri_61.flac")
    script.write_stereo_flac(inputs / "mono_as_stereo.flac", script.stereo(mono, mono))
    voice = script.read_mono(FIXTURES / "real" / "r15_ljspeech.flac")
    hiss = (np.random.default_rng(3).standard_normal(len(voice)) * 1e-3).astype(np.float32)
    script.write_stereo_flac(inputs / "one_silent_channel.flac", script.stereo(voice, hiss))
    profile = tmp_path_factory.mktemp("profiles") / "calls.yaml"
    # Batch 4: windows of both channels and of the other files share engine batches.
    profile.write_text(
        "extends: cpu-fast\nmodel: tiny.en\nbatch_size: 4\naudio: {channels: split, speakers: [agent, customer]}\n"
    )
    output = tmp_path_factory.mktemp("out")
    summary = transcribe(inputs=[str(inputs)], output=str(output), profile=str(profile))
    return output, summary


def words_of(output: Path, name: str) -> list[tuple]:
    return duckdb.sql(
        f"SELECT w.channel, w.speaker, w.word, w.start, w.\"end\" "
        f"FROM read_parquet('{output}/words/**/*.parquet', hive_partitioning = true) AS w "
        f"WHERE w.source LIKE '%/{name}.flac' ORDER BY w.segment_index, w.word_index"
    ).fetchall()


def files_row(output: Path, name: str) -> dict:
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{output}/files/**/*.parquet', hive_partitioning = true) "
        f"WHERE source LIKE '%/{name}.flac'"
    )
    [row] = relation.fetchall()
    return dict(zip(relation.columns, row))


def test_every_file_is_ok(split_run):
    output, summary = split_run
    assert summary.files_ok == 5 and summary.files_failed == 0
    assert files_row(output, "call_r04_r05")["warnings"] == []


def test_each_channel_matches_its_own_recording_as_well_as_the_recording_alone(split_run):
    output, _ = split_run
    call = words_of(output, "call_r04_r05")
    for channel in TRUTH["channels"]:
        heard = " ".join(word for c, _, word, _, _ in call if c == channel["channel"])
        alone = " ".join(word for _, _, word, _, _ in words_of(output, channel["recording"]))
        channel_wer = corpus_wer([(channel["text"], heard)])
        mono_wer = corpus_wer([(channel["text"], alone)])
        print(f"channel {channel['channel']} ({channel['recording']}): WER {channel_wer:.1%}, alone {mono_wer:.1%}")
        assert channel_wer <= mono_wer + WER_MARGIN


def test_each_word_has_its_channels_speaker_and_lies_in_its_speech(split_run):
    output, _ = split_run
    call = words_of(output, "call_r04_r05")
    assert {(c, s) for c, s, *_ in call} == {(0, "agent"), (1, "customer")}
    for channel in TRUTH["channels"]:
        first, last = channel["words"][0]["start"], channel["words"][-1]["end"]
        spans = [(start, end) for c, _, _, start, end in call if c == channel["channel"]]
        # The customer's words all come after the 14 s they wait: none of the agent's leaked across.
        assert all(first - 0.5 <= start and end <= last + 0.5 for start, end in spans), channel["speaker"]


def talk_time_s(spans: list[tuple[float, float]], turn_pause_s: float = TURN_PAUSE_S) -> float:
    """The time turns take: spans joined across pauses shorter than `turn_pause_s` (as the documented query does)."""
    total, turn = 0.0, None
    for start, end in sorted(spans):
        if turn is not None and start - turn[1] < turn_pause_s:
            turn[1] = max(turn[1], end)
            continue
        total += turn[1] - turn[0] if turn else 0.0
        turn = [start, end]
    return total + (turn[1] - turn[0] if turn else 0.0)


def test_talk_time_query_gives_each_speakers_talk_time(split_run):
    output, _ = split_run
    rows = duckdb.sql(documented_query("talk time per speaker", output)).fetchall()
    talk = {speaker: seconds for source, speaker, seconds, *_ in rows if source.endswith("/call_r04_r05.flac")}
    for channel in TRUTH["channels"]:
        # The reference's words as WER counts them: fillers (um, uh), which Whisper does not write
        # down, are left out, since no transcript can hold their time.
        spoken = [(w["start"], w["end"]) for w in channel["words"] if normalize_text(w["word"]).strip()]
        truth_s = talk_time_s(spoken)
        print(f"{channel['speaker']}: talk time {talk[channel['speaker']]:.2f} s, reference {truth_s:.2f} s "
              f"(with fillers {talk_time_s([(w['start'], w['end']) for w in channel['words']]):.2f} s)")
        assert abs(talk[channel["speaker"]] - truth_s) <= TALK_TIME_TOLERANCE_S


def test_overlap_query_finds_where_both_talk(split_run):
    output, _ = split_run
    rows = duckdb.sql(documented_query("overlaps between speakers", output)).fetchall()
    [(_, first, second, overlap_s, overlap_start, overlap_end)] = [r for r in rows if r[0].endswith("/call_r04_r05.flac")]
    agent, customer = (channel["words"] for channel in TRUTH["channels"])
    truth_s = sum(
        max(0.0, min(a["end"], c["end"]) - max(a["start"], c["start"])) for a in agent for c in customer
    )
    print(f"overlap {overlap_s:.2f} s from {overlap_start:.1f} to {overlap_end:.1f} s, reference {truth_s:.2f} s")
    assert (first, second) == ("agent", "customer")
    assert customer[0]["start"] - 0.5 <= overlap_start and overlap_end <= agent[-1]["end"] + 0.5
    assert abs(overlap_s - truth_s) <= 2 * TALK_TIME_TOLERANCE_S


def test_conversation_query_interleaves_the_speakers_in_time_order(split_run):
    output, _ = split_run
    rows = [r for r in duckdb.sql(documented_query("the conversation in time order", output)).fetchall()
            if r[0].endswith("/call_r04_r05.flac")]
    starts = [start for _, start, *_ in rows]
    speakers = [speaker for *_, speaker, _ in rows]
    assert starts == sorted(starts)
    turns = [s for i, s in enumerate(speakers) if i == 0 or speakers[i - 1] != s]
    assert turns[0] == "agent" and len(turns) >= 3  # the customer comes in while the agent still talks


def test_mono_stored_as_stereo_is_transcribed_once(split_run):
    output, _ = split_run
    words = words_of(output, "mono_as_stereo")
    assert words and {c for c, *_ in words} == {0}
    reference = json.loads((FIXTURES / "real" / "r13_libri_61.json").read_text())["text"]
    assert corpus_wer([(reference, " ".join(w for _, _, w, _, _ in words))]) <= 0.3
    [warning] = files_row(output, "mono_as_stereo")["warnings"]
    assert "channel 1 (customer) is a copy of channel 0 (agent)" in warning


def test_a_silent_channel_is_left_out_and_said(split_run):
    output, _ = split_run
    words = words_of(output, "one_silent_channel")
    assert words and {c for c, *_ in words} == {0}
    row = files_row(output, "one_silent_channel")
    [warning] = row["warnings"]
    assert "channel 1 (customer) is silent" in warning
    assert row["skipped_s"] >= row["duration_s"] - 0.001  # the silent channel's seconds count as skipped (ms)


def test_run_command_splits_channels(prefect_server, tmp_path):
    from steadyscribe.app.cli import main

    script = fixture_script("make_stereo_fixture")
    memo = script.read_mono(FIXTURES / "real" / "r26_goforward.flac")
    source = tmp_path / "memo.flac"
    script.write_stereo_flac(source, script.stereo(memo, memo))
    output = tmp_path / "out"
    assert main(["run", str(source), "--output", str(output), "--channels", "split"]) == 0
    words = words_of(output, "memo")
    assert words and {(c, s) for c, s, *_ in words} == {(0, "ch0")}
    assert files_row(output, "memo")["warnings"] == ["channel 1 (ch1) is a copy of channel 0 (ch0): transcribed once, as channel 0"]
