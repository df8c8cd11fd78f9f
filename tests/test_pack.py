"""Cross-file window packing (steadyscribe/engines/packing.py): placement, words given back by time, and no cost in words."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steadyscribe.engines.base import WindowResult
from steadyscribe.records import Segment, Window, Word
from steadyscribe.engines.packing import PackedWindow, pack_windows, packed_samples, unpack_result


def test_short_files_are_packed_first_fit_and_long_files_stay_alone():
    windows = [
        Window("a", 0, 0.0, 6.0),
        Window("long", 0, 0.0, 28.0),
        Window("long", 1, 28.0, 40.0),  # a file of two windows is never packed
        Window("b", 0, 0.0, 20.0),
        Window("c", 0, 0.0, 5.0),
        Window("d", 0, 0.0, 29.5),  # with a gap it no longer fits any window
        Window("e", 0, 0.0, 3.0),
    ]
    items = pack_windows(windows, max_window_s=30.0, gap_s=1.0)
    packs = [item for item in items if isinstance(item, PackedWindow)]
    alone = [item for item in items if isinstance(item, Window)]
    # c does not fit after a and b (27 s + 1 + 5); e goes back to the first window with room.
    assert [[m.window.file_id for m in p.members] for p in packs] == [["a", "b"], ["c", "e"]]
    assert [m.offset for m in packs[0].members] == [0.0, 7.0] and packs[0].window.end == 27.0
    assert [(w.file_id, w.index) for w in alone] == [("long", 0), ("long", 1), ("d", 0)]


def test_every_window_is_decoded_exactly_once():
    rng = np.random.default_rng(3)
    windows = [Window(f"f{i}", 0, 0.0, float(rng.uniform(1, 12))) for i in range(40)]
    items = pack_windows(windows, max_window_s=30.0, gap_s=1.5)
    decoded = [m.window for item in items if isinstance(item, PackedWindow) for m in item.members]
    decoded += [item for item in items if isinstance(item, Window)]
    assert sorted(decoded, key=lambda w: w.file_id) == sorted(windows, key=lambda w: w.file_id)
    assert len(items) < len(windows) / 2


def test_packed_audio_holds_each_file_at_its_offset_with_silence_between():
    a, b = np.full(16000, 0.5, np.float32), np.full(8000, -0.25, np.float32)
    (pack,) = pack_windows([Window("a", 0, 0.0, 1.0), Window("b", 0, 0.0, 0.5)], 30.0, 1.0)
    audio = packed_samples(pack, {"a": a, "b": b})
    assert audio.size == round(2.5 * 16000)
    assert np.all(audio[:16000] == 0.5) and np.all(audio[16000:32000] == 0) and np.all(audio[32000:] == -0.25)


def test_words_go_back_to_their_file_in_its_own_time_and_segments_split_at_the_seam():
    # File "b" is the window 2-7 s of its file (a long file's last window is never packed, but
    # a file's window need not start at 0: windows after skipped silence do not).
    (pack,) = pack_windows([Window("a", 0, 0.0, 4.0), Window("b", 0, 2.0, 7.0)], 30.0, 1.0)
    words = [Word(" one", 0.5, 0.9, 0.9), Word(" two", 3.2, 3.9, 0.9), Word(" three", 5.2, 5.6, 0.8), Word(" four", 9.8, 10.4, 0.7)]
    result = WindowResult(pack.window, "en", [Segment(0.5, 10.4, " one two three four", words, avg_logprob=-0.3)])
    a, b = unpack_result(pack, result)
    assert a.window == Window("a", 0, 0.0, 4.0) and b.window == Window("b", 0, 2.0, 7.0)
    assert [(w.word, w.start, w.end) for w in a.segments[0].words] == [(" one", 0.5, 0.9), (" two", 3.2, 3.9)]
    # "three" starts 0.2 s after b's offset (5 s): 2.2 s in b's file; "four" is clamped to b's end.
    assert [(w.word, w.start, w.end) for w in b.segments[0].words] == [(" three", 2.2, 2.6), (" four", 6.8, 7.0)]
    assert a.segments[0].text == "one two" and b.segments[0].text == "three four"
    assert b.segments[0].avg_logprob == -0.3 and a.language == b.language == "en"


# --- on the real model: packing costs no words and no timing, and leaks none ---------------------------

# Each set fits one window: 4.9 + 2.8 + 11.0 s of real recordings; 8.4 + 12.7 s of synthetic
# speech with exact word times.
PACKED_SETS = {
    "real": ["real/r13_libri_61", "real/r26_goforward", "real/r01_jfk"],
    "synthetic": ["fast_speaker", "noisy"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", PACKED_SETS)
def test_packed_files_keep_their_own_words_and_times(kind, tmp_path):
    pytest.importorskip("ctranslate2")
    from helpers import FIXTURES

    from steadyscribe.engines import load_engine
    from steadyscribe.metrics import boundary_errors, normalize_text, word_error_rate
    from steadyscribe.records import InputFile, Plan, Transcript
    from steadyscribe.tasks.chunk import plan_windows
    from steadyscribe.pcm import load_pcm
    from steadyscribe.tasks.decode import decode_input
    from steadyscribe.inference import Packing, transcribe_files

    plan = Plan(engine="ctranslate2", model="tiny.en", quantization="dynamic-int8", batch_size=4, threads=2, language="en")
    engine = load_engine(plan)
    decoded, truth, windows = {}, {}, []
    for name in PACKED_SETS[kind]:
        d = decode_input(InputFile(str(FIXTURES / f"{name}.flac")), tmp_path)
        decoded[d.file_id] = d
        truth[d.file_id] = json.loads((FIXTURES / f"{name}.json").read_text())
        windows += plan_windows(load_pcm(d.pcm_path), d.file_id)
    assert len(pack_windows(windows, 30.0, 0.5)) == 1  # they all share one window

    def words(packing, folder):
        (tmp_path / folder).mkdir()
        results = transcribe_files(engine, decoded, windows, tmp_path / folder, packing=packing)
        return {file_id: Transcript.load(r.transcript_path).words for file_id, r in results.items()}

    alone, packed = words(None, "alone"), words(Packing(30.0, 0.5), "packed")
    for file_id, reference in truth.items():
        text = " ".join(w.word for w in packed[file_id])
        # Each file's words are its own: no worse than decoded alone, beyond one word's slack ...
        slack = 1.0 / len(reference["text"].split())
        assert word_error_rate(reference["text"], text) <= word_error_rate(reference["text"], " ".join(w.word for w in alone[file_id])) + slack + 1e-9
        # ... none of them comes from a window mate: no word that neither its reference nor its
        # text decoded alone has, and a mate's reference has ...
        own = set(normalize_text(reference["text"]).split()) | set(normalize_text(" ".join(w.word for w in alone[file_id])).split())
        mates = {w for other, t in truth.items() if other != file_id for w in normalize_text(t["text"]).split()} - own
        assert not mates & set(normalize_text(text).split()), text
        # ... and they lie where they were said, as well as when decoded alone.
        if reference.get("words"):
            within_packed = boundary_errors(reference["words"], packed[file_id], 0.2).within_tolerance_rate
            within_alone = boundary_errors(reference["words"], alone[file_id], 0.2).within_tolerance_rate
            assert within_packed >= within_alone - 0.05, (within_packed, within_alone)


class _ScriptedPackEngine:
    """An engine that hears each packed file from `late_s[file]` seconds after its start to its end,
    and files listed in `unheard` not at all (as the model may do after the pause between files).
    A file decoded alone is heard whole."""

    name = "scripted"
    batch_size = 4

    def __init__(self, late_s: dict[str, float], unheard: set[str]):
        self.late_s, self.unheard = late_s, unheard
        self.decoded: list[Window] = []

    def transcribe(self, windows):
        for item in windows:
            self.decoded.append(item.window)
            if not item.window.file_id.startswith("pack:"):
                word = Word(f" {item.window.file_id}", item.window.start, item.window.end, 0.9)
                yield WindowResult(item.window, "en", [Segment(word.start, word.end, word.word, [word])])
                continue
            # The members of these tests are 4-second files packed 1 s apart, in name order.
            words = [
                Word(f" {name}", 5.0 * i + self.late_s.get(name, 0.0), 5.0 * i + 4.0, 0.9)
                for i, name in enumerate(("a", "b", "c"))
                if name not in self.unheard
            ]
            yield WindowResult(item.window, "en", [Segment(w.start, w.end, w.word, [w]) for w in words])


def _packed_run(tmp_path, engine):
    from steadyscribe.records import DecodedAudio, Transcript
    from steadyscribe.inference import Packing, transcribe_files

    decoded = {}
    for name in ("a", "b", "c"):
        pcm = tmp_path / f"{name}.pcm"
        np.zeros(16000 * 4, dtype="<f4").tofile(pcm)
        decoded[name] = DecodedAudio(f"{name}.wav", "ok", file_id=name, pcm_path=str(pcm), duration_s=4.0)
    windows = [Window(name, 0, 0.0, 4.0) for name in decoded]
    results = transcribe_files(engine, decoded, windows, tmp_path, packing=Packing(30.0, 1.0))
    return {name: Transcript.load(result.transcript_path) for name, result in results.items()}


def test_a_packed_file_that_got_no_words_is_decoded_again_alone(tmp_path):
    engine = _ScriptedPackEngine(late_s={}, unheard={"b", "c"})  # the model stopped after the first file
    transcripts = _packed_run(tmp_path, engine)
    assert [w.file_id for w in engine.decoded] == ["pack:a", "b", "c"]
    for name, transcript in transcripts.items():
        assert [w.word for w in transcript.words] == [f" {name}"]


def test_a_packed_file_whose_start_went_unheard_is_decoded_again_alone(tmp_path):
    engine = _ScriptedPackEngine(late_s={"b": 2.0}, unheard=set())  # b's first 2 s have no words
    transcripts = _packed_run(tmp_path, engine)
    assert [w.file_id for w in engine.decoded] == ["pack:a", "b"]
    assert transcripts["b"].words[0].start == 0.0
