"""Known-text alignment end to end: `steadyscribe align` and the flow on tiny.en and real word-timed speech.

The criterion (issue 20): given their reference text, at least 90% of the words of the real
word-timed recordings within 200 ms of the reference times, scored by the real-speech set's rule
(../shared/realspeech/README.md: words matched by their letters, fillers included); and better
than transcription's timing on the same files with the same engine.
"""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest
from prefect.exceptions import FailedRun

from align_inputs import TIMED, prepare
from steadyscribe.app.cli import main
from steadyscribe.errors import FilesFailed
from steadyscribe.flows.transcribe import transcribe
from steadyscribe.progress import RunProgress, reporting
from steadyscribe.metrics import boundary_errors

pytestmark = pytest.mark.slow

MODEL = ["--model", "tiny.en"]  # cpu-fast would take base.en where it is installed


def rows(output, table: str) -> list[dict]:
    return ds.dataset(output / table, partitioning="hive").to_table().to_pylist()


def words_by_file(output) -> dict[str, list[dict]]:
    words: dict[str, list[dict]] = {}
    for row in sorted(rows(output, "words"), key=lambda r: (r["source"], r["segment_index"], r["word_index"])):
        words.setdefault(row["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0], []).append(row)
    return words


def within(expected: dict, words: dict[str, list[dict]], names: list[str], literal: bool) -> float:
    """Pooled share of reference words within 200 ms (both edges)."""
    hits = total = 0
    for name in names:
        stats = boundary_errors(expected[name], words.get(name, []), literal=literal)
        hits += round(stats.within_tolerance_rate * stats.reference_count)
        total += stats.reference_count
    return hits / total


@pytest.fixture(scope="module")
def aligned(prefect_server, tmp_path_factory):
    """`steadyscribe align` over the real recordings, a joined long file and texts that do not fit."""
    inputs, output = tmp_path_factory.mktemp("align-in"), tmp_path_factory.mktemp("align-out")
    expected = prepare(inputs)
    summary_path = tmp_path_factory.mktemp("summary") / "summary.json"
    code = main(["align", str(inputs), "--output", str(output), *MODEL, "--summary-json", str(summary_path)])
    files = {row["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: row for row in rows(output, "files")}
    return code, expected, files, words_by_file(output), json.loads(summary_path.read_text())


@pytest.fixture(scope="module")
def transcribed(prefect_server, tmp_path_factory):
    """The same recordings transcribed by the same engine and model, for comparison."""
    inputs, output = tmp_path_factory.mktemp("transcribe-in"), tmp_path_factory.mktemp("transcribe-out")
    prepare(inputs)
    for path in inputs.iterdir():
        if path.stem not in TIMED:
            path.unlink()
    assert main(["run", str(inputs), "--output", str(output), "--profile", "cpu-fast", *MODEL]) == 0
    return words_by_file(output)


def test_every_input_has_one_row_naming_the_mode(aligned):
    code, _, files, _, summary = aligned
    assert code == 1  # some files failed: their texts do not fit
    assert set(files) == {*TIMED, "joined", "extra", "mismatch", "noise", "no_text"}
    assert {row["mode"] for row in files.values()} == {"align"}
    assert all(files[name]["status"] == "ok" for name in [*TIMED, "joined", "extra"])
    assert summary["files_failed"] == 3


def test_word_times_of_a_given_text_land_on_real_speech(aligned, transcribed):
    _, expected, files, words, _ = aligned
    rule = within(expected, words, TIMED, literal=True)
    normalized = within(expected, words, TIMED, literal=False)
    transcription = within(expected, transcribed, TIMED, literal=True)
    joined = within(expected, words, ["joined"], literal=True)
    print(
        f"within 200 ms, align: {rule:.3f} (README rule), {normalized:.3f} (normalized matching); "
        f"transcription: {transcription:.3f}; joined long file: {joined:.3f}"
    )
    assert rule >= 0.90
    assert rule >= transcription + 0.05
    # Three windows: the text is split across them through a first transcription. Measured 0.834:
    # 0.896 before the judgement, which leaves out 13 words of r05 that the model is unsure of
    # and that the VAD calls silence (Silero misses r05's voice for ~12 s after r04's in one file).
    assert joined >= 0.80
    for name in TIMED:
        assert files[name]["aligned_share"] >= 0.95, name
        assert files[name]["words_n"] == len(words[name])


def test_a_text_that_does_not_fit_fails_its_file_and_places_no_words(aligned):
    _, _, files, words, _ = aligned
    mismatch, noise, no_text = files["mismatch"], files["noise"], files["no_text"]
    assert mismatch["status"] == "failed" and "the text does not match the audio" in mismatch["error"]
    assert "of its 59 words" in mismatch["error"]
    assert noise["status"] == "failed" and "holds no speech" in noise["error"]
    assert no_text["status"] == "failed" and "no_text.txt does not exist" in no_text["error"]
    assert not {"mismatch", "noise", "no_text"} & set(words)


def test_words_the_audio_does_not_say_are_not_placed_on_its_silence(aligned):
    _, expected, files, words, _ = aligned
    extra = files["extra"]
    spoken_end = expected["extra"][-1]["end"]
    assert extra["status"] == "ok" and extra["words_n"] == len(words["extra"])
    assert max(w["end"] for w in words["extra"]) <= spoken_end + 0.2  # nothing on the silence after it
    assert any("12 of 83 words of the text were not aligned" in warning for warning in extra["warnings"])
    assert extra["aligned_share"] == pytest.approx(71 / 83)


def test_the_flow_aligns_with_a_text_suffix_and_refuses_an_engine_that_cannot(prefect_server, tmp_path):
    prepare(tmp_path)
    inputs = [str(tmp_path / "r09_librivox_austen.flac"), str(tmp_path / "mismatch.wav")]
    # FailedRun where a busy server answers the final state update with its own copy (docs/operations.md).
    with reporting(RunProgress()) as progress, pytest.raises((FilesFailed, FailedRun)):
        transcribe(inputs=inputs, output=str(tmp_path / "out"), profile="cpu-fast", model="tiny.en", text_suffix=".txt")
    assert [f.source.rsplit("/", 1)[-1] for f in progress.summary.failures] == ["mismatch.wav"]
    [ok] = [row for row in rows(tmp_path / "out", "files") if row["status"] == "ok"]
    assert (ok["mode"], ok["aligned_share"], ok["words_n"]) == ("align", 1.0, 71)
    # The batch-1 whisper engine has no alignment of given text.
    code = main(["align", inputs[0], "--output", str(tmp_path / "out2"), "--profile", "cpu-small", *MODEL])
    assert code == 2
    # One text per file: its channels are not split into speakers.
    assert main(["align", inputs[0], "--output", str(tmp_path / "out3"), "--channels", "split", *MODEL]) == 2
