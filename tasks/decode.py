"""Decode stage: any audio (or video) input → 16 kHz mono float32 PCM on local disk.

Decoding streams frame by frame into a raw file, so memory does not grow with
the input's length; later stages memory-map that file.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import av
import fsspec
import numpy as np
from prefect import task

from steadyscribe import SAMPLE_RATE
from steadyscribe.records import DecodedAudio, InputFile
from tasks.discover import content_sha256

MIN_DURATION_S = 0.1


class DecodeError(Exception):
    """The input cannot be turned into audio; the message says what to do about it."""


def load_pcm(pcm_path: str | Path) -> np.ndarray:
    """Memory-map a decoded file's samples (read-only, no copy)."""
    if Path(pcm_path).stat().st_size == 0:
        return np.zeros(0, dtype=np.float32)
    return np.memmap(pcm_path, dtype="<f4", mode="r")


def decode_input(item: InputFile, work_dir: str | Path, skip_file_ids: Collection[str] = ()) -> DecodedAudio:
    """Decode one input; a bad input yields a `failed` record with a helpful error, never an exception.

    Content already transcribed (its hash in `skip_file_ids`) is not decoded: it gets a `skipped` record.
    """
    started = time.perf_counter()
    try:
        file_id = content_sha256(item.source)
        if file_id in skip_file_ids:
            return DecodedAudio(item.source, "skipped", file_id=file_id, decode_s=time.perf_counter() - started)
        pcm_path = Path(work_dir) / f"{file_id}.f32"
        samples_n = _decode_to_raw(item.source, pcm_path)
    except DecodeError as error:
        return DecodedAudio(item.source, "failed", error=str(error), decode_s=time.perf_counter() - started)
    except FileNotFoundError:
        message = f"{item.source}: file not found; check the path or URL"
        return DecodedAudio(item.source, "failed", error=message, decode_s=time.perf_counter() - started)
    except PermissionError as error:
        message = f"{item.source}: permission denied ({error}); grant read access or fix the credentials"
        return DecodedAudio(item.source, "failed", error=message, decode_s=time.perf_counter() - started)
    duration_s = samples_n / SAMPLE_RATE
    decoded = DecodedAudio(
        item.source, "ok", file_id=file_id, pcm_path=str(pcm_path),
        duration_s=duration_s, decode_s=time.perf_counter() - started,
    )
    if duration_s < MIN_DURATION_S:
        decoded.status = "failed"
        decoded.error = (
            f"{item.source}: only {duration_s * 1000:.0f} ms of audio, shorter than the "
            f"{MIN_DURATION_S * 1000:.0f} ms minimum; nothing to transcribe"
        )
    return decoded


def _decode_to_raw(source: str, pcm_path: Path) -> int:
    """Stream-decode `source` into `pcm_path`; return the number of samples written."""
    samples_n = 0
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    with fsspec.open(source, "rb") as raw:
        if raw.read(1) == b"":
            raise DecodeError(f"{source}: the file is empty (0 bytes)")
        raw.seek(0)
        try:
            container = av.open(raw, mode="r")
        except av.FFmpegError as error:
            raise DecodeError(
                f"{source}: not a readable audio or video file ({error}); "
                "check that it is not truncated and that its extension matches its content"
            ) from error
        with container, open(pcm_path, "wb") as out:
            if not container.streams.audio:
                raise DecodeError(f"{source}: the container has no audio stream; nothing to transcribe")
            stream = container.streams.audio[0]
            try:
                for frame in container.decode(stream):
                    for resampled in resampler.resample(frame):
                        samples_n += _write_frame(resampled, out)
                for resampled in resampler.resample(None):
                    samples_n += _write_frame(resampled, out)
            except av.FFmpegError as error:
                codec = stream.codec_context.name if stream.codec_context else "unknown"
                raise DecodeError(
                    f"{source}: decoding the {codec} audio stream failed after "
                    f"{samples_n / SAMPLE_RATE:.1f} s ({error}); the file may be corrupt or truncated"
                ) from error
    return samples_n


def _write_frame(frame: av.AudioFrame, out) -> int:
    samples = frame.to_ndarray().reshape(-1).astype("<f4", copy=False)
    out.write(samples.tobytes())
    return samples.size


# Deterministic decode errors come back as `failed` records; only unexpected
# exceptions (network, remote storage) escape, and those are worth a retry.
@task(name="decode", task_run_name="decode {item.source}", retries=2, retry_delay_seconds=[2, 10])
def decode_task(item: InputFile, work_dir: str, skip_file_ids: frozenset[str] = frozenset()) -> DecodedAudio:
    return decode_input(item, work_dir, skip_file_ids)
