"""Whisper on Hugging Face transformers: windows from many files decoded in batches, with word times.

Per batch of `batch_size` windows (from any files): log-mel features -> one encoder pass (SDPA
attention) -> no-speech probability, and the language for a multilingual model without one (once
per file, from its first window), from the start-of-transcript logits -> greedy or beam decoding
(no timestamp tokens) through `generate` with the plan's decoding options -> temperature fallback,
window by window and seeded, for windows whose text looks like a hallucination -> one
teacher-forced decoder pass that captures the alignment heads' cross-attention -> DTW word times
(steadyscribe.engines.word_timing). The encoder output is reused by every step.

generate() is asked for neither attentions nor token timestamps: `return_token_timestamps`
switches the model to eager attention for good and keeps every layer's attention map of every
step, where the one extra pass needs only the alignment heads' maps, once. Nor for scores: those
are vocabulary-wide per step and window; a logits processor keeps only the chosen tokens'.

Memory: a batch that runs out of memory, or (on CPU) one that the previous batch's peak RSS says
would pass plan.memory_budget_bytes, is halved and its windows decoded again at the smaller size.
A batch yields its results only once all of them are done, so no window is lost or yielded twice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import numpy as np
import psutil
import torch
from transformers import LogitsProcessor, LogitsProcessorList, WhisperForConditionalGeneration, WhisperProcessor
from transformers.modeling_outputs import BaseModelOutput
from whisper.timing import dtw, median_filter
from whisper.tokenizer import Tokenizer, get_tokenizer

from steadyscribe.engines.base import WindowAudio, WindowResult, same_redecode
from steadyscribe.engines.decoding import Hypothesis, decode_with_fallback, prompt_tokens, redecode_temperatures, window_seed
from steadyscribe.engines.features import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from steadyscribe.engines.word_timing import (
    MEDIAN_FILTER_WIDTH,
    compression_ratio,
    sentence_spans,
    timestamped_spans,
    window_segments,
    word_timings,
)
from steadyscribe.memory import reset_peak_rss, vm_hwm_bytes
from steadyscribe.records import Plan, Window

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 224  # openai-whisper's sample_len: half the decoder's context
_ENGLISH_ONLY_VOCAB = 51864


def alignment_path(attention: torch.Tensor, medfilt_width: int = MEDIAN_FILTER_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(text indices, time indices) of the DTW path through alignment-head attention.

    `attention`: heads x rows x frames, softmaxed over the window's real frames only; one row per
    text token plus one for end-of-text. Normalized, smoothed and averaged as openai-whisper does.
    (CTranslate2 does this inside its own `align`.)
    """
    std, mean = torch.std_mean(attention, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((attention - mean) / std, medfilt_width)
    return dtw(-weights.mean(dim=0))


def torch_dtype_for(plan: Plan) -> torch.dtype:
    """fp32 on CPU (half precision there is slow and lossy); the plan's dtype on CUDA, fp16 for auto."""
    if not plan.device.startswith("cuda"):
        return torch.float32
    dtypes = {"auto": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if plan.dtype not in dtypes:
        raise ValueError(f"unknown dtype {plan.dtype!r}; known: {', '.join(dtypes)}")
    return dtypes[plan.dtype]


def load_model(plan: Plan) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """The plan's model (provisioned as a transformers directory) on its device, quantized as the
    plan says (steadyscribe.models.quantize), and its processor."""
    from steadyscribe.models.provision import provision
    from steadyscribe.models.quantize import load_quantized_transformers

    model_dir = provision(plan.model, "transformers", plan.model_cache_dir)
    model = load_quantized_transformers(
        model_dir, plan.quantization, plan.device, torch_dtype_for(plan), cache_dir=plan.model_cache_dir
    )
    return model, WhisperProcessor.from_pretrained(model_dir)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out-of-memory, or a failed CPU allocation (torch's or Python's)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class PeakRssMeter:
    """Peak resident memory of this process while one batch runs.

    Linux keeps the peak (VmHWM) and lets a process reset it; elsewhere, or where the reset is not
    allowed, the RSS after the batch stands in (it misses activations freed before the end).
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._peak_was_reset = False

    def start(self) -> int:
        """Reset the peak; return the RSS now."""
        self._peak_was_reset = reset_peak_rss()
        return self._process.memory_info().rss

    def peak(self) -> int:
        rss = self._process.memory_info().rss
        return max(rss, vm_hwm_bytes()) if self._peak_was_reset else rss


class _ChosenTokenLogprobs(LogitsProcessor):
    """Log-probability of each generated token, as openai-whisper scores it.

    Runs after Whisper's own processors (suppressed tokens, timestamp rules) and before sampling's
    temperature. A step's chosen token is known only at the next step (or from the final sequences),
    so only the previous step's distribution is kept.
    """

    def __init__(self) -> None:
        self._previous: torch.Tensor | None = None
        self._chosen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._previous is not None:
            self._chosen.append(self._previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._previous = scores.float().log_softmax(dim=-1)
        return scores

    def per_step(self, sequences: torch.Tensor) -> torch.Tensor:
        """batch x steps log-probabilities, given generate's final sequences."""
        self._chosen.append(self._previous.gather(-1, sequences[:, -1:]).squeeze(-1))
        return torch.stack(self._chosen, dim=1).cpu()


class TransformersEngine:
    """Batched Whisper decoding on transformers with word timestamps; see the module docstring.

    `batch_hook` is called with each batch before it is decoded (tests raise out-of-memory errors
    from it); `memory` measures each batch's peak RSS for the memory budget.
    """

    name = "transformers"

    def __init__(
        self,
        plan: Plan,
        *,
        batch_hook: Callable[[list[WindowAudio]], None] | None = None,
        memory: PeakRssMeter | None = None,
        with_timestamps: bool = False,
    ) -> None:
        """with_timestamps=True decodes timestamp tokens and keeps Whisper's own segments. By
        default windows decode without them, since a fixed window loses the last sentence that
        Whisper leaves to the next window (docs/benchmark.md, "Timestamp tokens"), and segments
        are the sentences of each window's words."""
        torch.set_num_threads(max(1, plan.threads))
        self.with_timestamps = with_timestamps
        self.plan = plan
        self.batch_size = plan.batch_size
        self.batch_hook = batch_hook
        self.memory = memory or PeakRssMeter()
        self.model, self.processor = load_model(plan)
        self.device = self.model.device
        self.is_multilingual = self.model.config.vocab_size > _ENGLISH_ONLY_VOCAB
        self.options = plan.decoding
        if not self.is_multilingual and (need := self.options.multilingual_need()):
            raise ValueError(f"{need} needs a multilingual model; {plan.model} is English-only")
        self.alignment_heads = [(int(layer), int(head)) for layer, head in self.model.generation_config.alignment_heads]
        # Start-of-transcript and the special tokens read at it (no-speech, languages).
        self.base_tokenizer = self._tokenizer(plan.language or "en")
        # <|startofprev|> and the prompt's text (initial prompt, hotwords), the same for every window.
        prompt = prompt_tokens(self.base_tokenizer.encode, self.options)
        self.prompt_ids = [self.base_tokenizer.sot_prev, *prompt] if prompt else []
        # -1 stands for the checkpoint's own list of non-speech tokens, as in openai-whisper.
        suppress = set(self.options.suppress_tokens)
        if -1 in suppress:
            suppress = (suppress - {-1}) | set(self.model.generation_config.suppress_tokens or [])
        self.suppress_tokens = sorted(suppress)
        self.file_languages: dict[str, str] = {}  # file id -> the language of its first window

    def transcribe(self, windows: Iterable[WindowAudio]) -> Iterator[WindowResult]:
        stream = iter(windows)
        unfinished: deque[WindowAudio] = deque()
        # batch_size is read per batch: it shrinks under memory pressure.
        while batch := self._next_batch(unfinished, stream):
            rss_before = self.memory.start()
            try:
                results = self._decode_batch(batch)
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error) or len(batch) == 1:
                    raise
                results = None
            if results is None:
                # Outside the except block: its traceback no longer pins the failed batch's tensors.
                unfinished.extendleft(reversed(batch))
                self._shrink(len(batch), "ran out of memory")
                continue
            yield from results
            self._fit_memory_budget(len(batch), rss_before, self.memory.peak())

    def _next_batch(self, unfinished: deque[WindowAudio], stream: Iterator[WindowAudio]) -> list[WindowAudio]:
        """Windows a failed batch left unfinished first, then new ones from the stream."""
        batch = [unfinished.popleft() for _ in range(min(self.batch_size, len(unfinished)))]
        batch += islice(stream, self.batch_size - len(batch))
        return batch

    def _shrink(self, failed_size: int, reason: str) -> None:
        self.batch_size = max(1, failed_size // 2)
        logger.warning("batch of %d windows %s; continuing at batch size %d", failed_size, reason, self.batch_size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _fit_memory_budget(self, batch_len: int, rss_before: int, peak: int) -> None:
        """Halve the batch until the next one's projected peak RSS fits the plan's budget (CPU only)."""
        budget = self.plan.memory_budget_bytes
        if budget is None or self.device.type != "cpu":
            return
        per_window = max(0, peak - rss_before) / batch_len
        while self.batch_size > 1 and rss_before + per_window * self.batch_size > budget:
            projected = rss_before + per_window * self.batch_size
            self._shrink(self.batch_size, f"would peak at {projected / 2**20:.0f} MiB, over the budget of {budget / 2**20:.0f} MiB")

    # --- one batch ---------------------------------------------------------------------------

    def _decode_batch(self, batch: list[WindowAudio]) -> list[WindowResult]:
        if self.batch_hook is not None:
            self.batch_hook(batch)
        return [result for run in same_redecode(batch) for result in self._decode_run(run)]

    def _decode_run(self, batch: list[WindowAudio]) -> list[WindowResult]:
        """Decode windows that are all decoded the same way (WindowAudio.redecode)."""
        redecode = batch[0].redecode
        temperatures = redecode_temperatures(redecode, self.options.temperatures)
        if not temperatures:  # no fallback temperatures in the profile
            return [WindowResult(item.window, None, []) for item in batch]
        # A stretch decoded again gets no prompt, and is speech to the VAD whatever the model says. It
        # is decoded with timestamp tokens: without them tiny.en wrote " The" for 11 s of fast speech
        # and stopped, where with them it goes on, as the other engines do.
        prompt_ids = [] if redecode else self.prompt_ids
        timestamps = self.with_timestamps or redecode is not None
        with torch.inference_mode():
            encoded = self.model.model.encoder(self._features(batch)).last_hidden_state
            no_speech_probs, languages = self._first_step(encoded, [item.window for item in batch])
            tokenizers = [self._tokenizer(language) for language in languages]
            windows = [item.window for item in batch]
            decodings = self._decode(encoded, tokenizers, no_speech_probs, windows, temperatures, prompt_ids, timestamps)
            speech = [i for i, decoding in enumerate(decodings) if redecode or not decoding.is_silence]
            spans = {i: timestamped_spans(decodings[i].tokens, tokenizers[i], _span(batch[i])) for i in speech}
            text_tokens = {i: [t for span in spans[i] for t in span.tokens] for i in speech}
            words = self._align(encoded, batch, tokenizers, text_tokens)
        if not self.with_timestamps:
            spans = {i: sentence_spans(words[i]) for i in speech}
        results = []
        for i, (item, language, tokenizer, decoding) in enumerate(zip(batch, languages, tokenizers, decodings)):
            segments = []
            if i in spans:
                segments = window_segments(
                    item.window,
                    _span(item),
                    tokenizer,
                    spans[i],
                    words[i],
                    avg_logprob=decoding.avg_logprob,
                    no_speech_prob=decoding.no_speech_prob,
                    compression_ratio=decoding.compression_ratio,
                )
            results.append(WindowResult(item.window, language, [s for s in segments if s.words]))
        return results

    def _features(self, batch: list[WindowAudio]) -> torch.Tensor:
        """Log-mel features of each window padded to 30 s (normalized per window, as openai-whisper does)."""
        features = self.processor.feature_extractor(
            [np.asarray(item.samples, dtype=np.float32) for item in batch],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            device=str(self.device),
        ).input_features
        return features.to(self.device, self.model.dtype)

    def _first_step(self, encoded: torch.Tensor, windows: list[Window]) -> tuple[list[float], list[str]]:
        """No-speech probability and language of each window, from the logits at start-of-transcript
        (after the prompt, as openai-whisper reads them). A multilingual model without a language
        takes each file's from its first window; a file's windows arrive in order."""
        tokenizer = self.base_tokenizer
        start = torch.tensor([[*self.prompt_ids, tokenizer.sot]] * len(encoded), device=self.device)
        hidden = self.model.model.decoder(input_ids=start, encoder_hidden_states=encoded, use_cache=False).last_hidden_state
        logits = self.model.proj_out(hidden[:, -1]).float()
        no_speech_probs = logits.softmax(dim=-1)[:, tokenizer.no_speech].tolist()
        if not self.is_multilingual:
            return no_speech_probs, ["en"] * len(encoded)
        if self.plan.language is not None:
            return no_speech_probs, [self.plan.language] * len(encoded)
        language_tokens = list(tokenizer.all_language_tokens)
        detected = logits[:, language_tokens].argmax(dim=-1).tolist()
        for window, index in zip(windows, detected):
            self.file_languages.setdefault(window.file_id, tokenizer.all_language_codes[index])
        return no_speech_probs, [self.file_languages[window.file_id] for window in windows]

    def _tokenizer(self, language: str) -> Tokenizer:
        # get_tokenizer is cached: one instance per language. Offline: its vocabularies ship with whisper.
        vocab_size = self.model.config.vocab_size
        return get_tokenizer(
            multilingual=self.is_multilingual,
            num_languages=vocab_size - 51765 - int(self.is_multilingual),
            language=language,  # ignored by English-only tokenizers
            task=self.options.task,
        )

    def _decode(
        self,
        encoded: torch.Tensor,
        tokenizers: list[Tokenizer],
        no_speech_probs: list[float],
        windows: list[Window],
        temperatures: tuple[float, ...],
        prompt_ids: list[int],
        timestamps: bool,
    ) -> list[Hypothesis]:
        """Decode every window; retry suspicious ones at the next temperature, as openai-whisper does."""

        def generate(rows: list[int], temperature: float) -> list[Hypothesis]:
            if temperature > 0:  # decode_with_fallback samples one window at a time
                torch.manual_seed(window_seed(windows[rows[0]]))
            return self._generate(encoded, rows, tokenizers, no_speech_probs, temperature, prompt_ids, timestamps)

        return decode_with_fallback(generate, len(encoded), temperatures)

    def _generate(
        self,
        encoded: torch.Tensor,
        rows: list[int],
        tokenizers: list[Tokenizer],
        no_speech_probs: list[float],
        temperature: float,
        prompt_ids: list[int],
        timestamps: bool = False,
    ) -> list[Hypothesis]:
        logprobs = _ChosenTokenLogprobs()
        language_args = {}
        if self.is_multilingual:
            language_args = {"language": [tokenizers[i].language for i in rows], "task": self.options.task}
        beams = self.options.beam_size if temperature == 0 else 1
        samples = (self.options.best_of or 1) if temperature > 0 else 1
        if temperature > 0:
            # top_k=0: sample from the whole distribution, as openai-whisper does; best_of samples per window.
            search_args = {"do_sample": True, "temperature": temperature, "top_k": 0, "num_return_sequences": samples}
        else:
            search_args = {"num_beams": beams} if beams > 1 else {}
        prompt_args = {"prompt_ids": torch.tensor(prompt_ids, device=self.device)} if prompt_ids else {}
        rows_encoded = encoded if len(rows) == len(encoded) else encoded[rows]
        output = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=rows_encoded),
            return_timestamps=timestamps,
            # One call per window: with encoder outputs given, generate cannot seek on its own.
            force_unique_generate_call=True,
            return_dict_in_generate=True,
            # Whisper's generate adds the prompt's length to max_length, so this caps the generated
            # tokens (max_new_tokens would warn on every call about the checkpoint's max_length).
            max_length=MAX_NEW_TOKENS,
            suppress_tokens=self.suppress_tokens,
            logits_processor=LogitsProcessorList([] if beams > 1 else [logprobs]),
            **language_args,
            **search_args,
            **prompt_args,
        )
        if beams > 1:
            # Beam search reorders hypotheses every step: score the chosen ones in one teacher-forced pass.
            generated = self._generated_tokens(output.sequences, tokenizers, rows, timestamps)
            avg_logprobs = self._average_logprobs(rows_encoded, tokenizers, rows, generated, prompt_ids, timestamps)
        else:
            step_logprobs = logprobs.per_step(output.sequences)
            generated = output.sequences[:, output.sequences.shape[1] - step_logprobs.shape[1] :].tolist()
            generated, avg_logprobs = zip(*(_up_to_end(tokens, lp, tokenizers[0].eot) for tokens, lp in zip(generated, step_logprobs)))
        decodings = []
        for k, (tokens, avg_logprob) in enumerate(zip(generated, avg_logprobs)):
            row = rows[k // samples]
            tokenizer = tokenizers[row]
            text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
            decodings.append(
                Hypothesis(
                    tokens=list(tokens),
                    text=text,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=no_speech_probs[row],
                    compression_ratio=compression_ratio(text),
                )
            )
        # best_of: the likeliest of each window's samples, as openai-whisper ranks them.
        return [max(decodings[k : k + samples], key=lambda d: d.avg_logprob) for k in range(0, len(decodings), samples)]

    def _generated_tokens(
        self, sequences: torch.Tensor, tokenizers: list[Tokenizer], rows: list[int], timestamps: bool
    ) -> list[list[int]]:
        """The generated tokens of each row, after its start sequence and before end-of-text."""
        generated = []
        for sequence, row in zip(sequences.tolist(), rows):
            tokenizer = tokenizers[row]
            start = list(tokenizer.sot_sequence if timestamps else tokenizer.sot_sequence_including_notimestamps)
            for i in range(len(sequence) - len(start) + 1):  # skip the prompt and start sequence, if returned
                if sequence[i : i + len(start)] == start:
                    sequence = sequence[i + len(start) :]
                    break
            generated.append(sequence[: sequence.index(tokenizer.eot)] if tokenizer.eot in sequence else sequence)
        return generated

    def _average_logprobs(
        self,
        encoded: torch.Tensor,
        tokenizers: list[Tokenizer],
        rows: list[int],
        generated: list[list[int]],
        prompt_ids: list[int],
        timestamps: bool,
    ) -> list[float]:
        """openai-whisper's avg_logprob of each row's tokens (plus end-of-text), teacher-forced."""
        starts = [
            [*prompt_ids, *(tokenizers[row].sot_sequence if timestamps else tokenizers[row].sot_sequence_including_notimestamps)]
            for row in rows
        ]
        sequences = [start + tokens + [tokenizers[row].eot] for start, tokens, row in zip(starts, generated, rows)]
        length = max(len(sequence) for sequence in sequences)
        input_ids = torch.tensor([sequence + [tokenizers[0].eot] * (length - len(sequence)) for sequence in sequences], device=self.device)
        hidden = self.model.model.decoder(input_ids=input_ids, encoder_hidden_states=encoded, use_cache=False).last_hidden_state
        logprobs = self.model.proj_out(hidden).float().log_softmax(dim=-1)
        averages = []
        for k, (start, sequence) in enumerate(zip(starts, sequences)):
            targets = torch.tensor(sequence[len(start) :], device=self.device)
            positions = torch.arange(len(start) - 1, len(sequence) - 1, device=self.device)
            averages.append(float(logprobs[k, positions, targets].mean()))
        return averages

    def _align(
        self,
        encoded: torch.Tensor,
        batch: list[WindowAudio],
        tokenizers: list[Tokenizer],
        text_tokens: dict[int, list[int]],
    ) -> dict[int, list]:
        """Word timings per window with text: one teacher-forced decoder pass over all their tokens."""
        rows = [i for i, tokens in text_tokens.items() if tokens]
        words: dict[int, list] = {i: [] for i in text_tokens}
        if not rows:
            return words
        # [start sequence, no-timestamps, text, end-of-text]: the sequence openai-whisper aligns.
        # Right padding needs no mask: the decoder is causal, so it cannot reach real positions.
        sequences = [
            [*tokenizers[i].sot_sequence, tokenizers[i].no_timestamps, *text_tokens[i], tokenizers[i].eot] for i in rows
        ]
        length = max(len(sequence) for sequence in sequences)
        input_ids = torch.tensor(
            [sequence + [tokenizers[0].eot] * (length - len(sequence)) for sequence in sequences], device=self.device
        )
        queries, keys, hidden = self._cross_attention_inputs(input_ids, encoded[rows])
        head_dim = self.model.config.d_model // self.model.config.decoder_attention_heads
        scaling = head_dim**-0.5
        for row, i in enumerate(rows):
            tokenizer, tokens = tokenizers[i], text_tokens[i]
            # Position of the token that predicts text token k (k = len(tokens): end-of-text).
            first = len(tokenizer.sot_sequence)
            positions = slice(first, first + len(tokens) + 1)
            frames = min(len(batch[i].samples), N_SAMPLES) // HOP_LENGTH // 2  # encoder frames of real audio
            attention = torch.stack(
                [
                    (
                        queries[layer][row, positions, head * head_dim : (head + 1) * head_dim].float()
                        @ keys[layer][row, :frames, head * head_dim : (head + 1) * head_dim].float().T
                        * scaling
                    ).softmax(dim=-1)
                    for layer, head in self.alignment_heads
                ]
            )
            text_indices, time_indices = alignment_path(attention.cpu())
            logits = self.model.proj_out(hidden[row, first : first + len(tokens)]).float()[:, : tokenizer.eot]
            token_probs = logits.softmax(dim=-1)[torch.arange(len(tokens)), tokens].cpu().numpy()
            words[i] = word_timings(tokenizer, tokens, text_indices, time_indices, token_probs)
        return words

    def _cross_attention_inputs(
        self, input_ids: torch.Tensor, encoded: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
        """Cross-attention queries and keys of the alignment layers, and the decoder's output.

        Captured from the projections: SDPA computes attention without handing out its weights.
        """
        layers = self.model.model.decoder.layers
        queries: dict[int, torch.Tensor] = {}
        keys: dict[int, torch.Tensor] = {}
        hooks = []
        for layer in {layer for layer, _ in self.alignment_heads}:
            attention = layers[layer].encoder_attn
            hooks.append(attention.q_proj.register_forward_hook(lambda _, __, out, n=layer: queries.__setitem__(n, out)))
            hooks.append(attention.k_proj.register_forward_hook(lambda _, __, out, n=layer: keys.__setitem__(n, out)))
        try:
            hidden = self.model.model.decoder(
                input_ids=input_ids, encoder_hidden_states=encoded, use_cache=False
            ).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        return queries, keys, hidden


def _up_to_end(tokens: list[int], token_logprobs: torch.Tensor, eot: int) -> tuple[list[int], float]:
    """Tokens before end-of-text and their average log-probability, end-of-text included as whisper
    counts it; padding after it does not count."""
    if eot in tokens:
        tokens = tokens[: tokens.index(eot)]
        scored = len(tokens) + 1
    else:
        scored = len(tokens)
    return tokens, float(token_logprobs[:scored].sum()) / max(1, scored)


def _span(item: WindowAudio) -> float:
    """Seconds of audio the window really holds."""
    return min(item.window.end - item.window.start, len(item.samples) / SAMPLE_RATE)
