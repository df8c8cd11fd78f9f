"""decode_input on hostile bytes: it never raises and always says how the input ended."""

from __future__ import annotations

import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steadyscribe import SAMPLE_RATE
from steadyscribe.records import InputFile
from steadyscribe.pcm import load_pcm
from steadyscribe.tasks.decode import MIN_DURATION_S, decode_input

# (file name, container format, codec, sample rate): what PyAV can write here.
FORMATS = [
    ("sine.flac", "flac", "flac", 16000),
    ("sine.wav", "wav", "pcm_s16le", 16000),
    ("sine.mp3", "mp3", "libmp3lame", 16000),
    ("sine.ogg", "ogg", "libopus", 48000),
]


def write_sine(path: Path, container_format: str, codec: str, rate: int, seconds: float = 0.5) -> None:
    """A 440 Hz mono sine encoded with PyAV."""
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(
            format=stream.format.name, layout="mono", rate=rate, frame_size=stream.codec_context.frame_size or None
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("formats")
    for name, container_format, codec, rate in FORMATS:
        write_sine(directory / name, container_format, codec, rate)
    return {name: (directory / name).read_bytes() for name, *_ in FORMATS}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode")


@st.composite
def mangled(draw, real: dict[str, bytes]) -> tuple[str, bytes]:
    """(file name, content): random bytes, or a real file with its header overwritten, cut or spliced."""
    name = draw(st.sampled_from(sorted(real)))
    original = real[name]
    how = draw(st.sampled_from(["random", "header", "truncate", "splice"]))
    if how == "random":
        return name, draw(st.binary(max_size=4096))
    if how == "header":
        at = draw(st.integers(0, 63))
        patch = draw(st.binary(min_size=1, max_size=64))
        return name, original[:at] + patch + original[at + len(patch) :]
    if how == "truncate":
        return name, original[: draw(st.integers(0, len(original)))]
    at = draw(st.integers(0, len(original)))
    return name, original[:at] + draw(st.binary(min_size=1, max_size=512)) + original[at:]


def test_real_files_decode(real_files, scratch):
    for name, content in real_files.items():
        path = scratch / name
        path.write_bytes(content)
        decoded = decode_input(InputFile(str(path)), scratch)
        assert decoded.status == "ok", decoded.error
        assert decoded.duration_s == pytest.approx(0.5, abs=0.05)
        assert decoded.warnings == []


# (format, fraction of the bytes kept, what the warning must say): a cut at a frame boundary (WAV,
# MP3) ends cleanly short of the declared length; FLAC cut mid-frame also stops the decoder.
TRUNCATIONS = [
    ("sine.flac", 0.5, "of a declared 6.0 s decoded (the decoder stopped"),
    ("sine.wav", 0.5, "truncated: 3.0 s of a declared 6.0 s decoded;"),
    ("sine.mp3", 0.5, "truncated: 3.0 s of a declared 6.0 s decoded;"),
]


@pytest.fixture(scope="module")
def six_second_files(tmp_path_factory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("six-seconds")
    for name, container_format, codec, rate in FORMATS:
        write_sine(directory / name, container_format, codec, rate, seconds=6.0)
    return {name: (directory / name).read_bytes() for name, *_ in FORMATS}


@pytest.mark.parametrize(("name", "kept", "warning"), TRUNCATIONS)
def test_truncated_files_decode_as_far_as_they_go_with_a_warning(six_second_files, scratch, name, kept, warning):
    content = six_second_files[name]
    path = scratch / f"cut-{name}"
    path.write_bytes(content[: int(len(content) * kept)])
    decoded = decode_input(InputFile(str(path)), scratch)
    assert decoded.status == "ok", decoded.error
    assert 1.0 < decoded.duration_s < 4.5
    [message] = decoded.warnings
    assert message.startswith("truncated: ") and warning in message and "re-upload" in message


def test_whole_long_files_and_a_cut_ogg_have_no_warning(six_second_files, scratch):
    """Ogg declares the length of its last page, so a cut Ogg is indistinguishable from a short one."""
    for name, content in six_second_files.items():
        whole = scratch / f"whole-{name}"
        whole.write_bytes(content)
        assert decode_input(InputFile(str(whole)), scratch).warnings == []
    cut = scratch / "cut-sine.ogg"
    cut.write_bytes(six_second_files["sine.ogg"][: len(six_second_files["sine.ogg"]) // 2])
    decoded = decode_input(InputFile(str(cut)), scratch)
    assert decoded.status == "ok" and decoded.duration_s == pytest.approx(3.0, abs=0.1) and decoded.warnings == []


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_bytes_give_a_record_never_an_exception(real_files, scratch, data):
    name, content = data.draw(mangled(real_files))
    path = scratch / f"{uuid.uuid4().hex}-{name}"
    path.write_bytes(content)
    decoded = decode_input(InputFile(str(path)), scratch)
    assert decoded.source == str(path)
    if decoded.status == "failed":
        assert decoded.error and str(path) in decoded.error
        assert decoded.pcm_path is None
    else:
        assert decoded.status == "ok" and decoded.error is None
        assert decoded.duration_s >= MIN_DURATION_S
        assert len(load_pcm(decoded.pcm_path)) == round(decoded.duration_s * SAMPLE_RATE)


def test_pcm_slices_read_the_same_samples_as_the_whole_file(tmp_path):
    samples = np.random.default_rng(0).standard_normal(10_000).astype("<f4")
    path = tmp_path / "x.f32"
    samples.tofile(path)
    pcm = load_pcm(path)
    assert len(pcm) == pcm.size == 10_000
    np.testing.assert_array_equal(np.asarray(pcm), samples)
    for key in (slice(0, 5), slice(9_990, 20_000), slice(-7, None), slice(50, 40), slice(3, 3_000, 7)):
        np.testing.assert_array_equal(pcm[key], samples[key])
