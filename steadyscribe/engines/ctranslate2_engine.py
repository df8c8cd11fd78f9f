"""Whisper on CTranslate2: windows from many files decoded together, word times from alignment heads.

Per batch: log-mel features -> the encoder (window by window on the CPU, see _Encoded) ->
language (multilingual models: once per file, from its first window) -> greedy or beam decoding
of the whole batch with the plan's decoding options (with timestamp tokens; where they end a
window's text early, the rest is decoded as a window of its own in the next batch: see __init__)
-> temperature fallback, window by window and
seeded, for windows that look like hallucinations -> DTW word alignment of every window's text
(window by window on the CPU). The encoder output is reused by every step (on a GPU, the rare
partial re-runs of fallback encode again). On the CPU, two replicas of the model share every
step's windows: each encodes and aligns windows one at a time and decodes half of the batch.

Nothing here imports torch, numba or openai-whisper: features are computed with numpy
(steadyscribe.engines.features), the tokenizer is the checkpoint's tokenizer.json
(steadyscribe.engines.tokenizer) and CTranslate2 does the alignment's DTW itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import ctranslate2
import numpy as np

from steadyscribe.engines.base import WindowAudio, WindowResult, same_redecode
from steadyscribe.engines.decoding import (
    Hypothesis,
    decode_with_fallback,
    prompt_tokens,
    redecode_temperatures,
    resume_time,
    window_seed,
)
from steadyscribe.engines.features import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from steadyscribe.engines.registry import engine_spec
from steadyscribe.engines.speech_gaps import words_within
from steadyscribe.engines.tokenizer import WhisperTokenizer, whisper_tokenizer
from steadyscribe.engines.word_timing import (
    MEDIAN_FILTER_WIDTH,
    compression_ratio,
    sentence_spans,
    timestamped_spans,
    window_segments,
    word_timings,
)
from steadyscribe.memory import reuse_large_buffers
from steadyscribe.records import Plan, Segment, Window, Word

MAX_LENGTH = 448  # the decoder's context: prompt + generated tokens
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class _Encoded:
    """A batch's encoder output, and where its sub-batches come from.

    On the CPU the encoder runs one window at a time (on each replica) and its outputs are stacked
    on the host: its attention maps (about 55 MiB a window for tiny) never pile up with the batch, which made
    a batch of 8 peak ~500 MiB higher for no speed (the encoder's matrices are already large at
    batch 1: encoding 8 windows one by one took the same CPU time, docs/memory-calibration.md).
    The decoder, which gains from batching, still gets the whole batch. On a GPU, one batched pass
    whose output stays on the device; a sub-batch there is encoded again from its mel features.
    """

    whole: ctranslate2.StorageView
    host: np.ndarray | None  # the stacked outputs (CPU), else None
    mel: np.ndarray

    def of(self, indices: list[int]) -> ctranslate2.StorageView:
        if len(indices) == len(self.mel):
            return self.whole
        rows = self.host if self.host is not None else self.mel
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(rows[indices]))


def compute_type_for(plan: Plan) -> str:
    """The CTranslate2 compute type for the plan's device, dtype and quantization."""
    on_cuda = plan.device.startswith("cuda")
    if plan.quantization in ("int8", "dynamic-int8"):
        # CT2's int8 quantizes activations on the fly, so both plan names mean the same here.
        return f"int8_{plan.dtype}" if on_cuda else "int8"
    if plan.quantization == "none":
        return plan.dtype if on_cuda else "float32"
    raise ValueError(f"CTranslate2 has no {plan.quantization!r} quantization; use none or int8")


def fit_text(text: str, tokenizer: WhisperTokenizer) -> tuple[list[int], list[str]]:
    """The text's tokens, whole words only, as many as the decoder's context holds; and the words left over."""
    tokens = tokenizer.encode(" " + " ".join(text.split())) if text.strip() else []
    room = MAX_LENGTH - len(tokenizer.sot_sequence) - 2  # start sequence, <|notimestamps|>, end of text
    if len(tokens) <= room:
        return tokens, []
    words, word_tokens = tokenizer.split_to_word_tokens(tokens)
    kept = 0
    for count, piece in enumerate(word_tokens):
        if kept + len(piece) > room:
            return tokens[:kept], [word.strip() for word in words[count:]]
        kept += len(piece)
    return tokens, []


class CTranslate2Engine:
    """Batched Whisper decoding on CTranslate2 with word timestamps; see the module docstring."""

    name = "ctranslate2"

    def __init__(
        self,
        plan: Plan,
        *,
        model_dir: str | Path | None = None,
        with_timestamps: bool = False,
    ) -> None:
        """Load the plan's model (provisioned as a CT2 checkpoint unless model_dir is given).

        Windows decode with timestamp tokens, as `transcribe` does: without them Whisper drops
        repeated words and disfluencies of real speech (docs/benchmark.md, "Timestamp tokens").
        But Whisper ends a window whose last sentence runs close to its end with an empty segment
        ("continues in the next window", which fixed windows never decode, so the sentence would
        be lost). So, as `transcribe` seeks, the rest of such a window, from where
        its text ended, is decoded as a window of its own in the next batch (_rest), and its words
        complete the window's result.
        Segments are the sentences of a window's words; with_timestamps=True keeps the model's
        own segments where it decoded timestamps.
        """
        if model_dir is None:
            from steadyscribe.models.provision import provision

            model_dir = provision(plan.model, "ctranslate2", plan.model_cache_dir)
        self.plan = plan
        self.batch_size = plan.batch_size
        self.options = plan.decoding
        self.with_timestamps = with_timestamps
        self.compute_type = compute_type_for(plan)
        self.model_dir = str(model_dir)
        device, _, index = plan.device.partition(":")  # "cuda:1" -> CT2's device and device_index
        # On the CPU, replicas that share the weights, each with its share of the threads, each fed
        # its share of every call: the model's small matrices keep two single-threaded calls busier
        # than two threads on one call (docs/benchmark.md, "CPU replicas"). Each replica encodes
        # and aligns a window of its own, which the memory estimate counts (EngineCalibration.cpu_replicas).
        self.replicas = engine_spec(self.name).memory.replicas_on_cpu(plan.threads) if device == "cpu" else 1
        if device == "cpu":
            reuse_large_buffers()
        self.model = ctranslate2.models.Whisper(
            str(model_dir),
            device=device,
            device_index=int(index or 0),
            compute_type=self.compute_type,
            intra_threads=max(plan.threads, 1) // self.replicas,
            inter_threads=self.replicas,
        )
        self._calls = ThreadPoolExecutor(self.replicas, thread_name_prefix="ct2") if self.replicas > 1 else None
        if not self.model.is_multilingual and (need := self.options.multilingual_need()):
            raise ValueError(f"{need} needs a multilingual model; {plan.model} is English-only")
        self.file_languages: dict[str, str] = {}  # file id -> the language of its first window
        # The prompt's text tokens (initial prompt, hotwords) are the same for every language.
        self.prompt = prompt_tokens(self._tokenizer("en").encode, self.options)

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        pending = iter(windows)
        # The rests of windows whose text ended early (see _rest), first in the next batch, and the
        # results they complete: a window's result is yielded once its last rest is decoded.
        rests: deque[WindowAudio] = deque()
        partial: dict[Window, WindowResult] = {}
        while batch := _next_batch(rests, pending, self.batch_size):
            for run in same_redecode(batch):
                lengths = [self._padded_samples(item, rest=item.window in partial) for item in run]
                # Features of one encoder call share their length: the rests (first in a batch), then the windows.
                for length in sorted(set(lengths)):
                    part = [item for item, padded in zip(run, lengths) if padded == length]
                    yield from _completed(self._transcribe_batch(part, length), partial, rests)

    def _padded_samples(self, item: WindowAudio, rest: bool) -> int:
        """The length a window's audio is padded to: Whisper's 30 s, or REST_PADDING_SAMPLES for a rest that fits it."""
        return REST_PADDING_SAMPLES if rest and len(item.samples) <= REST_PADDING_SAMPLES else N_SAMPLES

    def _transcribe_batch(
        self, batch: list[WindowAudio], padded_samples: int = N_SAMPLES
    ) -> Iterator[tuple[WindowResult, WindowAudio | None]]:
        """Each window's result, and the rest of the window still to decode (None when it is done);
        every window's audio padded to `padded_samples`."""
        redecode = batch[0].redecode  # the same for the whole batch (same_redecode)
        temperatures = redecode_temperatures(redecode, self.options.temperatures)
        if not temperatures:  # no fallback temperatures in the profile
            yield from ((WindowResult(item.window, None, []), None) for item in batch)
            return
        encoded = self._encode(np.stack([self._log_mel(item.samples, padded_samples) for item in batch]))
        languages = self._languages(encoded, batch)
        tokenizers = [self._tokenizer(language) for language in languages]
        decodings = self._decode(encoded, tokenizers, [item.window for item in batch], temperatures, prompted=not redecode)
        # Silence gets no segments, so nothing of it to align; a stretch decoded again is speech to the VAD.
        silent = [d.is_silence and not redecode for d in decodings]
        text_tokens = [
            [] if quiet else [t for t in d.tokens if t < tokenizer.eot]
            for d, quiet, tokenizer in zip(decodings, silent, tokenizers)
        ]
        num_frames = [min(len(item.samples), N_SAMPLES) // HOP_LENGTH for item in batch]
        alignments = self._align(encoded, tokenizers, text_tokens, num_frames)
        for i, item in enumerate(batch):
            segments = [] if silent[i] else self._segments(item, tokenizers[i], decodings[i], alignments[i])
            rest = None if silent[i] else _rest(item, decodings[i].tokens, tokenizers[i].timestamp_begin)
            yield WindowResult(window=item.window, language=languages[i], segments=segments), rest

    def align(self, items: Iterable[tuple[WindowAudio, str]]) -> Iterator[WindowResult]:
        """Word times for known text: each window's text tokens aligned to its audio, nothing decoded.

        The same DTW over the alignment heads that times transcribed words. Each word's
        probability is the mean probability the model gives its tokens after the text before
        them: low where the audio does not say the word. Words past the decoder's context
        (a window's text too long to fit) come back at the window's end with probability 0.
        Segments are the text's sentences.
        """
        pending = iter(items)
        while batch := list(islice(pending, self.batch_size)):
            encoded = self._encode(np.stack([self._log_mel(item.samples) for item, _ in batch]))
            languages = self._languages(encoded, [item for item, _ in batch])
            tokenizers = [self._tokenizer(language) for language in languages]
            fitted = [fit_text(text, tokenizer) for (_, text), tokenizer in zip(batch, tokenizers)]
            num_frames = [min(len(item.samples), N_SAMPLES) // HOP_LENGTH for item, _ in batch]
            text_tokens = [tokens for tokens, _ in fitted]
            alignments = self._align(encoded, tokenizers, text_tokens, num_frames, no_timestamps=True)
            for (item, _), tokenizer, (tokens, overflow), alignment, language in zip(
                batch, tokenizers, fitted, alignments, languages
            ):
                segments = self._aligned_segments(item, tokenizer, tokens, overflow, alignment)
                yield WindowResult(window=item.window, language=language, segments=segments)

    def _aligned_segments(
        self,
        item: WindowAudio,
        tokenizer: WhisperTokenizer,
        tokens: list[int],
        overflow: list[str],
        alignment: ctranslate2.models.WhisperAlignmentResult,
    ) -> list[Segment]:
        span = min(item.window.end - item.window.start, len(item.samples) / SAMPLE_RATE)
        path = np.array(alignment.alignments, dtype=np.int64).reshape(-1, 2)
        words = word_timings(tokenizer, tokens, path[:, 0], path[:, 1], alignment.text_token_probs) if tokens else []
        probs = np.clip(np.asarray(alignment.text_token_probs, dtype=np.float64)[: len(tokens)], 1e-10, 1.0)
        avg_logprob = float(np.log(probs).mean()) if tokens else None
        segments = window_segments(item.window, span, tokenizer, sentence_spans(words), words, avg_logprob=avg_logprob)
        segments = [segment for segment in segments if segment.words]
        if overflow:
            end = item.window.start + span
            segments.append(
                Segment(end, end, " ".join(overflow), words=[Word(word, end, end, 0.0) for word in overflow], avg_logprob=None)
            )
        return segments

    def _log_mel(self, samples: np.ndarray, padded_samples: int = N_SAMPLES) -> np.ndarray:
        # Per window, not per batch: log_mel_spectrogram normalizes by the loudest frame of its input.
        audio = pad_or_trim(np.asarray(samples, dtype=np.float32), padded_samples)
        return log_mel_spectrogram(audio, self.model.n_mels)

    def _encode(self, mel: np.ndarray) -> _Encoded:
        if self.model.device == "cuda":
            return _Encoded(self.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False), None, mel)

        def encode_one(i: int) -> np.ndarray:
            # Copied to the host as it comes, so the encoder's buffers do not pile up beside the copies.
            return np.array(self.model.encode(ctranslate2.StorageView.from_array(mel[i : i + 1])))

        host = np.concatenate(self._side_by_side(encode_one, range(len(mel))))
        return _Encoded(ctranslate2.StorageView.from_array(host), host, mel)

    def _side_by_side(self, call: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`call` on each item, in order; on the CPU's replicas at once (they release the GIL)."""
        return list(map(call, items) if self._calls is None else self._calls.map(call, items))

    def _shares(self, rows: list[int]) -> list[list[int]]:
        """`rows` cut into one contiguous share per replica (fewer when there are fewer rows)."""
        return [share.tolist() for share in np.array_split(rows, min(self.replicas, len(rows))) if len(share)]

    def _languages(self, encoded: _Encoded, batch: list[WindowAudio]) -> list[str]:
        """Each window's language: the plan's, or its file's, detected from the file's first window seen."""
        if not self.model.is_multilingual:
            return ["en"] * len(batch)
        if self.plan.language is not None:
            return [self.plan.language] * len(batch)
        if any(item.window.file_id not in self.file_languages for item in batch):
            # Each result lists (token "<|xx|>", probability), most probable first. A file's windows
            # arrive in order, so the first of a new file in this batch is its first.
            detected = [ranked[0][0][2:-2] for ranked in self.model.detect_language(encoded.whole)]
            for item, language in zip(batch, detected):
                self.file_languages.setdefault(item.window.file_id, language)
        return [self.file_languages[item.window.file_id] for item in batch]

    def _tokenizer(self, language: str) -> WhisperTokenizer:
        # Cached: one instance per language.
        return whisper_tokenizer(self.model_dir, self.model.is_multilingual, language, self.options.task)

    def _decode(
        self,
        encoded: _Encoded,
        tokenizers: list[WhisperTokenizer],
        windows: list[Window],
        temperatures: tuple[float, ...],
        prompted: bool = True,
    ) -> list[Hypothesis]:
        """Decode every window with timestamp tokens, as faster-whisper and openai-whisper do.
        Suspicious decodings are retried at the next of `temperatures`, as openai-whisper does.
        `prompted`: whether the profile's prompt (initial prompt, hotwords) goes first."""
        previous = [tokenizers[0].sot_prev, *self.prompt] if self.prompt and prompted else []
        prompts = [previous + list(tokenizer.sot_sequence) for tokenizer in tokenizers]

        def generate_share(rows: list[int], temperature: float) -> list[Hypothesis]:
            return self._generate(encoded.of(rows), [prompts[i] for i in rows], [tokenizers[i] for i in rows], temperature)

        def generate(rows: list[int], temperature: float) -> list[Hypothesis]:
            if temperature > 0:  # decode_with_fallback samples one window at a time
                ctranslate2.set_random_seed(window_seed(windows[rows[0]]))
            shares = self._side_by_side(lambda share: generate_share(share, temperature), self._shares(rows))
            return [hypothesis for share in shares for hypothesis in share]

        decodings = decode_with_fallback(generate, len(tokenizers), temperatures)
        for decoding in decodings:
            decoding.timestamps = True
        return decodings

    def _generate(
        self,
        features: ctranslate2.StorageView,
        prompts: list[list[int]],
        tokenizers: list[WhisperTokenizer],
        temperature: float,
    ) -> list[Hypothesis]:
        options = self.options
        if temperature == 0:
            sampling = {"beam_size": options.beam_size, "patience": options.patience or 1.0}
        else:
            # sampling_topk=0 samples from the whole distribution; best_of samples, the likeliest kept.
            best_of = options.best_of or 1
            sampling = {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature, "num_hypotheses": best_of}
        results = self.model.generate(
            features,
            prompts,
            max_length=MAX_LENGTH,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(options.suppress_tokens),  # -1: the suppress_ids of the model's config.json
            **sampling,
        )
        decodings = []
        for result, tokenizer in zip(results, tokenizers):
            best = max(range(len(result.scores)), key=lambda h: result.scores[h])
            tokens = result.sequences_ids[best]
            # CT2 scores are the sum of log-probs divided by the length; whisper averages over the
            # generated tokens plus the end-of-text token.
            avg_logprob = result.scores[best] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
            decodings.append(Hypothesis(tokens, text, avg_logprob, result.no_speech_prob, compression_ratio(text)))
        return decodings

    def _align(
        self,
        encoded: _Encoded,
        tokenizers: list[WhisperTokenizer],
        text_tokens: list[list[int]],
        num_frames: list[int],
        no_timestamps: bool = False,
    ) -> list[ctranslate2.models.WhisperAlignmentResult]:
        """Align every window's text tokens to its audio: on a GPU one call per start sequence
        (language), on the CPU one call per window (its attention maps of every head then never
        pile up with the batch; docs/memory-calibration.md, "How it was measured").

        `no_timestamps` ends the start sequence with <|notimestamps|>, as openai-whisper's own
        word timing does: it times known text closer (docs/benchmark.md, "Aligning a known text").
        """
        alignments: list = [None] * len(tokenizers)
        groups: dict[tuple[tuple[int, ...], int | None], list[int]] = {}
        for i, tokenizer in enumerate(tokenizers):
            start = tokenizer.sot_sequence + ((tokenizer.no_timestamps,) if no_timestamps else ())
            groups.setdefault((start, None if encoded.host is None else i), []).append(i)

        def align_group(key: tuple[tuple[int, ...], int | None]) -> list:
            indices = groups[key]
            return self.model.align(
                encoded.of(indices),
                list(key[0]),
                [text_tokens[i] for i in indices],
                [num_frames[i] for i in indices],
                median_filter_width=MEDIAN_FILTER_WIDTH,
            )

        for key, results in zip(groups, self._side_by_side(align_group, groups)):
            for i, result in zip(groups[key], results):
                alignments[i] = result
        return alignments

    def _segments(
        self,
        item: WindowAudio,
        tokenizer: WhisperTokenizer,
        decoding: Hypothesis,
        alignment: ctranslate2.models.WhisperAlignmentResult,
    ) -> list[Segment]:
        """Split the window's tokens into segments at timestamp tokens and give each its words."""
        span = min(item.window.end - item.window.start, len(item.samples) / SAMPLE_RATE)
        spans = timestamped_spans(decoding.tokens, tokenizer, span)
        text_tokens = [t for token_span in spans for t in token_span.tokens]
        # CT2's DTW path: (text index, time index) pairs, one row per text token plus end-of-text.
        path = np.array(alignment.alignments, dtype=np.int64).reshape(-1, 2)
        words = word_timings(tokenizer, text_tokens, path[:, 0], path[:, 1], alignment.text_token_probs)
        if not (self.with_timestamps and decoding.timestamps):
            spans = sentence_spans(words)
        segments = window_segments(
            item.window,
            span,
            tokenizer,
            spans,
            words,
            avg_logprob=decoding.avg_logprob,
            no_speech_prob=decoding.no_speech_prob,
            compression_ratio=decoding.compression_ratio,
        )
        return [segment for segment in segments if segment.words]


def _completed(
    decoded: Iterator[tuple[WindowResult, WindowAudio | None]],
    partial: dict[Window, WindowResult],
    rests: deque[WindowAudio],
) -> Iterator[WindowResult]:
    """The results that `decoded` completes; a rest still to decode is queued, its window's result kept in `partial`."""
    for result, rest in decoded:
        whole = partial.pop(result.window, None)
        if whole is not None:
            # The rest starts a little before where the text ended: only its words after the last one count.
            last = max((w.end for s in whole.segments for w in s.words), default=whole.window.start)
            whole.segments.extend(words_within(result.segments, last, whole.window.end))
            result = whole
        if rest is None:
            yield result
        else:
            partial[rest.window] = result
            rests.append(rest)


def _next_batch(rests: deque[WindowAudio], pending: Iterator[WindowAudio], size: int) -> list[WindowAudio]:
    """Up to `size` windows: the rests waiting first, then new windows."""
    batch = [rests.popleft() for _ in range(min(size, len(rests)))]
    return batch + list(islice(pending, size - len(batch)))


# A rest shorter than this is not decoded: the model said it holds nothing more.
MIN_REST_S = 1.0
# A rest that fits this long is padded to it, not to 30 s: the encoder's work falls with the
# frames, and on real speech the words stay the same (docs/benchmark.md, "Shorter padding").
# Whole windows keep 30 s: padded shorter, short files lost words.
REST_PADDING_SAMPLES = 20 * SAMPLE_RATE
# A rest starts this long before where the text ended: Whisper's timestamp there may cut into the
# next word ("Making" lost from a sonnet's line when the rest began on the timestamp itself).
REST_LEAD_S = 0.5


def _rest(item: WindowAudio, tokens: list[int], timestamp_begin: int) -> WindowAudio | None:
    """The part of the window after where its decoding left off (decoding.resume_time), as a window
    of its own (the same file and index, so the same seed), decoded the same way; None when the
    decoding went to the end, or left off at its start (decoding the same audio again gives the
    same text: what stays empty there is for speech_gaps to decode again)."""
    span = min(item.window.end - item.window.start, len(item.samples) / SAMPLE_RATE)
    resume = resume_time(tokens, timestamp_begin, span)
    if resume is None or resume < MIN_REST_S or span - resume < MIN_REST_S:
        return None
    offset = resume - REST_LEAD_S
    window = Window(item.window.file_id, item.window.index, round(item.window.start + offset, 3), item.window.end)
    return WindowAudio(window, item.samples[round(offset * SAMPLE_RATE) :], redecode=item.redecode)
