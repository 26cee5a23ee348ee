"""Log-mel features of a waveform, the way Whisper's front end computes them."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

SAMPLE_RATE, N_FFT, HOP = 16000, 400, 160  # Whisper's front end: 25 ms windows, 10 ms hop


def log_mel(wave: torch.Tensor, mels: int) -> torch.Tensor:
    """Log-mel spectrogram (HTK mel scale, 16 kHz, 400-point FFT, hop 160)."""
    if wave.numel() < N_FFT:
        wave = F.pad(wave, (0, N_FFT - wave.numel()))
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT),
                      return_complex=True).abs() ** 2  # (N_FFT//2+1, frames)
    return torch.log(mel_filters(mels) @ spec + 1e-6)


@functools.lru_cache(maxsize=8)
def mel_filters(mels: int) -> torch.Tensor:
    """Triangular filters (mels x N_FFT//2+1) evenly spaced on the HTK mel scale."""
    def to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    hi = to_mel(SAMPLE_RATE / 2)
    points = torch.tensor([700.0 * (10 ** (hi * k / (mels + 1) / 2595.0) - 1)
                           for k in range(mels + 2)])  # back from mel to Hz
    freqs = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lo, mid, top = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (freqs - lo) / (mid - lo).clamp(min=1e-6)
    falling = (top - freqs) / (top - mid).clamp(min=1e-6)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)
