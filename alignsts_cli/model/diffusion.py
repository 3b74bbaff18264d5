"""The mel decoder: ProDiff's teacher, a 4-step generator-based diffusion model, and its losses.

The denoiser predicts x0 directly (not the noise). Mels are log10 magnitudes and are not normalised
(the checkpoint's ``spec_min``/``spec_max`` buffers are kept but unused, as in the official code).

Shapes: B batch, M mel bins, T frames, H condition channels. The decoder works on [B, 1, M, T].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def vpsde_betas(n: int, beta_min: float = 0.1, beta_max: float = 40.0) -> np.ndarray:
    """VP-SDE discretised into n steps: β_t = 1 - exp(-β_min/n - (β_max-β_min)(2t-1)/(2n²)), t = 1..n."""
    t = np.arange(1, n + 1, dtype=np.float64)
    return 1.0 - np.exp(-beta_min / n - 0.5 * (beta_max - beta_min) * (2 * t - 1) / n**2)


def schedule(steps: int, beta_min: float = 0.1, beta_max: float = 40.0) -> dict[str, np.ndarray]:
    """Every schedule vector of the official checkpoint (float64; ``steps + 1`` entries each).

    The official model builds the schedule with steps + 1 = 5 entries, trains on all five and samples
    with the first four. Posterior q(x_{t-1} | x_t, x0) has mean coef1·x0 + coef2·x_t.
    """
    betas = vpsde_betas(steps + 1, beta_min, beta_max)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps [B] -> [B, dim]: [sin(t·f_k), cos(t·f_k)]."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freq = torch.exp(torch.arange(half, device=t.device) * -step)
    angle = t.float()[:, None] * freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """Dilated conv (k3) on x + step, plus the projected condition; gated tanh·sigmoid; split residual/skip."""

    def __init__(self, cond_dim: int, channels: int, dilation: int):
        super().__init__()
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.diffusion_projection = nn.Linear(channels, channels)
        self.conditioner_projection = nn.Conv1d(cond_dim, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)
        for conv in (self.dilated_conv, self.conditioner_projection, self.output_projection):
            nn.init.kaiming_normal_(conv.weight)

    def forward(self, x, cond, step, mask=None):
        """x [B, C, T], cond [B, H, T], step [B, C], mask [B, 1, T] or None -> (x', skip) [B, C, T] each."""
        y = x + self.diffusion_projection(step)[..., None]
        if mask is not None:  # padded frames must look like the conv's zero padding
            y = y * mask
        y = self.dilated_conv(y) + self.conditioner_projection(cond)
        gate, filt = torch.chunk(y, 2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filt)
        y = self.output_projection(y)
        residual, skip = torch.chunk(y, 2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffNet(nn.Module):
    """WaveNet-like denoiser: (x_t [B, 1, M, T], t [B], cond [B, H, T]) -> x̂0 [B, 1, M, T]."""

    def __init__(self, n_mels: int, cond_dim: int, channels: int, layers: int, dilation_cycle: int):
        super().__init__()
        self.channels = channels
        self.input_projection = nn.Conv1d(n_mels, channels, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, channels * 4), nn.Mish(), nn.Linear(channels * 4, channels))
        self.residual_layers = nn.ModuleList(
            ResidualBlock(cond_dim, channels, 2 ** (i % dilation_cycle)) for i in range(layers)
        )
        self.skip_projection = nn.Conv1d(channels, channels, 1)
        self.output_projection = nn.Conv1d(channels, n_mels, 1)
        nn.init.kaiming_normal_(self.input_projection.weight)
        nn.init.kaiming_normal_(self.skip_projection.weight)
        nn.init.zeros_(self.output_projection.weight)

    def forward(self, x, t, cond, mask=None):
        x = F.relu(self.input_projection(x[:, 0]))  # [B, C, T]
        step = self.mlp(step_embedding(t, self.channels))  # [B, C]
        skips = []
        for layer in self.residual_layers:
            x, skip = layer(x, cond, step, mask)
            skips.append(skip)
        x = torch.sum(torch.stack(skips), dim=0) / math.sqrt(len(self.residual_layers))
        x = F.relu(self.skip_projection(x))
        return self.output_projection(x)[:, None]  # [B, 1, M, T]


class GaussianDiffusion(nn.Module):
    """Schedule buffers (official names) + the denoiser (``denoise_fn``)."""

    def __init__(self, n_mels: int, cond_dim: int, steps: int = 4, beta_min: float = 0.1, beta_max: float = 40.0,
                 channels: int = 256, layers: int = 20, dilation_cycle: int = 4):
        super().__init__()
        self.n_mels, self.steps = n_mels, steps
        f32 = dict(dtype=torch.float32)
        self.register_buffer("timesteps", torch.tensor(float(steps), **f32))
        self.register_buffer("timescale", torch.tensor(1.0, **f32))  # unused (ProDiff student setting)
        for name, values in schedule(steps, beta_min, beta_max).items():
            self.register_buffer(name, torch.tensor(values, **f32))
        self.register_buffer("spec_min", torch.zeros(1, 1, n_mels))  # unused: mels are not normalised
        self.register_buffer("spec_max", torch.zeros(1, 1, n_mels))
        self.denoise_fn = DiffNet(n_mels, cond_dim, channels, layers, dilation_cycle)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε. x0, noise [B, 1, M, T]; t [B] long in 0..steps."""
        a = self.sqrt_alphas_cumprod[t][:, None, None, None]
        s = self.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        return a * x0 + s * noise

    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Reverse process from pure noise: cond [B, H, T] -> mel [B, 1, M, T].

        noise: [steps+1, B, 1, M, T] in the official order (x_T first, then one draw per step
        t = steps-1 .. 0; the last one is multiplied by 0 but still drawn), or None to draw them
        (from ``generator``, else torch's global generator, in the same order).
        mask: [B, 1, T] float, 1 on real frames (padded batches), or None.
        """
        b, _, t_len = cond.shape
        shape = (b, 1, self.n_mels, t_len)

        def draw(i):
            if noise is not None:
                return noise[i]
            return torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)

        x = draw(0)
        for i, t in enumerate(reversed(range(self.steps))):
            t_vec = torch.full((b,), t, device=cond.device, dtype=torch.long)
            x0 = self.denoise_fn(x, t_vec, cond, mask)
            mean = self.posterior_mean_coef1[t_vec][:, None, None, None] * x0 \
                + self.posterior_mean_coef2[t_vec][:, None, None, None] * x
            log_var = self.posterior_log_variance_clipped[t_vec][:, None, None, None]
            nonzero = (1 - (t_vec == 0).float())[:, None, None, None]
            x = mean + nonzero * (0.5 * log_var).exp() * draw(i + 1)
        return x


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[size, size] normalised 2-D Gaussian."""
    x = torch.arange(size, dtype=torch.float) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, size: int = 11,
         sigma: float = 1.5, c1: float = 1e-4, c2: float = 9e-4) -> torch.Tensor:
    """Mean SSIM of two mels seen as images, over the real frames only.

    x, y: [B, T, M]; mask: [B, T] bool or None. Padded frames are set to 0 on both sides (as the zero
    padding of an unpadded one) and left out of the mean. Returns a scalar.
    """
    w = gaussian_window(size, sigma).to(x)[None, None]  # [1, 1, k, k]
    if mask is not None:
        m = mask[..., None].to(x.dtype)
        x, y = x * m, y * m
    x, y = x[:, None], y[:, None]  # [B, 1, T, M]
    pad = size // 2
    mu_x, mu_y = F.conv2d(x, w, padding=pad), F.conv2d(y, w, padding=pad)
    sxx = F.conv2d(x * x, w, padding=pad) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    smap = smap[:, 0]  # [B, T, M]
    if mask is None:
        return smap.mean()
    m = mask[..., None].to(smap.dtype).expand_as(smap)
    return (smap * m).sum() / m.sum()
