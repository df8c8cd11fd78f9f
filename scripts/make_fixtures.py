"""Generate the test fixtures (and the demo samples) whose word times are known to the sample.

Each word is synthesized on its own with espeak-ng, resampled to 16 kHz, trimmed of
silence with a fixed amplitude threshold and placed at a known offset, so the JSON
truth is exact for the audio in the file. Everything is seeded: running this twice
writes byte-identical files.

    .venv/bin/python scripts/make_fixtures.py

Needs `espeak-ng` on PATH (generation only; tests read the committed files).
"""

from __future__ import annotations

import io
import json
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = ROOT / "tests" / "fixtures"
SAMPLES_DIR = ROOT / "samples"

SAMPLE_RATE = 16_000
# espeak-ng pads words with exact digital silence, so any small threshold finds the same edges;
# this one also drops the few near-zero samples the resampler's filter smears outside them.
TRIM_THRESHOLD = 0.005
# Speech is scaled so its loudest sample sits here, leaving headroom for added noise.
SPEECH_PEAK = 0.5
# Silence before the first word and after the last, so no word touches the file's edges.
LEAD_IN_S = 0.5
TAIL_S = 0.5
# Said alone, espeak's weak "the" is heard as "a" by Whisper; its strong form ("thee") is not.
PRONUNCIATIONS = {"the": "[[D'i:]]"}


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    sentences: list[str]
    voice: str
    speed: int  # espeak-ng words per minute
    word_gap_s: tuple[float, float]  # silence between words of one sentence (uniform range)
    sentence_gap_s: tuple[float, float]  # silence between sentences (uniform range)
    noise: str  # "none", "pink", "brown"
    noise_snr_db: float | None = None  # speech-to-noise ratio, for noise mixed into speech
    noise_floor_dbfs: float | None = None  # absolute noise level, for a floor or noise-only audio
    duration_s: float | None = None  # only for noise-only fixtures
    straddle_s: float | None = None  # place the middle word of `straddle_sentence` across this time
    straddle_sentence: int | None = None
    notes: str = ""


FIXTURE_SPECS = [
    FixtureSpec(
        name="clean_us_slow",
        sentences=[
            "The morning train was late again, so we walked to the office together.",
            "Please bring three chairs from the kitchen before our guests arrive.",
            "My sister planted tomatoes and beans in the small garden behind her house.",
        ],
        voice="en-us+m3",
        speed=150,
        word_gap_s=(0.06, 0.12),
        sentence_gap_s=(0.7, 0.9),
        noise="none",
        notes="American English male variant at a slow rate, digital silence between words.",
    ),
    FixtureSpec(
        name="clean_gb",
        sentences=[
            "We should buy fresh bread and milk on the way home tonight.",
            "The library closes early on Sunday afternoons during the summer.",
            "He forgot his umbrella and got completely wet in the rain.",
        ],
        voice="en-gb-x-rp",
        speed=170,
        word_gap_s=(0.04, 0.10),
        sentence_gap_s=(0.6, 0.8),
        noise="none",
        notes="British English (received pronunciation) voice at a normal rate.",
    ),
    FixtureSpec(
        name="fast_speaker",
        sentences=[
            "Could you send me the report before the meeting starts tomorrow morning?",
            "The children played football in the park until it got dark.",
        ],
        voice="en-us+m3",
        speed=230,
        word_gap_s=(0.02, 0.05),
        sentence_gap_s=(0.35, 0.5),
        noise="none",
        notes="Fast rate with short gaps between words.",
    ),
    FixtureSpec(
        name="noisy",
        sentences=[
            "The coffee machine on the second floor has been broken all week.",
            "She answered every question clearly and then thanked the whole team.",
        ],
        voice="en-us+m3",
        speed=160,
        word_gap_s=(0.05, 0.10),
        sentence_gap_s=(0.6, 0.8),
        noise="pink",
        noise_snr_db=12.0,
        notes="Pink noise over the whole file at 12 dB SNR (speech power measured inside words).",
    ),
    FixtureSpec(
        name="long_pauses",
        sentences=[
            "I think we need to call the plumber about the leaking pipe.",
            "The dog waited patiently by the door for his dinner.",
            "Let us meet again next Tuesday to finish the plan.",
        ],
        voice="en-us+m3",
        speed=160,
        word_gap_s=(0.05, 0.10),
        sentence_gap_s=(3.0, 6.0),
        noise="brown",
        noise_floor_dbfs=-60.0,
        notes="Pauses of 3 to 6 s between sentences; a brown noise floor at -60 dBFS throughout.",
    ),
    FixtureSpec(
        name="no_speech",
        sentences=[],
        voice="",
        speed=0,
        word_gap_s=(0.0, 0.0),
        sentence_gap_s=(0.0, 0.0),
        noise="pink",
        noise_floor_dbfs=-35.0,
        duration_s=10.0,
        notes="Ten seconds of pink noise at -35 dBFS and nothing else.",
    ),
    FixtureSpec(
        name="straddle_40s",
        sentences=[
            "Our neighbours painted their garden fence green last weekend.",
            "The bus driver smiled and waved at every child on the street.",
            "We cooked a large pot of pasta for the family dinner on Friday.",
            "After lunch the team reviewed the budget and agreed on four changes.",
            "The old bridge near the river will be closed for repairs next month.",
            "Remember to feed the cat and close the windows while I am away.",
        ],
        voice="en-us+m3",
        speed=160,
        word_gap_s=(0.05, 0.10),
        sentence_gap_s=(0.6, 0.9),
        noise="none",
        straddle_s=30.0,
        straddle_sentence=4,
    ),
]

# Demo files for the README: (fixture, file name, container format, codec, sample rate).
SAMPLE_SPECS = [
    ("fast_speaker", "report_request.wav", "wav", "pcm_s16le", 16_000),
    ("clean_gb", "library_hours.mp3", "mp3", "libmp3lame", 16_000),
    ("noisy", "coffee_machine.ogg", "ogg", "libopus", 16_000),
]


def synthesize_word(word: str, voice: str, speed: int) -> np.ndarray:
    """One word from espeak-ng as float32 samples at 16 kHz, leading/trailing silence trimmed."""
    wav_bytes = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", PRONUNCIATIONS.get(word.lower(), word)],
        check=True,
        capture_output=True,
    ).stdout
    # espeak-ng's streamed header leaves the data length open; read what is actually there.
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    samples = resample(pcm, rate)
    voiced = np.flatnonzero(np.abs(samples) >= TRIM_THRESHOLD)
    if voiced.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {word!r}")
    return samples[voiced[0] : voiced[-1] + 1]


def resample(pcm: np.ndarray, rate: int) -> np.ndarray:
    """int16 mono at `rate` to float32 at 16 kHz with libswresample's filter."""
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]  # flush the filter's tail
    return np.concatenate(out).astype(np.float32)


def sentence_words(sentence: str) -> list[str]:
    """Words as spoken: punctuation at the edges removed, apostrophes inside kept."""
    return [w.strip(".,!?;:\"") for w in sentence.split() if w.strip(".,!?;:\"")]


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS pink (1/f power) or brown (1/f^2 power) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, d=1 / SAMPLE_RATE)
    freqs[0] = freqs[1]  # avoid dividing by zero at DC
    exponent = {"pink": 0.5, "brown": 1.0}[kind]
    noise = np.fft.irfft(spectrum / freqs**exponent, n=length)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def build_fixture(spec: FixtureSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict], str]:
    """The fixture's samples, its word truth and its notes."""
    if not spec.sentences:
        length = round(spec.duration_s * SAMPLE_RATE)
        audio = colored_noise(spec.noise, length, rng) * 10 ** (spec.noise_floor_dbfs / 20)
        return audio, [], spec.notes

    # Each clip carries the silence before it, so the whole layout is known before any sample is placed.
    clips: list[tuple[str, np.ndarray, float]] = []
    for index, sentence in enumerate(spec.sentences):
        for position, word in enumerate(sentence_words(sentence)):
            if position > 0:
                gap = rng.uniform(*spec.word_gap_s)
            elif index > 0:
                gap = rng.uniform(*spec.sentence_gap_s)
            else:
                gap = LEAD_IN_S
            clips.append((word, synthesize_word(word, spec.voice, spec.speed), gap))

    notes = spec.notes
    if spec.straddle_s is not None:
        notes, clips = place_straddle(spec, clips)

    starts, cursor = [], 0
    for _, samples, gap in clips:
        cursor += round(gap * SAMPLE_RATE)
        starts.append(cursor)
        cursor += len(samples)
    audio = np.zeros(cursor + round(TAIL_S * SAMPLE_RATE), dtype=np.float32)
    words = []
    for (word, samples, _), start in zip(clips, starts):
        audio[start : start + len(samples)] = samples
        words.append({"word": word, "start": start / SAMPLE_RATE, "end": (start + len(samples)) / SAMPLE_RATE})

    audio *= SPEECH_PEAK / np.max(np.abs(audio))
    if spec.noise != "none":
        noise = colored_noise(spec.noise, len(audio), rng)
        if spec.noise_snr_db is not None:
            inside = np.concatenate([audio[s : s + len(c)] for (_, c, _), s in zip(clips, starts)])
            speech_rms = np.sqrt(np.mean(inside**2))
            audio += noise * speech_rms * 10 ** (-spec.noise_snr_db / 20)
        else:
            audio += noise * 10 ** (spec.noise_floor_dbfs / 20)
    return audio, words, notes


def place_straddle(spec: FixtureSpec, clips: list[tuple[str, np.ndarray, float]]) -> tuple[str, list]:
    """Stretch the pause before the chosen sentence so its middle word is centred on `straddle_s`."""
    sentence = spec.sentences[spec.straddle_sentence]
    first = sum(len(sentence_words(s)) for s in spec.sentences[: spec.straddle_sentence])
    target = first + len(sentence_words(sentence)) // 2
    elapsed = sum(round(gap * SAMPLE_RATE) + len(samples) for _, samples, gap in clips[:target])
    centre = elapsed + round(clips[target][2] * SAMPLE_RATE) + len(clips[target][1]) / 2
    shift = spec.straddle_s - centre / SAMPLE_RATE
    word, samples, gap = clips[first]
    if not 0.3 <= gap + shift <= 3.0:
        raise RuntimeError(f"pause before the straddling sentence would be {gap + shift:.2f} s")
    clips[first] = (word, samples, gap + shift)
    straddler = clips[target][0]
    notes = (
        f"Sentence {spec.straddle_sentence + 1} ({sentence!r}) spans the {spec.straddle_s:.0f} s mark; "
        f"its word {straddler!r} (index {target} in words) starts before and ends after {spec.straddle_s} s."
    )
    return notes, clips


def to_int16(audio: np.ndarray) -> np.ndarray:
    if np.max(np.abs(audio)) >= 1.0:
        raise RuntimeError("fixture would clip")
    return np.round(audio * 32767).astype(np.int16)


def encode(pcm: np.ndarray, path: Path, container_format: str, codec: str, rate: int) -> None:
    """Write 16 kHz mono int16 samples with PyAV; bitexact flags keep version strings out of the file."""
    with av.open(str(path), "w", format=container_format, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        frame_size = stream.codec_context.frame_size or 4096
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for offset in range(0, len(pcm), frame_size):
            chunk = pcm[offset : offset + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = offset
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        container.mux(stream.encode(None))


def main() -> None:
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    pcm_by_name = {}
    for seed, spec in enumerate(FIXTURE_SPECS):
        audio, words, notes = build_fixture(spec, np.random.default_rng(seed))
        pcm = to_int16(audio)
        pcm_by_name[spec.name] = pcm
        encode(pcm, FIXTURES_DIR / f"{spec.name}.flac", "flac", "flac", SAMPLE_RATE)
        truth = {
            "text": " ".join(spec.sentences),
            "sample_rate": SAMPLE_RATE,
            "duration": len(pcm) / SAMPLE_RATE,
            "words": words,
            "voice": spec.voice or None,
            "speed": spec.speed or None,
            "noise": describe_noise(spec),
            "notes": notes,
        }
        (FIXTURES_DIR / f"{spec.name}.json").write_text(json.dumps(truth, indent=1) + "\n")
        print(f"{spec.name}: {len(pcm) / SAMPLE_RATE:.2f} s, {len(words)} words")
    for fixture, file_name, container_format, codec, rate in SAMPLE_SPECS:
        encode(pcm_by_name[fixture], SAMPLES_DIR / file_name, container_format, codec, rate)
        print(f"samples/{file_name} from {fixture}")


def describe_noise(spec: FixtureSpec) -> str:
    if spec.noise == "none":
        return "none"
    if spec.noise_snr_db is not None:
        return f"{spec.noise} {spec.noise_snr_db:g} dB SNR"
    return f"{spec.noise} {spec.noise_floor_dbfs:g} dBFS"


if __name__ == "__main__":
    main()
