"""Make the stereo call fixture: two different real recordings, one per channel, overlapping in time.

Channel 0 ("agent") is tests/fixtures/real/r04_mfa_acoustic from the start; channel 1
("customer") is r05_mfa_cold from OFFSET_S on, so both talk at once from OFFSET_S to the end of
the first. The JSON beside it holds each channel's reference text and word times, shifted by the
channel's offset (the references of tests/fixtures/real, copied unchanged otherwise).

    .venv/bin/python scripts/make_stereo_fixture.py        # writes tests/fixtures/stereo/call_r04_r05.{flac,json}

`stereo(left, right)` and `write_stereo_flac` are also used by the tests to build stereo files on
the fly (a mono recording stored as stereo, a recording beside a silent channel).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REAL_DIR = ROOT / "tests" / "fixtures" / "real"
OUT_DIR = ROOT / "tests" / "fixtures" / "stereo"
SAMPLE_RATE = 16_000
NAME = "call_r04_r05"
# (speaker, recording, seconds from the file's start)
CHANNELS = (("agent", "r04_mfa_acoustic", 0.0), ("customer", "r05_mfa_cold", 14.0))


def read_mono(path: Path) -> np.ndarray:
    """A mono 16 kHz FLAC as float32 samples in [-1, 1]."""
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)


def stereo(left: np.ndarray, right: np.ndarray, right_offset_s: float = 0.0) -> np.ndarray:
    """Two channels as one (2, n) array: `right` starts `right_offset_s` later; the shorter is padded with zeros."""
    offset = round(right_offset_s * SAMPLE_RATE)
    n = max(len(left), offset + len(right))
    out = np.zeros((2, n), dtype=np.float32)
    out[0, : len(left)] = left
    out[1, offset : offset + len(right)] = right
    return out


def write_stereo_flac(path: Path, channels: np.ndarray) -> None:
    """A (2, n) float array as a 16-bit stereo FLAC at 16 kHz."""
    pcm = np.clip(np.round(channels * 32767.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="stereo")
        # Packed s16: samples interleaved left, right.
        frame = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1), format="s16", layout="stereo")
        frame.rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    path.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (_, left_name, left_offset), (_, right_name, right_offset) = CHANNELS
    assert left_offset == 0.0
    audio = stereo(read_mono(REAL_DIR / f"{left_name}.flac"), read_mono(REAL_DIR / f"{right_name}.flac"), right_offset)
    write_stereo_flac(args.out / f"{NAME}.flac", audio)
    truth = {
        "duration": audio.shape[1] / SAMPLE_RATE,
        "sample_rate": SAMPLE_RATE,
        "notes": "Two real recordings, one per channel, made by scripts/make_stereo_fixture.py; "
        "word times are the recordings' references shifted by each channel's offset.",
        "channels": [],
    }
    for channel, (speaker, name, offset_s) in enumerate(CHANNELS):
        reference = json.loads((REAL_DIR / f"{name}.json").read_text())
        truth["channels"].append({
            "channel": channel,
            "speaker": speaker,
            "recording": name,
            "offset_s": offset_s,
            "source": reference["source"],
            "license_note": reference.get("license_note"),
            "text": reference["text"],
            "words": [
                {**w, "start": round(w["start"] + offset_s, 3), "end": round(w["end"] + offset_s, 3)}
                for w in reference["words"]
            ],
        })
    (args.out / f"{NAME}.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.out / NAME}.flac ({truth['duration']:.1f} s, 2 channels) and its JSON truth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
