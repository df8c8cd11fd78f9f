"""Whisper's tokenizer from a checkpoint's tokenizer.json (Hugging Face `tokenizers`), without openai-whisper.

The CTranslate2 engine uses it so that it imports neither torch nor openai-whisper. It gives the
same token ids as openai-whisper's tiktoken tokenizer (tests/test_tokenizer.py) and offers the part
of its interface the engines use: start sequences, special tokens, encode/decode and the split of
tokens into words.
"""

from __future__ import annotations

import string
from functools import cache, cached_property
from pathlib import Path

import tokenizers

# Languages written without spaces between words: words are split wherever the tokens decode to
# whole characters (openai-whisper's list).
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
REPLACEMENT_CHARACTER = "\ufffd"  # what decoding gives for a token that ends inside a character


class WhisperTokenizer:
    """Token ids and text of one (language, task) for a Whisper checkpoint's vocabulary.

    English-only models have no language or task token: their start sequence is <|startoftranscript|>.
    """

    def __init__(self, vocabulary: tokenizers.Tokenizer, *, multilingual: bool, language: str = "en", task: str = "transcribe"):
        self.vocabulary = vocabulary
        self.multilingual = multilingual
        self.language = language if multilingual else "en"
        self.task = task if multilingual else None
        if multilingual:
            for token in (f"<|{language}|>", f"<|{task}|>"):
                if vocabulary.token_to_id(token) is None:
                    raise ValueError(f"this model's vocabulary has no {token} token")

    def special(self, token: str) -> int:
        """The id of a special token such as <|endoftext|>."""
        token_id = self.vocabulary.token_to_id(token)
        if token_id is None:
            raise KeyError(f"this model's vocabulary has no {token} token")
        return token_id

    @cached_property
    def eot(self) -> int:
        return self.special("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self.special("<|startoftranscript|>")

    @cached_property
    def sot_prev(self) -> int:
        return self.special("<|startofprev|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self.special("<|notimestamps|>")

    @cached_property
    def timestamp_begin(self) -> int:
        # <|0.00|> follows <|notimestamps|>; some tokenizer.json files do not list the timestamps.
        return self.no_timestamps + 1

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        if not self.multilingual:
            return (self.sot,)
        return (self.sot, self.special(f"<|{self.language}|>"), self.special(f"<|{self.task}|>"))

    @cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    def encode(self, text: str) -> list[int]:
        return self.vocabulary.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """The text of `tokens`, timestamp tokens left out."""
        return self._decode([t for t in tokens if t < self.timestamp_begin])

    def _decode(self, tokens: list[int]) -> str:
        # Special tokens decode to their names, as tiktoken's do.
        return self.vocabulary.decode(tokens, skip_special_tokens=False)

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Words and the tokens of each: at spaces and punctuation, or at characters for UNSPACED_LANGUAGES."""
        if self.language in UNSPACED_LANGUAGES:
            return self._split_on_characters(tokens)
        return self._split_on_spaces(tokens)

    def _split_on_characters(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Runs of tokens that decode to whole characters (a lone replacement character counts when
        the full text has one there too: the model produced invalid bytes)."""
        full_text = self._decode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            text = self._decode(current)
            broken = text.find(REPLACEMENT_CHARACTER)
            if broken < 0 or full_text[offset + broken] == REPLACEMENT_CHARACTER:
                words.append(text)
                word_tokens.append(current)
                current = []
                offset += len(text)
        return words, word_tokens

    def _split_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """A new word at each piece that starts with a space, is punctuation or a special token."""
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, piece_tokens in zip(*self._split_on_characters(tokens)):
            starts_word = piece_tokens[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            if starts_word or not words:
                words.append(piece)
                word_tokens.append(piece_tokens)
            else:
                words[-1] += piece
                word_tokens[-1].extend(piece_tokens)
        return words, word_tokens


@cache
def load_vocabulary(model_dir: str) -> tokenizers.Tokenizer:
    """The tokenizer.json of a CTranslate2 checkpoint, loaded once per process."""
    return tokenizers.Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


@cache
def whisper_tokenizer(model_dir: str, multilingual: bool, language: str, task: str) -> WhisperTokenizer:
    """One tokenizer per checkpoint, language and task (cached: each caches its special tokens)."""
    return WhisperTokenizer(load_vocabulary(model_dir), multilingual=multilingual, language=language, task=task)
