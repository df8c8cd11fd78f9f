"""Whisper on CTranslate2: windows from many files decoded together, word times from alignment heads.

Per batch: log-mel features -> one encoder pass -> language (multilingual models) -> greedy or
beam decoding with timestamp tokens -> temperature fallback for windows that look like
hallucinations -> DTW word alignment of every window's text in one call. The encoder output is
reused by every step; only the rare partial re-runs (fallback, mixed languages) encode again.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import ctranslate2
import numpy as np
from whisper.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    TOKENS_PER_SECOND,
    log_mel_spectrogram,
    pad_or_trim,
)
from whisper.timing import WordTiming, merge_punctuations
from whisper.tokenizer import Tokenizer, get_tokenizer

from steadyscribe.engines.base import WindowAudio, WindowResult
from steadyscribe.records import Plan, Segment, Window, Word

MAX_LENGTH = 448  # the decoder's context: prompt + generated tokens
TIMESTAMP_PRECISION_S = 0.02
# openai-whisper's decoding defaults: retry a window at higher temperature when its text is
# repetitive (compression) or improbable, unless the model says it is silence.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
ALIGNMENT_MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


def compute_type_for(plan: Plan) -> str:
    """The CTranslate2 compute type for the plan's device, dtype and quantization."""
    on_cuda = plan.device.startswith("cuda")
    if plan.quantization in ("int8", "dynamic-int8"):
        # CT2's int8 quantizes activations on the fly, so both plan names mean the same here.
        return f"int8_{plan.dtype}" if on_cuda else "int8"
    if plan.quantization == "none":
        return plan.dtype if on_cuda else "float32"
    raise ValueError(f"CTranslate2 has no {plan.quantization!r} quantization; use none or int8")


@dataclass
class _Decoding:
    """One generated hypothesis for a window: its tokens (timestamps included) and quality scores."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float

    @property
    def is_silence(self) -> bool:
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOGPROB_THRESHOLD

    @property
    def needs_fallback(self) -> bool:
        repetitive = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        return (repetitive or self.avg_logprob < LOGPROB_THRESHOLD) and not self.is_silence


class CTranslate2Engine:
    """Batched Whisper decoding on CTranslate2 with word timestamps; see the module docstring."""

    name = "ctranslate2"

    def __init__(
        self,
        plan: Plan,
        *,
        model_dir: str | Path | None = None,
        beam_size: int = 1,
        with_timestamps: bool = True,
        temperatures: tuple[float, ...] = TEMPERATURES,
    ) -> None:
        """Load the plan's model (provisioned as a CT2 checkpoint unless model_dir is given).

        with_timestamps=False decodes with the timestamp-free prompt: one segment per window.
        """
        if model_dir is None:
            from steadyscribe.models.provision import provision

            model_dir = provision(plan.model, "ctranslate2")
        self.plan = plan
        self.batch_size = plan.batch_size
        self.beam_size = beam_size
        self.with_timestamps = with_timestamps
        self.temperatures = temperatures
        self.compute_type = compute_type_for(plan)
        device, _, index = plan.device.partition(":")  # "cuda:1" -> CT2's device and device_index
        self.model = ctranslate2.models.Whisper(
            str(model_dir),
            device=device,
            device_index=int(index or 0),
            compute_type=self.compute_type,
            intra_threads=plan.threads,
            inter_threads=1,
        )
        if not self.model.is_multilingual and plan.language not in (None, "en"):
            raise ValueError(f"{plan.model} is English-only; it cannot transcribe language {plan.language!r}")

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        pending = iter(windows)
        # batch_size is read per batch: the pipeline may lower it under memory pressure.
        while batch := list(islice(pending, self.batch_size)):
            yield from self._transcribe_batch(batch)

    def _transcribe_batch(self, batch: list[WindowAudio]) -> Iterator[WindowResult]:
        mel = np.stack([self._log_mel(item.samples) for item in batch])
        encoded = self.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)
        languages = self._languages(encoded, len(batch))
        tokenizers = [self._tokenizer(language) for language in languages]
        decodings = self._decode(encoded, mel, tokenizers)
        # Silence gets no segments, so nothing of it to align.
        text_tokens = [
            [] if d.is_silence else [t for t in d.tokens if t < tokenizer.eot]
            for d, tokenizer in zip(decodings, tokenizers)
        ]
        num_frames = [min(len(item.samples), N_SAMPLES) // HOP_LENGTH for item in batch]
        alignments = self._align(encoded, mel, tokenizers, text_tokens, num_frames)
        for i, item in enumerate(batch):
            silent = decodings[i].is_silence
            segments = [] if silent else self._segments(item, tokenizers[i], decodings[i], alignments[i])
            yield WindowResult(window=item.window, language=languages[i], segments=segments)

    def _log_mel(self, samples: np.ndarray) -> np.ndarray:
        # Per window, not per batch: log_mel_spectrogram normalizes by the loudest frame of its input.
        audio = pad_or_trim(np.asarray(samples, dtype=np.float32), N_SAMPLES)
        return log_mel_spectrogram(audio, self.model.n_mels).numpy()

    def _languages(self, encoded: ctranslate2.StorageView, count: int) -> list[str]:
        if not self.model.is_multilingual:
            return ["en"] * count
        if self.plan.language is not None:
            return [self.plan.language] * count
        # Each result lists (token "<|xx|>", probability), most probable first.
        return [ranked[0][0][2:-2] for ranked in self.model.detect_language(encoded)]

    def _tokenizer(self, language: str) -> Tokenizer:
        # get_tokenizer is cached: one instance per language.
        return get_tokenizer(
            multilingual=self.model.is_multilingual,
            num_languages=self.model.num_languages,
            language=language,
            task="transcribe",
        )

    def _decode(
        self, encoded: ctranslate2.StorageView, mel: np.ndarray, tokenizers: list[Tokenizer]
    ) -> list[_Decoding]:
        """Decode every window; retry suspicious ones at the next temperature, as openai-whisper does."""
        prompts = [
            list(tokenizer.sot_sequence)
            if self.with_timestamps
            else list(tokenizer.sot_sequence_including_notimestamps)
            for tokenizer in tokenizers
        ]
        attempts = [[d] for d in self._generate(encoded, prompts, tokenizers, self.temperatures[0])]
        for temperature in self.temperatures[1:]:
            retry = [i for i, tried in enumerate(attempts) if tried[-1].needs_fallback]
            if not retry:
                break
            features = self._features_of(retry, encoded, mel)
            retried = self._generate(
                features, [prompts[i] for i in retry], [tokenizers[i] for i in retry], temperature
            )
            for i, decoding in zip(retry, retried):
                attempts[i].append(decoding)
        # When no temperature satisfied the thresholds, prefer non-repetitive text, then the likeliest.
        return [
            tried[-1]
            if not tried[-1].needs_fallback
            else min(tried, key=lambda d: (d.compression_ratio > COMPRESSION_RATIO_THRESHOLD, -d.avg_logprob))
            for tried in attempts
        ]

    def _generate(
        self,
        features: ctranslate2.StorageView,
        prompts: list[list[int]],
        tokenizers: list[Tokenizer],
        temperature: float,
    ) -> list[_Decoding]:
        sampling = (
            {"beam_size": self.beam_size}
            if temperature == 0
            # sampling_topk=0 samples from the whole distribution.
            else {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
        )
        results = self.model.generate(
            features,
            prompts,
            max_length=MAX_LENGTH,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],  # -1: the suppress_ids of the model's config.json
            **sampling,
        )
        decodings = []
        for result, tokenizer in zip(results, tokenizers):
            tokens = result.sequences_ids[0]
            # CT2 scores are the sum of log-probs divided by the length; whisper averages over the
            # generated tokens plus the end-of-text token.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
            decodings.append(_Decoding(tokens, avg_logprob, result.no_speech_prob, _compression_ratio(text)))
        return decodings

    def _align(
        self,
        encoded: ctranslate2.StorageView,
        mel: np.ndarray,
        tokenizers: list[Tokenizer],
        text_tokens: list[list[int]],
        num_frames: list[int],
    ) -> list[ctranslate2.models.WhisperAlignmentResult]:
        """Align every window's text tokens to its audio, one call per start sequence (language)."""
        alignments: list = [None] * len(tokenizers)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tokenizer in enumerate(tokenizers):
            groups.setdefault(tokenizer.sot_sequence, []).append(i)
        for start_sequence, indices in groups.items():
            results = self.model.align(
                self._features_of(indices, encoded, mel),
                list(start_sequence),
                [text_tokens[i] for i in indices],
                [num_frames[i] for i in indices],
                median_filter_width=ALIGNMENT_MEDIAN_FILTER_WIDTH,
            )
            for i, result in zip(indices, results):
                alignments[i] = result
        return alignments

    def _features_of(
        self, indices: list[int], encoded: ctranslate2.StorageView, mel: np.ndarray
    ) -> ctranslate2.StorageView:
        """Features for a sub-batch: the shared encoder output when it is the whole batch, else mel.

        The encoder output may live on the GPU, where it cannot be sliced without another array
        library; the model re-encodes mel features itself, and partial batches are rare.
        """
        if len(indices) == len(mel):
            return encoded
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[indices]))

    def _segments(
        self,
        item: WindowAudio,
        tokenizer: Tokenizer,
        decoding: _Decoding,
        alignment: ctranslate2.models.WhisperAlignmentResult,
    ) -> list[Segment]:
        """Split the window's tokens into segments at timestamp tokens and give each its words."""
        span = min(item.window.end - item.window.start, len(item.samples) / SAMPLE_RATE)
        spans = _timestamped_spans(decoding.tokens, tokenizer, span)
        words = _word_timings(alignment, [t for _, _, tokens in spans for t in tokens], tokenizer)
        typical = _typical_word_duration(words)
        segments = []
        word_index = 0
        for start, end, tokens in spans:
            # Words were split from the concatenated text: a segment takes words until it has
            # consumed its own token count (punctuation merging moves tokens, not their count).
            segment_words: list[WordTiming] = []
            consumed = 0
            while word_index < len(words) and consumed < len(tokens):
                timing = words[word_index]
                if timing.word:
                    segment_words.append(timing)
                consumed += len(timing.tokens)
                word_index += 1
            if segment_words:
                _fit_edge_words(segment_words, start, end, typical)
                start, end = segment_words[0].start, segment_words[-1].end
            segments.append(
                Segment(
                    start=item.window.start + _clip(start, span),
                    end=item.window.start + _clip(end, span),
                    text=tokenizer.decode(tokens),
                    words=[_absolute_word(timing, item.window, span) for timing in segment_words],
                    avg_logprob=decoding.avg_logprob,
                    no_speech_prob=decoding.no_speech_prob,
                    compression_ratio=decoding.compression_ratio,
                )
            )
        return segments


def _timestamped_spans(
    tokens: list[int], tokenizer: Tokenizer, span: float
) -> list[tuple[float, float, list[int]]]:
    """(start, end, text tokens) per segment: text between timestamp tokens, times window-relative.

    Handles both `<|a|> text <|b|><|b|> text <|c|>` and single timestamps between segments. Text
    after the last timestamp (the model ran out of window) ends at the window's end; text
    without timestamps (timestamp-free prompt) is one segment over the whole window.
    """
    spans = []
    start = 0.0
    text: list[int] = []
    for token in tokens:
        if token >= tokenizer.timestamp_begin:
            time = (token - tokenizer.timestamp_begin) * TIMESTAMP_PRECISION_S
            if text:
                spans.append((start, time, text))
                text = []
            start = time
        elif token < tokenizer.eot:
            text.append(token)
    if text:
        spans.append((start, span, text))
    return spans


def _word_timings(
    alignment: ctranslate2.models.WhisperAlignmentResult, text_tokens: list[int], tokenizer: Tokenizer
) -> list[WordTiming]:
    """Words with window-relative times from the DTW path, punctuation merged into its neighbours."""
    if not text_tokens:
        return []
    # The path visits one row per text token plus a final row for end-of-text; a word spans from
    # the first frame of its first token's row to the first frame of the next word's row.
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    boundaries = np.concatenate([[0], np.cumsum([len(tokens) for tokens in word_tokens[:-1]])])
    path = np.array(alignment.alignments)
    row_starts = np.diff(path[:, 0], prepend=-1) > 0
    row_times = path[row_starts, 1] / TOKENS_PER_SECOND
    token_probs = np.asarray(alignment.text_token_probs)
    timings = [
        WordTiming(word, tokens, float(row_times[i]), float(row_times[j]), float(token_probs[i:j].mean()))
        for word, tokens, i, j in zip(words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:])
    ]
    _shorten_words_at_sentence_ends(timings, _typical_word_duration(timings))
    merge_punctuations(timings, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    return timings


# DTW hands silence to a neighbouring word: the heuristics below cap such words at twice the
# typical (median, at most 0.7 s) word duration, as openai-whisper does. They only move a start
# later or an end earlier, so word times stay monotonic.


def _typical_word_duration(timings: list[WordTiming]) -> float:
    durations = [t.end - t.start for t in timings if t.end > t.start]
    return min(0.7, float(np.median(durations))) if durations else 0.0


def _shorten_words_at_sentence_ends(timings: list[WordTiming], typical: float) -> None:
    """A pause after a sentence goes to its last word or mark, or to the next sentence's first word."""
    max_duration = 2 * typical
    for i, timing in enumerate(timings):
        if timing.end - timing.start <= max_duration:
            continue
        ends_sentence = timing.word in SENTENCE_END_MARKS or (
            i + 1 < len(timings) and timings[i + 1].word in SENTENCE_END_MARKS
        )
        if ends_sentence:
            timing.end = timing.start + max_duration
        elif i > 0 and timings[i - 1].word in SENTENCE_END_MARKS:
            timing.start = timing.end - max_duration


def _fit_edge_words(words: list[WordTiming], start: float, end: float, typical: float) -> None:
    """Trim a segment's first and last word where they run into silence.

    A segment mostly starts after a pause (or at the window's start), whose silence DTW gives to
    the first word; where the segment's timestamp tokens put the speech well inside an edge word,
    the timestamp is believed instead.
    """
    first, last = words[0], words[-1]
    first.start = max(first.start, first.end - 2 * typical)
    if first.start + 0.5 < start < first.end:
        first.start = max(first.start, min(first.end - typical, start))
    if last.start < end < last.end - 0.5:
        last.end = max(min(last.start + typical, last.end), end)


def _absolute_word(timing: WordTiming, window: Window, span: float) -> Word:
    return Word(
        word=timing.word,
        start=window.start + _clip(timing.start, span),
        end=window.start + _clip(timing.end, span),
        probability=timing.probability,
    )


def _clip(time: float, span: float) -> float:
    return min(max(time, 0.0), span)


def _compression_ratio(text: str) -> float:
    """Bytes of text over bytes of its zlib compression: high for looping, repetitive output."""
    encoded = text.encode("utf-8")
    return len(encoded) / len(zlib.compress(encoded)) if encoded else 0.0
