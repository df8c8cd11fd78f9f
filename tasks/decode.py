"""Decode stage: any audio (or video) input → 16 kHz mono float32 PCM on local disk.

With the profile's `audio.channels: split`, each channel goes to its own PCM file instead of
the mono mix (tasks/channels.py then decides which channels to transcribe).

Decoding streams frame by frame into a raw file, and later stages read that file in
slices (steadyscribe.pcm), so memory does not grow with the input's length.

Every input gets a record: a bad input (missing, unreadable, empty, not audio, corrupt,
an unsupported codec, too short) yields a `failed` record whose error says what is wrong,
with which file, and what to do; decode_input never raises. A truncated input is decoded as
far as it goes and its record carries a "truncated: ..." warning.

The decode task runs decode_input in a child process of its thread (steadyscribe/isolation.py):
an input that crashes or hangs FFmpeg fails alone, with a row that says so, and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO, Literal

import av
import fsspec
import numpy as np
from fsspec.registry import known_implementations
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.isolation import ChildCrashed, ChildHung, ChildProcess
from steadyscribe.records import DecodedAudio, InputFile
from steadyscribe.storage import (
    is_disk_full, is_transient_io_error, missing_credentials_advice, no_space_in_temp_dir, protocol_of, with_retries,
)
from steadyscribe.tasks.discover import content_sha256

MIN_DURATION_S = 0.1

# A decoder child that reads and writes nothing for this long hangs (isolation.ChildHung): longer
# than a storage backend's timeouts plus storage.with_retries' longest back-off (30 s).
DECODE_HANG_S = 600.0
# Each thread that decodes has a decoder child of its own (isolation.ChildProcess), kept for
# later groups, and killed by the kernel when the thread ends.
_decoders = threading.local()

# A file cut short (an upload or copy that did not finish) is transcribed as far as it goes and
# flagged: its decoded length is compared with the length its container declares, and a decoder
# error after some audio is taken as the end of the file. Containers in EXACT_DURATION_FORMATS
# state the exact length in their header (WAV's is read from the header itself, as FFmpeg
# measures a cut WAV by its size); elsewhere the length is an estimate (MP3 without a Xing
# header: from the bitrate; Ogg: from the last page), so only a larger shortfall counts.
EXACT_DURATION_FORMATS = frozenset({"flac", "wav", "w64", "aiff", "caf", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
EXACT_TOLERANCE_S = 0.5
ESTIMATE_TOLERANCE_S = 1.0
ESTIMATE_TOLERANCE_FRACTION = 0.2

CONVERT_HINT = "convert it to FLAC, WAV or MP3 (e.g. `ffmpeg -i INPUT -ac 1 -ar 16000 OUTPUT.flac`)"

# Leading bytes of files that are often misnamed as audio, for a clearer error.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
)
_SNIFF_BYTES = 512


class DecodeError(Exception):
    """The input cannot be turned into audio; the message says what to do about it."""


def channel_pcm_path(pcm_path: Path, channel: int) -> Path:
    """Where channel `channel` of a split input is decoded to, beside the path of its mix."""
    return pcm_path.with_suffix(f".ch{channel}.f32")


def decode_input(
    item: InputFile,
    work_dir: str | Path,
    skip_file_ids: Collection[str] = (),
    channels: Literal["mix", "split"] = "mix",
) -> DecodedAudio:
    """Decode one input; a bad input yields a `failed` record with a helpful error, never an exception.

    Content already transcribed (its hash in `skip_file_ids`) is not decoded: it gets a `skipped` record.
    Transient storage errors are retried with back-off (storage.with_retries) before the file fails.
    `channels`: mix writes one mono PCM (`pcm_path`); split writes one PCM per channel
    (`channel_paths`, a single one for a mono input) and no mix.
    """
    started = time.perf_counter()
    source = item.source
    file_id: str | None = None
    pcm_path: Path | None = None

    def failed(error: str) -> DecodedAudio:
        if pcm_path is not None:
            pcm_path.unlink(missing_ok=True)
            for channel_path in pcm_path.parent.glob(f"{file_id}.ch*.f32"):
                channel_path.unlink(missing_ok=True)
        return DecodedAudio(source, "failed", file_id=file_id, error=error, decode_s=time.perf_counter() - started)

    try:
        file_id = content_sha256(source)
        if file_id in skip_file_ids:
            return DecodedAudio(source, "skipped", file_id=file_id, decode_s=time.perf_counter() - started)
        pcm_path = Path(work_dir) / f"{file_id}.f32"
        samples_n, warnings, paths = with_retries(lambda: _decode_to_raw(source, pcm_path, split=channels == "split"))
    except DecodeError as error:
        return failed(str(error))
    except FileNotFoundError:
        where = "no such file" if protocol_of(source) == "file" else "no object at this URL, or its bucket does not exist"
        return failed(f"{source}: not found ({where}); check the path or URL")
    except PermissionError as error:
        return failed(f"{source}: permission denied ({error}); grant read access or fix the storage credentials")
    except IsADirectoryError:
        return failed(f"{source}: is a directory, not an audio file; pass the directory itself to transcribe its files")
    except Exception as error:  # anything else fails this file only; the run goes on with the others
        if is_disk_full(error):
            return failed(f"{source}: could not be decoded: {no_space_in_temp_dir(Path(work_dir).parent, error)}")
        if advice := missing_credentials_advice(source, error):
            return failed(f"{source}: could not be read: {advice}")
        if is_transient_io_error(error):
            advice = "the storage kept failing after several retries; rerun later to pick this file up"
        else:
            advice = "unexpected error while reading; please report it with this message"
        return failed(f"{source}: could not be read ({type(error).__name__}: {error}); {advice}")
    duration_s = samples_n / SAMPLE_RATE
    if duration_s < MIN_DURATION_S:
        return failed(
            f"{source}: only {duration_s * 1000:.0f} ms of audio, shorter than the "
            f"{MIN_DURATION_S * 1000:.0f} ms minimum; nothing to transcribe"
        )
    split = channels == "split"
    return DecodedAudio(
        source, "ok", file_id=file_id, pcm_path=None if split else str(pcm_path),
        channel_paths=[str(p) for p in paths] if split else [],
        duration_s=duration_s, decode_s=time.perf_counter() - started, warnings=warnings,
    )


def _decode_to_raw(source: str, pcm_path: Path, split: bool = False) -> tuple[int, list[str], list[Path]]:
    """Stream-decode `source` into `pcm_path` (split: one file per channel beside it).

    Returns the number of samples written (per channel), any warnings and the files written.
    """
    with fsspec.open(source, "rb") as raw:
        head = raw.read(_SNIFF_BYTES)
        if not head:
            raise DecodeError(f"{source}: the file is empty (0 bytes); re-export or re-upload it")
        raw.seek(0)
        try:
            container = av.open(raw, mode="r")
        except av.FFmpegError as error:
            raise DecodeError(
                f"{source}: not a readable audio or video file ({_reason(error)}{_looks_like(head)}); "
                "check that it is not truncated and that its extension matches its content"
            ) from error
        with container, contextlib.ExitStack() as files:
            stream = _audio_stream(source, container, head)
            channels_n = max(1, len(stream.codec_context.layout.channels)) if split else 1
            paths = [channel_pcm_path(pcm_path, n) for n in range(channels_n)] if split else [pcm_path]
            outs = [files.enter_context(open(path, "wb")) for path in paths]
            samples_n, warnings = _decode_stream(source, container, stream, head, outs)
            return samples_n, warnings, paths


def _audio_stream(source: str, container: av.container.InputContainer, head: bytes) -> av.AudioStream:
    """The input's first audio stream, when FFmpeg can decode it."""
    if not container.streams.audio:
        held = ", ".join(f"{s.type} ({s.codec_context.name if s.codec_context else 'unknown codec'})" for s in container.streams)
        raise DecodeError(
            f"{source}: no audio stream in this {container.format.name} file "
            f"(it holds {held or 'no streams'}{_looks_like(head)}); nothing to transcribe"
        )
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        raise DecodeError(f"{source}: the audio codec is not supported (FFmpeg has no decoder for it); {CONVERT_HINT}")
    return stream


def _decode_stream(
    source: str, container: av.container.InputContainer, stream: av.AudioStream, head: bytes, outs: list[BinaryIO]
) -> tuple[int, list[str]]:
    """Decode `stream` into `outs`: one file gets the mono mix, several get one channel each."""
    codec = stream.codec_context.name
    # Packed (interleaved) samples, also when splitting: PyAV finds a frame's planes by walking
    # FFmpeg's plane pointers up to the first null, which reads past the 8 pointers of a planar
    # frame with exactly 8 channels and crashed the process. A packed frame has one plane.
    layout = "mono" if len(outs) == 1 else stream.codec_context.layout
    resampler = av.AudioResampler(format="flt", layout=layout, rate=SAMPLE_RATE)
    samples_n = 0
    stopped_by = None  # the decoder's error, when it failed after some audio
    try:
        for frame in container.decode(stream):
            for resampled in resampler.resample(frame):
                samples_n += _write_frame(resampled, outs)
    except av.error.DecoderNotFoundError as error:
        raise DecodeError(f"{source}: the {codec} audio codec is not supported ({_reason(error)}); {CONVERT_HINT}") from error
    except av.FFmpegError as error:
        if samples_n == 0:
            raise DecodeError(
                f"{source}: the {codec} audio is corrupt: decoding failed at its start ({_reason(error)}); "
                "re-export or re-upload the file"
            ) from error
        stopped_by = _reason(error)
    for resampled in resampler.resample(None):
        samples_n += _write_frame(resampled, outs)
    if samples_n == 0:
        raise DecodeError(f"{source}: no audio could be decoded from the {codec} stream; the file is probably corrupt")
    decoded_s = samples_n / SAMPLE_RATE
    declared_s = _declared_duration_s(container, stream, head)
    short = declared_s is not None and declared_s - decoded_s > _truncation_tolerance_s(container.format.name, declared_s)
    if not (short or stopped_by):
        return samples_n, []
    of_declared = f" of a declared {declared_s:.1f} s" if declared_s is not None else ""
    cause = f" (the decoder stopped: {stopped_by})" if stopped_by else ""
    return samples_n, [
        f"truncated: {decoded_s:.1f} s{of_declared} decoded{cause}; the copy or upload probably did not finish, "
        "re-upload the file to transcribe the rest"
    ]


def _truncation_tolerance_s(container_format: str, declared_s: float) -> float:
    if container_format in EXACT_DURATION_FORMATS:
        return EXACT_TOLERANCE_S
    return max(ESTIMATE_TOLERANCE_S, ESTIMATE_TOLERANCE_FRACTION * declared_s)


def _declared_duration_s(container: av.container.InputContainer, stream: av.AudioStream, head: bytes) -> float | None:
    """The length the container declares, or None where it declares none."""
    if container.format.name == "wav":
        return _wav_declared_duration_s(head)
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration is not None else None


def _wav_declared_duration_s(head: bytes) -> float | None:
    """The length a RIFF/WAVE header's data chunk states, when that chunk starts within `head`."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    byte_rate, at = None, 12
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"fmt " and at + 20 <= len(head):
            byte_rate = int.from_bytes(head[at + 16 : at + 20], "little")
        if chunk == b"data":
            # Writers that stream to a pipe leave the size at 0 or 0xFFFFFFFF: no length declared.
            return size / byte_rate if byte_rate and 0 < size < 0xFFFFFFFF else None
        at += 8 + size + (size & 1)
    return None


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's message without its errno number and file name."""
    return error.strerror or type(error).__name__


def _looks_like(head: bytes) -> str:
    """'; it looks like …' for content that is plainly not audio, else ''."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"; it looks like {kind}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return "; it looks like a text file" if all(c.isprintable() or c.isspace() for c in text) else ""


def _write_frame(frame: av.AudioFrame, outs: list[BinaryIO]) -> int:
    """Write a resampled packed frame, its channels one to each file; returns samples per file."""
    channels = frame.to_ndarray().reshape(-1, len(outs)).astype("<f4", copy=False).T
    for channel, out in zip(channels, outs, strict=True):
        out.write(channel.tobytes())
    return channels.shape[1]


def decode_isolated(
    item: InputFile, work_dir: str | Path, skip_ids_path: str | Path, channels: Literal["mix", "split"] = "mix"
) -> DecodedAudio:
    """decode_input in this thread's decoder child process: a crash or hang of FFmpeg fails this file alone.

    `skip_ids_path`: a file of the content hashes not to decode again, one a line (written once
    per group, so the set is not sent with every file). An input on a filesystem that lives in this
    process only (memory://, or one registered at run time) is decoded here: a child cannot read it.
    """
    if not _readable_in_a_child(item.source):
        return _decode_listed(item, str(work_dir), str(skip_ids_path), channels)
    if not hasattr(_decoders, "child"):
        _decoders.child = ChildProcess()
    try:
        return _decoders.child.call(
            _decode_listed, item, str(work_dir), str(skip_ids_path), channels, fsspec.config.conf, hang_s=DECODE_HANG_S
        )
    except (ChildCrashed, ChildHung) as error:
        return DecodedAudio(
            item.source, "failed",
            error=f"{item.source}: the decoder {error} on this file; {CONVERT_HINT}, or report it with this message",
        )


def _readable_in_a_child(source: str) -> bool:
    protocol = protocol_of(source)
    return protocol != "memory" and protocol in known_implementations


def _decode_listed(
    item: InputFile, work_dir: str, skip_ids_path: str, channels: Literal["mix", "split"], fsspec_conf: dict | None = None
) -> DecodedAudio:
    """decode_input, in the decoder child, with the skip set read from its file.

    `fsspec_conf`: the run's fsspec configuration. The child reads the environment and config
    files when it starts, but not what the run's process set in code (fsspec.config.conf).
    """
    if fsspec_conf is not None and fsspec_conf != fsspec.config.conf:
        fsspec.config.conf.clear()
        fsspec.config.conf.update(fsspec_conf)
    return decode_input(item, work_dir, _read_file_ids(skip_ids_path), channels)


@functools.lru_cache(maxsize=1)
def _read_file_ids(path: str) -> frozenset[str]:
    return frozenset(Path(path).read_text().split())


# decode_input never raises for a bad or unreachable input (it retries transient storage
# errors itself), so a task-level retry would only repeat a bug. A stalled decode is bounded by
# DECODE_HANG_S (Prefect cannot interrupt a task's thread, only warn).
# One task run per group of files, not per file: with a run of many short clips, a task run per
# file kept the Prefect server busier than the decoding itself.
@task(name="decode")
def decode_task(
    items: list[InputFile], work_dir: str, skip_file_ids: frozenset[str] = frozenset(), channels: Literal["mix", "split"] = "mix"
) -> list[DecodedAudio]:
    skip_ids_path = Path(work_dir) / "skip_file_ids.txt"
    skip_ids_path.write_text("\n".join(sorted(skip_file_ids)))
    return [decode_isolated(item, work_dir, skip_ids_path, channels) for item in items]
