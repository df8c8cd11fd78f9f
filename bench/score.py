"""Accuracy and speed figures of one system's output, per part of the set and over all speech.

Accuracy comes from steadyscribe.metrics: WER after Whisper's English normalization; boundary
errors of the words matched to the truth (a reference word without a match counts as a miss in
the within-tolerance rate).
"""

from __future__ import annotations

import numpy as np

from bench.dataset import BenchFile
from steadyscribe.metrics import boundary_errors, corpus_wer

TOLERANCE_S = 0.2
NO_SPEECH_PART = "no_speech"
ALL_SPEECH = "all speech"


def accuracy(files: list[BenchFile], words_by_file: dict[str, list[dict]]) -> tuple[dict, np.ndarray]:
    """WER and boundary figures of a group of speech files, and their boundary errors (seconds).

    Errors are (start, end) pairs, hypothesis minus truth, of the matched words.
    """
    within = reference_count = 0
    errors = []
    for f in (f for f in files if f.words):  # timing only where there are word times (real recordings)
        stats = boundary_errors(f.words, words_by_file[f.name], TOLERANCE_S)
        within += round(stats.within_tolerance_rate * stats.reference_count)
        reference_count += stats.reference_count
        errors.append(stats.errors)
    errors_s = np.concatenate(errors) if errors else np.zeros((0, 2))
    figures = {
        "wer": corpus_wer((f.text, " ".join(w["word"] for w in words_by_file[f.name])) for f in files),
        "within_200ms": within / reference_count if reference_count else None,
        "mean_abs_error_ms": float(np.mean(np.abs(errors_s)) * 1000) if len(errors_s) else None,
        "matched_words": len(errors_s),
        "reference_words": reference_count,
    }
    return figures, errors_s


def word_error_percentiles(errors_s: np.ndarray, unmatched: int) -> list[int | None]:
    """Percentiles 0..100 of each reference word's worse boundary error, in ms (None: unmatched).

    A word counts as unmatched with an infinite error, so the share at or below 200 ms is the
    within-200 ms rate: the plots draw the distribution from these.
    """
    worse = np.concatenate([np.abs(errors_s).max(axis=1), np.full(unmatched, np.inf)])
    if len(worse) == 0:
        return []
    values = np.percentile(worse, np.arange(101), method="inverted_cdf")
    return [round(v * 1000) if np.isfinite(v) else None for v in values]


def score(files: list[BenchFile], worker_result: dict) -> dict:
    """Per part and over all speech: accuracy (stabilized and, where there is one, raw), speed."""
    outputs = worker_result["outputs"]
    variants = {"words": "final"} | ({"raw_words": "raw"} if any("raw_words" in o for o in outputs.values()) else {})
    parts: dict[str, dict] = {}
    for part, timing in worker_result["parts"].items():
        part_files = [f for f in files if f.part == part]
        figures = {"audio_s": timing["audio_s"], "wall_s": timing["wall_s"], "files": len(part_files)}
        for key, variant in variants.items():
            words = {f.name: outputs[f.name][key] for f in part_files}
            if part == NO_SPEECH_PART:
                figures[variant] = {"words_out": sum(len(w) for w in words.values())}
            else:
                figures[variant], _ = accuracy(part_files, words)
        parts[part] = figures
    speech_files = [f for f in files if f.part != NO_SPEECH_PART]
    audio_s = sum(p["audio_s"] for p in worker_result["parts"].values())
    wall_s = sum(p["wall_s"] for p in worker_result["parts"].values())
    overall = {"audio_s": audio_s, "wall_s": wall_s, "throughput": audio_s / wall_s, "rtf": wall_s / audio_s}
    for key, variant in variants.items():
        overall[variant], errors_s = accuracy(speech_files, {f.name: outputs[f.name][key] for f in speech_files})
        unmatched = overall[variant]["reference_words"] - len(errors_s)
        overall[variant]["word_error_percentiles_ms"] = word_error_percentiles(errors_s, unmatched)
        overall[variant]["no_speech_words"] = sum(
            parts[part][variant]["words_out"] for part in parts if part == NO_SPEECH_PART
        )
    for figures in parts.values():
        figures["throughput"] = figures["audio_s"] / figures["wall_s"]
    return {"parts": parts, "overall": overall}
