"""Cross-file window packing: the speech of several short files in one 30-second window.

Whisper's encoder always sees 30 s, so a 5-second clip alone costs a whole encoder pass and a
decoder pass over mostly padding. Packing lays whole short files end to end in one window,
separated by `gap_s` of silence (long enough for the model to end a sentence at the seam), decodes
that window once, and gives each word back to the file it lies in, by time.

Only files that are a single window are packed (a long file's windows stay in their own order),
and only where every file is decoded in the same language (a window holds one language): the
infer stage turns packing off for a multilingual model that detects languages. A packed file's
text may depend on its window mates, as it would on any other context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from steadyscribe import SAMPLE_RATE
from steadyscribe.engines.base import WindowAudio, WindowResult
from steadyscribe.records import Segment, Window, Word

PACK_PREFIX = "pack:"
# A window opens at most 1 s before its speech (tasks/chunk.py); the rest of the slack is the
# alignment's own error at a window's edges.
COVERAGE_SLACK_S = 1.5


@dataclass(frozen=True)
class Member:
    """One file's window inside a packed window, starting `offset` seconds into it."""

    window: Window
    offset: float

    @property
    def length(self) -> float:
        return self.window.end - self.window.start


@dataclass(frozen=True)
class PackedWindow:
    """A window made of several files' whole windows, with `gap_s` of silence between them."""

    window: Window  # file_id "pack:<first member's file id>", start 0, end = packed length
    members: tuple[Member, ...]
    gap_s: float

    def member_at(self, time: float) -> Member:
        """The member a moment of the packed window belongs to: seams lie halfway through each gap."""
        for member in self.members[:-1]:
            if time < member.offset + member.length + self.gap_s / 2:
                return member
        return self.members[-1]


def pack_windows(windows: list[Window], max_window_s: float, gap_s: float) -> list[Window | PackedWindow]:
    """The windows to decode: single-window files packed first-fit into windows of at most `max_window_s`.

    A file's windows keep their order; a file with several windows is never packed. A packed
    window with one member is that member's own window again.
    """
    windows_per_file: dict[str, int] = {}
    for window in windows:
        windows_per_file[window.file_id] = windows_per_file.get(window.file_id, 0) + 1
    bins: list[list[Window]] = []
    lengths: list[float] = []
    out: list[Window | list[Window]] = []
    for window in windows:
        length = window.end - window.start
        if windows_per_file[window.file_id] > 1 or length + gap_s > max_window_s:
            out.append(window)
            continue
        for i, bin_length in enumerate(lengths):
            if bin_length + gap_s + length <= max_window_s:
                bins[i].append(window)
                lengths[i] += gap_s + length
                break
        else:
            bins.append([window])
            lengths.append(length)
            out.append(bins[-1])  # the bin takes the place of its first member
    return [item if isinstance(item, Window) else _packed(item, gap_s) for item in out]


def _packed(members: list[Window], gap_s: float) -> Window | PackedWindow:
    if len(members) == 1:
        return members[0]
    placed, offset = [], 0.0
    for window in members:
        placed.append(Member(window, round(offset, 3)))
        offset += window.end - window.start + gap_s
    window = Window(PACK_PREFIX + members[0].file_id, 0, 0.0, round(offset - gap_s, 3))
    return PackedWindow(window, tuple(placed), gap_s)


def packed_samples(pack: PackedWindow, samples_of: dict[str, np.ndarray]) -> np.ndarray:
    """The packed window's audio: each member's samples at its offset, digital silence between."""
    audio = np.zeros(round(pack.window.end * SAMPLE_RATE), dtype=np.float32)
    for member in pack.members:
        first = round(member.window.start * SAMPLE_RATE)
        piece = samples_of[member.window.file_id][first : first + round(member.length * SAMPLE_RATE)]
        at = round(member.offset * SAMPLE_RATE)
        audio[at : at + piece.size] = piece[: audio.size - at]
    return audio


def unpack_result(pack: PackedWindow, result: WindowResult) -> list[WindowResult]:
    """One result per member: each word goes to the member its middle lies in, in that file's time.

    A segment that runs across a seam is split there; its text is rebuilt from its words.
    """
    pieces: dict[Member, list[Segment]] = {member: [] for member in pack.members}
    for segment in result.segments:
        words_by_member: dict[Member, list[Word]] = {}
        for word in segment.words:
            member = pack.member_at((word.start + word.end) / 2)
            words_by_member.setdefault(member, []).append(_to_file_time(word, member))
        for member, words in words_by_member.items():
            pieces[member].append(
                Segment(
                    start=words[0].start,
                    end=words[-1].end,
                    text="".join(word.word for word in words).strip(),
                    words=words,
                    avg_logprob=segment.avg_logprob,
                    no_speech_prob=segment.no_speech_prob,
                    compression_ratio=segment.compression_ratio,
                )
            )
    return [WindowResult(member.window, result.language, pieces[member]) for member in pack.members]


def heard_whole(result: WindowResult, slack_s: float = COVERAGE_SLACK_S) -> bool:
    """Whether a packed file's words reach from within `slack_s` of its window's start to within `slack_s` of its end.

    In a packed window the model may skip the first words of a file that follows the pause
    before it, or stop before a file's end; such a file is decoded again alone.
    """
    words = [word for segment in result.segments for word in segment.words]
    return bool(words) and words[0].start - result.window.start <= slack_s and result.window.end - words[-1].end <= slack_s


def _to_file_time(word: Word, member: Member) -> Word:
    shift = member.window.start - member.offset
    start = min(max(word.start + shift, member.window.start), member.window.end)
    end = min(max(word.end + shift, start), member.window.end)
    return Word(word.word, round(start, 3), round(end, 3), word.probability)


def packed_stream(items: Iterable[Window | PackedWindow], samples_of: dict[str, np.ndarray]) -> Iterator[WindowAudio]:
    """The engine's input: each window or packed window with its samples."""
    for item in items:
        if isinstance(item, PackedWindow):
            yield WindowAudio(item.window, packed_samples(item, samples_of))
        else:
            first, last = int(item.start * SAMPLE_RATE), int(item.end * SAMPLE_RATE)
            yield WindowAudio(item, samples_of[item.file_id][first:last])
