"""The diffusion decoder (alignsts_cli/model/diffusion.py): the official schedule, SSIM with padding."""
from __future__ import annotations

import math

import numpy as np
import torch

from alignsts_cli.model import AlignSTS
from alignsts_cli.model.diffusion import schedule, ssim

from conftest import tiny_config

torch.set_num_threads(2)


def test_schedule_matches_the_official_values():
    s = schedule(4, 0.1, 40.0)
    assert len(s["alphas_cumprod"]) == 5
    np.testing.assert_allclose(s["alphas_cumprod"], [0.44131, 0.039478, 7.1588e-4, 2.6314e-6, 1.9606e-9], rtol=1e-4)
    np.testing.assert_allclose(s["posterior_mean_coef1"], [1, 0.62975, 0.19523, 0.026658, 0.0016210], rtol=1e-4)
    np.testing.assert_allclose(s["posterior_mean_coef2"], [0, 0.17397, 0.12944, 0.060585, 0.027296],
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(s["posterior_log_variance_clipped"],
                               [-46.052, -0.63560, -0.057863, -0.0043960, -7.4800e-4], rtol=1e-4)
    buf = AlignSTS(tiny_config()).diff_decoder.alphas_cumprod
    assert buf.dtype == torch.float32 and torch.allclose(buf.double(), torch.tensor(s["alphas_cumprod"]), rtol=1e-6)


def test_ssim_excludes_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20, 12, generator=g)
    y = x + 0.3 * torch.randn(1, 20, 12, generator=g)
    assert math.isclose(float(ssim(x + 6, x + 6)), 1.0, rel_tol=1e-6)
    s = float(ssim(x + 6, y + 6))
    assert 0 < s < 0.99
    xp = torch.cat([x, torch.randn(1, 7, 12, generator=g)], 1)
    yp = torch.cat([y, torch.randn(1, 7, 12, generator=g)], 1)
    mask = torch.arange(27)[None] < 20
    assert math.isclose(float(ssim(xp + 6, yp + 6, mask)), s, rel_tol=1e-5)
