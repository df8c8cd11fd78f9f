"""Inference stage: windows of many files through one engine, one transcript per file, in order."""

from __future__ import annotations

import numpy as np

from steadyscribe import SAMPLE_RATE
from steadyscribe.engines import WindowResult
from steadyscribe.records import DecodedAudio, Segment, Transcript, Window, Word
from steadyscribe.inference import transcribe_files


class ReversingEngine:
    """Answers windows in reverse order (as a batched engine may), one word per window at its centre."""

    name = "reversing"
    batch_size = 4

    def __init__(self):
        self.seen: list[tuple[Window, int]] = []

    def transcribe(self, windows):
        items = list(windows)
        self.seen = [(item.window, item.samples.size) for item in items]
        for item in reversed(items):
            w = item.window
            mid = (w.start + w.end) / 2
            word = Word(f"w{w.index}", mid - 0.1, mid + 0.1, 0.9)
            yield WindowResult(w, "en", [Segment(word.start, word.end, word.word, [word])])


def pcm_file(path, seconds: float) -> DecodedAudio:
    samples = np.zeros(int(seconds * SAMPLE_RATE), dtype="<f4")
    samples.tofile(path)
    return DecodedAudio(str(path), "ok", file_id=path.stem, pcm_path=str(path), duration_s=seconds)


def test_results_go_back_to_their_files_in_window_order(tmp_path):
    decoded = {d.file_id: d for d in (pcm_file(tmp_path / "a.f32", 50.0), pcm_file(tmp_path / "b.f32", 10.0))}
    windows = [Window("a", 0, 0.0, 30.0), Window("a", 1, 30.0, 50.0), Window("b", 0, 0.0, 10.0)]
    engine = ReversingEngine()
    progress = []
    results = transcribe_files(engine, decoded, windows, tmp_path, on_windows=lambda n, audio_s: progress.append((n, audio_s)))

    assert [(w, n) for w, n in engine.seen] == [(w, int((w.end - w.start) * SAMPLE_RATE)) for w in windows]
    a = Transcript.load(results["a"].transcript_path)
    assert [s.text for s in a.segments] == ["w0", "w1"] and a.language == "en" and a.batch_size == 4
    assert [s.text for s in Transcript.load(results["b"].transcript_path).segments] == ["w0"]
    assert progress == [(1, 10.0), (1, 20.0), (1, 30.0)]  # each window as it finishes, with its audio
    # Engine time is shared out by audio duration.
    assert abs(results["a"].infer_s - 5 * results["b"].infer_s) < 1e-9


def test_a_file_without_windows_gets_an_empty_transcript(tmp_path):
    decoded = {"silent": pcm_file(tmp_path / "silent.f32", 5.0)}
    results = transcribe_files(ReversingEngine(), decoded, [], tmp_path)
    transcript = Transcript.load(results["silent"].transcript_path)
    assert transcript.segments == [] and transcript.language is None
