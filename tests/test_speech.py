"""Non-speech detection on synthetic audio with known speech positions."""

from __future__ import annotations

import numpy as np
import pytest

from steadyscribe.speech import frame_loudness_db, speech_mask, speech_regions

SR = 16000
HOP = 0.02


def _syllables(spans: list[tuple[float, float]], duration: float, amplitude: float = 0.3) -> np.ndarray:
    """Speech-like bursts: a 150 Hz buzz with harmonics, amplitude-modulated at a syllable rate."""
    t = np.arange(round(duration * SR)) / SR
    x = np.zeros_like(t)
    for start, end in spans:
        inside = (t >= start) & (t < end)
        tt = t[inside] - start
        buzz = sum(np.sin(2 * np.pi * 150 * k * tt) / k for k in range(1, 6))
        syllable_rate = 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 2.5 * tt))
        x[inside] = amplitude * buzz * syllable_rate / 2.3
    return x.astype(np.float32)


def _noise(duration: float, level: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, round(duration * SR)).astype(np.float32)


def _frames_of(spans: list[tuple[float, float]], n_frames: int) -> np.ndarray:
    truth = np.zeros(n_frames, dtype=bool)
    for start, end in spans:
        truth[round(start / HOP) : round(end / HOP)] = True
    return truth


SPANS = [(1.0, 2.2), (2.5, 3.1), (4.6, 6.0)]


def test_clean_speech_between_digital_silence():
    audio = _syllables(SPANS, 7.0)
    mask = speech_mask(audio, SR, HOP)
    truth = _frames_of(SPANS, len(mask))
    assert (mask == truth).mean() > 0.97
    regions = speech_regions(mask, HOP, min_gap_s=0.1)
    assert len(regions) == 3
    for (start, end), (true_start, true_end) in zip(regions, SPANS):
        assert abs(start - true_start) <= 0.04 and abs(end - true_end) <= 0.06


@pytest.mark.parametrize("snr_db", [15.0, 10.0])
def test_speech_in_noise(snr_db: float):
    speech = _syllables(SPANS, 7.0)
    speech_power = np.mean(speech[speech != 0] ** 2)
    audio = speech + _noise(7.0, np.sqrt(speech_power / 10 ** (snr_db / 10)))
    mask = speech_mask(audio, SR, HOP)
    truth = _frames_of(SPANS, len(mask))
    assert (mask == truth).mean() > 0.9
    assert not mask[~_frames_of([(s - 0.1, e + 0.1) for s, e in SPANS], len(mask))].any()


def test_noise_only_is_mostly_not_speech():
    assert speech_mask(_noise(20.0, 0.05), SR, HOP).mean() < 0.02
    assert speech_mask(_noise(20.0, 0.3, seed=1), SR, HOP).mean() < 0.02


def test_slowly_rising_noise_floor_is_followed():
    duration = 60.0
    ramp = np.linspace(0.005, 0.05, round(duration * SR)).astype(np.float32)
    audio = _noise(duration, 1.0) * ramp
    assert speech_mask(audio, SR, HOP).mean() < 0.05


def test_short_dip_inside_a_word_is_kept_and_click_is_dropped():
    audio = _syllables([(1.0, 2.0)], 4.0)
    audio[round(1.5 * SR) : round(1.56 * SR)] = 0.0  # a stop-consonant closure
    audio[round(3.0 * SR) : round(3.01 * SR)] = 0.5  # a 10 ms click
    regions = speech_regions(speech_mask(audio, SR, HOP), HOP, min_gap_s=0.0)
    assert len(regions) == 1
    assert regions[0][0] == pytest.approx(1.0, abs=0.04)


def test_speech_regions_merge_short_gaps():
    mask = np.zeros(100, dtype=bool)
    mask[10:20] = mask[25:40] = mask[70:80] = True
    assert speech_regions(mask, HOP, min_gap_s=0.2) == [
        pytest.approx((0.2, 0.8)),
        pytest.approx((1.4, 1.6)),
    ]
    assert len(speech_regions(mask, HOP, min_gap_s=0.05)) == 3
    assert speech_regions(np.zeros(5, dtype=bool), HOP) == []


def test_memory_mapped_input_matches_in_memory(tmp_path):
    audio = _syllables(SPANS, 7.0) + _noise(7.0, 0.01)
    path = tmp_path / "pcm.f32"
    audio.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    np.testing.assert_array_equal(speech_mask(mapped, SR, HOP), speech_mask(audio, SR, HOP))


def test_partial_last_frame_and_empty_input():
    audio = _syllables([(0.0, 0.5)], 0.51)
    assert len(frame_loudness_db(audio, SR, HOP)) == 26
    assert len(speech_mask(np.zeros(0, dtype=np.float32), SR, HOP)) == 0


def _coloured_noise(duration: float, exponent: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Noise with power falling as 1/f**exponent (1: pink, 2: brown), at `dbfs` RMS."""
    n = round(duration * SR)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=n)
    return (noise / np.sqrt(np.mean(noise**2)) * 10 ** (dbfs / 20)).astype(np.float32)


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_pink_and_brown_noise_alone_are_not_speech(exponent: float):
    # Their slow swings in level would look like syllables without the low band left out.
    assert speech_mask(_coloured_noise(20.0, exponent, -35.0), SR, HOP).mean() < 0.02


def test_speech_over_a_brown_noise_floor():
    audio = _syllables(SPANS, 7.0) + _coloured_noise(7.0, 2.0, -50.0)
    mask = speech_mask(audio, SR, HOP)
    assert (mask == _frames_of(SPANS, len(mask))).mean() > 0.95


def test_digital_silence_before_noisy_speech_does_not_hide_the_speech():
    """Padding with exact zeros must not widen the noise margins until nothing counts as speech."""
    noise = _noise(6.0, 0.02, seed=4)
    t = np.arange(int(2.0 * SR)) / SR
    word = 0.3 * np.sin(2 * np.pi * 300 * t) * (np.sin(np.pi * t / 2.0) ** 2)
    noise[int(2.0 * SR) : int(4.0 * SR)] += word.astype(np.float32)
    padded = np.concatenate([np.zeros(int(0.25 * SR), dtype=np.float32), noise])
    mask = speech_mask(padded, SR, HOP)
    times = np.arange(len(mask)) * HOP
    assert mask[(times > 2.8) & (times < 3.7)].mean() > 0.9
    assert mask[(times > 0.5) & (times < 1.8)].mean() < 0.1
