"""Copy real recordings into tests/fixtures/real/ and mix noisy variants at known SNRs.

The recordings come from the shared real-speech set (../shared/realspeech, README there:
sources and licences); the reference JSON is copied beside each one unchanged. A noisy
variant is `NAME__NOISE_SNRdb.flac` with the same reference: the speech plus generated noise
scaled so that speech power / noise power is SNR dB, both measured over the whole file.

Noises (all seeded, so reruns write identical files):
- pink, brown: Gaussian noise shaped to 1/f and 1/f^2 power;
- babble: four other recordings of the set, looped, offset and summed (overlapping talkers).

    .venv/bin/python scripts/make_real_fixtures.py                     # the committed fixtures
    .venv/bin/python scripts/make_real_fixtures.py --all --out DIR      # every file x noise x SNR (bench)

With --all it also writes generated non-speech (`ns_KIND.flac`, empty reference): white, pink
and brown noise, steady tones, clicks and a synthesized melody, 8 s each.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import zlib
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT.parent / "shared" / "realspeech"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "real"
SAMPLE_RATE = 16_000
NOISES = ("pink", "brown", "babble")
SNRS_DB = (0, 5, 10)
# Word-timed recordings, and two short read ones (a short file must not come out empty).
COPIED = ("r01_jfk", "r04_mfa_acoustic", "r05_mfa_cold", "r09_librivox_austen", "r13_libri_61", "r15_ljspeech", "r26_goforward")
# One noisy variant of each word-timed file in the tests: each noise once, each SNR once.
COMMITTED_MIXES = (("r04_mfa_acoustic", "babble", 10), ("r05_mfa_cold", "pink", 5), ("r09_librivox_austen", "brown", 0))
BABBLE_TALKERS = 4


def read_flac(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    samples = np.concatenate(frames)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32)


def write_flac(path: Path, samples: np.ndarray) -> None:
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    path.write_bytes(buffer.getvalue())


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power falling as 1/f**exponent (1: pink, 2: brown), above 20 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
    return np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)


def babble(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Overlapping talkers: each recording looped from a random offset, at equal power, summed."""
    out = np.zeros(n)
    for voice in talkers:
        voice = voice / (np.sqrt(np.mean(voice**2)) + 1e-12)
        looped = np.tile(voice, -(-n // len(voice)) + 1)
        offset = int(rng.integers(0, len(voice)))
        out += looped[offset : offset + n]
    return out


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Speech plus noise at `snr_db`, scaled down together if the sum would clip."""
    speech_power = np.mean(speech.astype(np.float64) ** 2)
    noise = noise * np.sqrt(speech_power / (np.mean(noise**2) * 10 ** (snr_db / 10.0)))
    mixed = speech + noise
    return (mixed / max(1.0, np.max(np.abs(mixed)) / 0.99)).astype(np.float32)


def make_noise(kind: str, name: str, n: int, recordings: dict[str, np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{name}/{kind}".encode()))
    if kind == "pink":
        return coloured_noise(n, 1.0, rng)
    if kind == "brown":
        return coloured_noise(n, 2.0, rng)
    others = sorted(other for other in recordings if other != name)
    chosen = [recordings[other] for other in rng.permutation(others)[:BABBLE_TALKERS]]
    return babble(n, chosen, rng)


def non_speech(seconds: float = 8.0) -> dict[str, np.ndarray]:
    """Seeded noise colours, steady tones, clicks and a melody of harmonic notes, at 0.3 peak."""
    rng = np.random.default_rng(7)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    clicks = np.zeros(n)
    clicks[rng.integers(0, n, 40)] = 1.0
    note = SAMPLE_RATE // 4
    melody = np.concatenate([
        sum(np.sin(2 * np.pi * 220 * 2 ** (rng.integers(0, 24) / 12) * h * t[:note]) / h for h in range(1, 6))
        * np.exp(-3 * t[:note])
        for _ in range(n // note)
    ])
    sounds = {
        "white": rng.standard_normal(n),
        "pink": coloured_noise(n, 1.0, rng),
        "brown": coloured_noise(n, 2.0, rng),
        "tones": sum(np.sin(2 * np.pi * f * t) for f in (440, 660, 1000)),
        "clicks": clicks,
        "music": melody,
    }
    return {kind: (0.3 * x / np.max(np.abs(x))).astype(np.float32) for kind, x in sounds.items()}


def write_variant(out_dir: Path, source_dir: Path, name: str, kind: str, snr_db: int,
                  recordings: dict[str, np.ndarray]) -> None:
    speech = recordings[name]
    mixed = mix(speech, make_noise(kind, name, len(speech), recordings), snr_db)
    stem = f"{name}__{kind}_{snr_db}db"
    write_flac(out_dir / f"{stem}.flac", mixed)
    truth = json.loads((source_dir / f"{name}.json").read_text())
    truth["notes"] = f"{truth.get('notes', '')} Mixed with {kind} noise at {snr_db} dB SNR by scripts/make_real_fixtures.py.".strip()
    (out_dir / f"{stem}.json").write_text(json.dumps(truth, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE_DIR)
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR)
    parser.add_argument("--all", action="store_true", help="every recording x noise x SNR, not the committed subset")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in args.source.glob("*.flac")) if args.all else list(COPIED)
    for name in names:
        for suffix in (".flac", ".json"):
            shutil.copyfile(args.source / f"{name}{suffix}", args.out / f"{name}{suffix}")
    # Babble talkers: every recording in the source set except the one it is mixed under.
    recordings = {p.stem: read_flac(p) for p in sorted(args.source.glob("*.flac"))}
    if args.all:
        timed = [n for n in names if json.loads((args.source / f"{n}.json").read_text()).get("words")]
        mixes = [(n, kind, snr) for n in timed for kind in NOISES for snr in SNRS_DB]
    else:
        mixes = list(COMMITTED_MIXES)
    for name, kind, snr_db in mixes:
        write_variant(args.out, args.source, name, kind, snr_db, recordings)
    sounds = non_speech() if args.all else {}
    for kind, sound in sounds.items():
        write_flac(args.out / f"ns_{kind}.flac", sound)
        (args.out / f"ns_{kind}.json").write_text(json.dumps({"text": "", "words": [], "kind": f"generated {kind}"}) + "\n")
    print(f"wrote {len(names)} recordings, {len(mixes)} noisy variants and {len(sounds)} non-speech files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
