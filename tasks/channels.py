"""Channels stage (profile `audio.channels: split`): which channels of a file to transcribe, and one
transcript from theirs.

In call recordings each party has a channel of its own, so the channel says who spoke, exactly and
without a model. The decode stage writes one PCM per channel; this stage

1. finds channels that are copies of an earlier one (a mono recording stored as stereo, or a
   channel that carries only the other party's bleed): their normalized zero-lag correlation over
   the whole file is at least DUPLICATE_CORRELATION, so they would give the same words twice;
2. finds channels that are silent: the VAD is confident that none of the channel holds speech
   (the test the chunk stage uses to skip a window, over the whole channel);
3. hands every other channel on as a unit of its own, with its own file_id
   (`<file_id>:ch<channel>`), since the engines and the stabilization stage key their state by
   file_id. The units are chunked, batched and transcribed with every other file's windows;
4. joins the channels' stabilized transcripts into the file's one transcript: segments of all
   channels in time order, each tagged with its channel and speaker. What was not transcribed,
   and why, goes to the file's warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.pcm import load_pcm
from steadyscribe.records import DecodedAudio, StabilizationCounts, Transcript
from steadyscribe.vad import VadThresholds, confidently_silent, file_probabilities

# A channel whose samples correlate with an earlier channel's at least this much (either sign) is
# a copy of it. Two people's speech correlates near 0; a copy at another gain, or inverted, at 1.
DUPLICATE_CORRELATION = 0.99
# Samples read per channel at a time while comparing channels (30 s: memory stays flat on long files).
BLOCK_SAMPLES = 30 * SAMPLE_RATE


def channel_file_id(file_id: str, channel: int) -> str:
    """The id a channel is transcribed under: engines and stabilization keep per-file state by it."""
    return f"{file_id}:ch{channel}"


def speaker_name(channel: int, speakers: Sequence[str] | None) -> str:
    """The profile's name for the channel (`audio.speakers`, in channel order), else ch0, ch1, ..."""
    return speakers[channel] if speakers and channel < len(speakers) else f"ch{channel}"


def channel_correlations(samples: Sequence[np.ndarray]) -> np.ndarray:
    """The channels' normalized zero-lag correlations, a (channels, channels) matrix; 0 against a channel of zeros."""
    n = min(len(s) for s in samples)
    gram = np.zeros((len(samples), len(samples)))
    for first in range(0, n, BLOCK_SAMPLES):
        block = np.stack([np.asarray(s[first : min(first + BLOCK_SAMPLES, n)], dtype=np.float64) for s in samples])
        gram += block @ block.T
    energy = np.sqrt(np.diag(gram))
    scale = np.outer(energy, energy)
    return np.divide(gram, scale, out=np.zeros_like(gram), where=scale > 0)


def copies_of_earlier_channels(correlations: np.ndarray, threshold: float = DUPLICATE_CORRELATION) -> dict[int, int]:
    """{channel: the earlier channel it copies}; a channel is compared only with channels that are not copies themselves."""
    copies: dict[int, int] = {}
    for channel in range(1, len(correlations)):
        originals = [c for c in range(channel) if c not in copies and abs(correlations[channel, c]) >= threshold]
        if originals:
            copies[channel] = originals[0]
    return copies


def silent_channel(pcm_path: str, thresholds: VadThresholds) -> bool:
    """Whether the VAD is confident that no part of the channel is speech (its probabilities are kept for chunking)."""
    samples = load_pcm(pcm_path)
    probs = file_probabilities(pcm_path, samples)
    return confidently_silent(probs, 0.0, len(samples) / SAMPLE_RATE, thresholds)


@dataclass
class ChannelSplit:
    """A split file's channels: those to transcribe, and what was left out and why."""

    file_id: str
    duration_s: float
    speakers: list[str]  # one name per channel of the input
    transcribe: dict[int, DecodedAudio]  # channel → the unit transcribed for it (file_id channel_file_id)
    silent: list[int] = field(default_factory=list)
    copies: dict[int, int] = field(default_factory=dict)  # channel → the channel it copies
    warnings: list[str] = field(default_factory=list)

    def label(self, channel: int) -> str:
        return f"channel {channel} ({self.speakers[channel]})"


def split_channels(decoded: DecodedAudio, speakers: Sequence[str] | None, thresholds: VadThresholds) -> ChannelSplit:
    """Decide which channels of a decoded split file to transcribe (copies first: they need no VAD)."""
    names = [speaker_name(c, speakers) for c in range(len(decoded.channel_paths))]
    copies = (
        copies_of_earlier_channels(channel_correlations([load_pcm(p) for p in decoded.channel_paths]))
        if len(decoded.channel_paths) > 1 else {}
    )
    candidates = [c for c in range(len(decoded.channel_paths)) if c not in copies]
    silent = [c for c in candidates if silent_channel(decoded.channel_paths[c], thresholds)]
    split = ChannelSplit(
        decoded.file_id,
        decoded.duration_s,
        names,
        {
            c: replace(
                decoded,
                source=f"{decoded.source} (channel {c})",
                file_id=channel_file_id(decoded.file_id, c),
                pcm_path=decoded.channel_paths[c],
                channel_paths=[],
                warnings=[],
            )
            for c in candidates
            if c not in silent
        },
        silent=silent,
        copies=copies,
    )
    for channel, original in copies.items():
        split.warnings.append(
            f"{split.label(channel)} is a copy of {split.label(original)}: transcribed once, as channel {original}"
        )
    for channel in silent:
        split.warnings.append(f"{split.label(channel)} is silent (the VAD found no speech in it): not transcribed")
    return split


def join_channels(split: ChannelSplit, transcripts: Mapping[int, Transcript]) -> Transcript:
    """The file's transcript from its channels': segments of every channel in time order, tagged with channel and speaker.

    Counts add up over the channels; skipped_ms also counts the silent channels, which no window
    covers (channel-seconds the VAD judged to hold no speech).
    """
    segments = sorted(
        (
            replace(s, channel=channel, speaker=split.speakers[channel])
            for channel, transcript in transcripts.items()
            for s in transcript.segments
        ),
        key=lambda s: (s.start, s.channel),
    )
    languages = Counter(t.language for t in transcripts.values() if t.language and t.segments)
    silent = StabilizationCounts(skipped_ms=round(1000 * split.duration_s * len(split.silent)))
    stabilization = sum((t.stabilization for t in transcripts.values()), silent)
    batch_sizes = [t.batch_size for t in transcripts.values() if t.batch_size is not None]
    return Transcript(
        file_id=split.file_id,
        language=languages.most_common(1)[0][0] if languages else None,
        segments=segments,
        batch_size=max(batch_sizes) if batch_sizes else None,
        stabilization=stabilization,
        warnings=[
            *split.warnings,
            *(f"{split.label(c)}: {warning}" for c, t in transcripts.items() for warning in t.warnings),
        ],
    )


def join_channel_files(split: ChannelSplit, transcript_paths: Mapping[str, str], work_dir: str | Path) -> str:
    """join_channels over the channels' saved transcripts; returns the path of the file's transcript."""
    transcripts = {c: Transcript.load(transcript_paths[unit.file_id]) for c, unit in split.transcribe.items()}
    return join_channels(split, transcripts).save(Path(work_dir) / f"{split.file_id}.channels.json")


@task(name="channels")
def channels_task(
    decoded: Mapping[str, DecodedAudio], speakers: list[str] | None, vad: VadThresholds = VadThresholds()
) -> dict[str, ChannelSplit]:
    """split_channels for each file of a group that has channel files (one task run per group), by file id."""
    return {file_id: split_channels(d, speakers, vad) for file_id, d in decoded.items() if d.channel_paths}
