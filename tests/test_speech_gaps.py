"""No engine empties speech silently (steadyscribe/engines/speech_gaps.py).

Fast speech, synthetic and real (tests/fixtures/fast, scripts/make_fast_fixtures.py), through
the CLI on every CPU profile: every sentence comes out. A few minutes of real recordings end to
end: no stretch the VAD hears comes out without words. And the geometry of the rule itself.
"""

from __future__ import annotations

import json
import subprocess
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from helpers import FIXTURES, REAL, ROOT, long_real_file, run_cli
from steadyscribe.engines.base import WindowResult
from steadyscribe.engines.speech_gaps import find_gaps, passes, unheard_warning
from steadyscribe.metrics import corpus_wer, normalize_text
from steadyscribe.records import Segment, Window, Word
from steadyscribe.vad import FRAME_S

FAST = FIXTURES / "fast"
FAST_FILES = ("fast_synthetic", "fast_real")
PROFILES = ("cpu-small", "cpu-fast", "cpu-batched")
# Share of each sentence's words that must come out near it: a sentence left out scores about 0
# (tiny.en garbles 260 wpm espeak-ng: "The pilot's house and the flight ..." scores 0.4).
MIN_SENTENCE_RECALL = {"fast_synthetic": 0.3, "fast_real": 0.5}
MAX_FAST_WER = {"fast_synthetic": 0.4, "fast_real": 0.15}


# ---------------------------------------------------------------- the rule, without a model


def _mask(seconds: float, speech: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(int(seconds / FRAME_S), dtype=bool)
    for start, end in speech:
        mask[int(start / FRAME_S) : int(end / FRAME_S)] = True
    return mask


def _segment(*words: tuple[str, float, float], avg_logprob: float = -0.3) -> Segment:
    return Segment(words[0][1], words[-1][2], " ".join(w for w, _, _ in words), [Word(*w, 0.9) for w in words], avg_logprob, 0.1, 1.2)


def test_gaps_are_the_stretches_of_speech_between_words():
    window = Window("f", 0, 10.0, 40.0)
    speech = _mask(40.0, [(10.0, 40.0)])
    result = WindowResult(window, "en", [_segment(("one", 11.0, 11.5), ("two", 11.6, 12.0)), _segment(("three", 20.0, 20.5))])
    gaps = find_gaps(result, speech)
    assert [(g.start, g.end) for g in gaps] == [(12.0, 20.0), (20.5, 40.0)]
    assert gaps[0].speech_s == pytest.approx(8.0, abs=2 * FRAME_S)
    # A second of speech before the first word is a pause, breath or filler; an empty window is one gap.
    assert find_gaps(WindowResult(window, "en", []), speech)[0].start == 10.0
    # Gaps without speech are pauses.
    quiet = _mask(40.0, [(11.0, 12.0), (20.0, 20.5)])
    assert find_gaps(result, quiet) == []


def test_a_gap_takes_text_that_needs_no_fallback_then_the_fallbacks_least_bad_text_unless_it_loops():
    assert passes([_segment(("hello", 1.0, 1.5))])
    assert not passes([])
    assert not passes([_segment(("hello", 1.0, 1.5), avg_logprob=-1.4)])
    assert passes([_segment(("hello", 1.0, 1.5), avg_logprob=-1.4)], "fallback")
    looping = _segment(("hello", 1.0, 1.5))
    looping.compression_ratio = 3.1
    assert not passes([looping], "fallback")


def test_the_warning_names_the_stretches_and_their_total():
    window = Window("f", 0, 0.0, 30.0)
    speech = _mask(30.0, [(0.0, 26.6)])
    warning = unheard_warning(find_gaps(WindowResult(window, None, []), speech))
    assert warning.startswith("26.6 s of speech without text")
    assert "0.0-30.0 s (26.6 s)" in warning
    assert unheard_warning([]) is None


# ---------------------------------------------------------------- through the CLI, every CPU engine


def run_tiny(inputs: list[Path], output: Path, profile: str) -> subprocess.CompletedProcess:
    args = [*map(str, inputs), "--output", str(output), "--profile", profile, "--model", "tiny.en"]
    return run_cli(args, timeout_s=1800, cwd=ROOT)


def table(output: Path, name: str) -> list[dict]:
    return ds.dataset(output / name, partitioning="hive").to_table().to_pylist()


def words_by_stem(output: Path) -> dict[str, list[dict]]:
    words: dict[str, list[dict]] = {}
    for row in sorted(table(output, "words"), key=lambda r: (r["source"], r["start"], r["segment_index"], r["word_index"])):
        words.setdefault(Path(row["source"]).stem, []).append(row)
    return words


def sentence_recall(sentence: dict, words: list[dict]) -> float:
    """Share of the sentence's words found, in order, among the words timed within a second of it."""
    reference = normalize_text(sentence["text"]).split()
    near = [w for w in words if sentence["start"] - 1.0 <= (w["start"] + w["end"]) / 2 <= sentence["end"] + 1.0]
    hypothesis = normalize_text(" ".join(w["word"] for w in near)).split()
    matched = sum(block.size for block in SequenceMatcher(a=reference, b=hypothesis, autojunk=False).get_matching_blocks())
    return matched / len(reference)


@pytest.fixture(scope="module", params=PROFILES)
def fast_run(request, prefect_server, tmp_path_factory):
    output = tmp_path_factory.mktemp(f"fast-{request.param}") / "out"
    done = run_tiny([FAST / f"{name}.flac" for name in FAST_FILES], output, request.param)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return request.param, {Path(r["source"]).stem: r for r in table(output, "files")}, words_by_stem(output)


@pytest.mark.slow
def test_every_sentence_of_fast_speech_comes_out(fast_run):
    profile, files, words = fast_run
    for name in FAST_FILES:
        truth = json.loads((FAST / f"{name}.json").read_text())
        assert files[name]["status"] == "ok"
        recalls = [sentence_recall(sentence, words.get(name, [])) for sentence in truth["sentences"]]
        missing = [s["text"] for s, recall in zip(truth["sentences"], recalls) if recall < MIN_SENTENCE_RECALL[name]]
        assert not missing, f"{profile} {name}: sentences left out: {missing} (recalls {recalls})"
        wer = corpus_wer([(truth["text"], " ".join(w["word"] for w in words[name]))])
        assert wer <= MAX_FAST_WER[name], f"{profile} {name}: WER {wer:.3f}"
        # The column is there, and no clear speech is left without text.
        assert files[name]["speech_without_text_s"] == 0.0, files[name]["warnings"]


# ---------------------------------------------------------------- a few minutes of real speech in one file

@pytest.mark.slow
def test_no_stretch_of_heard_speech_in_a_long_real_file_comes_out_without_words(prefect_server, tmp_path):
    (tmp_path / "in").mkdir()
    path, text = long_real_file(tmp_path / "in" / "long_real.flac")
    output = tmp_path / "out"
    done = run_tiny([path], output, "cpu-fast")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    (row,) = table(output, "files")
    assert row["status"] == "ok"
    assert row["speech_without_text_s"] == 0.0, row["warnings"]
    words = words_by_stem(output)["long_real"]
    assert corpus_wer([(text, " ".join(w["word"] for w in words))]) <= 0.2
