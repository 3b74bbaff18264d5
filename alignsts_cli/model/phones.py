"""The phone recogniser: speech in, a phone posteriorgram out (the ``phones`` content kind).

A small convolutional network over per-utterance normalised log-mel frames at 50 frames/s (the
content rate) giving, for each frame, the probability of each of the 41 classes of ``PHONES``
(the ARPAbet set that Festival's and Flite's US English voices speak, with ``pau`` for silence).
It is trained on synthetic speech with exact phone timings and strong voice and channel
perturbation (``alignsts_cli.training.phones``), so that what it gives depends on what is said and
as little as possible on who says it or through what.

    from alignsts_cli.model.phones import load_phone_recogniser
    rec = load_phone_recogniser("alignsts_cli/bundled/phones.safetensors")
    post = rec.posteriorgram(audio16)                  # [T_c, 41], rows sum to 1
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from alignsts_cli.errors import AlignSTSError

#: The phone set: silence, then 40 ARPAbet phones without stress (the CMU 39 and schwa, ``ax``), as
#: Festival's ``radio`` phone set and Flite's cmulex name them.
PHONES: tuple[str, ...] = (
    "pau", "aa", "ae", "ah", "ao", "aw", "ax", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh",
    "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw", "v",
    "w", "y", "z", "zh",
)
#: Other names the synthesisers use for the same sounds.
PHONE_ALIASES = {"h#": "pau", "sil": "pau", "brth": "pau", "axr": "er", "ix": "ih", "ux": "uw", "el": "l",
                 "em": "m", "en": "n", "dx": "t", "hv": "hh"}

SAMPLE_RATE = 16000
HOP = 320  # 50 frames/s: the content rate (features.CONTENT_HOP)
N_MELS = 80


def phone_index(name: str) -> int:
    """Index in ``PHONES`` of a synthesiser's phone name (lower case, aliases folded); -1 if unknown."""
    name = PHONE_ALIASES.get(name.lower(), name.lower())
    try:
        return PHONES.index(name)
    except ValueError:
        return -1


def log_mel(audio16: np.ndarray) -> np.ndarray:
    """Normalised log-mel frames ``[T, 80]`` of 16 kHz audio, ``T = len // 320 + 1``.

    Each band loses its mean over the utterance (a fixed channel EQ becomes a constant and cancels);
    the whole is divided by one standard deviation, so that bands a telephone line left empty are
    not blown up into noise.
    """
    import librosa

    m = librosa.feature.melspectrogram(y=np.asarray(audio16, np.float32), sr=SAMPLE_RATE, n_fft=512,
                                       win_length=400, hop_length=HOP, n_mels=N_MELS, fmin=40.0, fmax=7600.0,
                                       center=True, power=2.0)
    x = np.log(m + 1e-6 * (float(m.max()) + 1e-10))
    x = x - x.mean(axis=1, keepdims=True)
    return (x / (x.std() + 1e-5)).T.astype(np.float32)


@dataclass
class PhoneConfig:
    channels: int = 256
    layers: int = 6  # dilated residual conv blocks after the input conv
    kernel: int = 5
    dropout: float = 0.1
    phones: int = len(PHONES)


class PhoneRecogniser(nn.Module):
    """log-mel ``[B, T, 80]`` -> phone logits ``[B, T, 41]``; a receptive field of about 1 s."""

    def __init__(self, cfg: PhoneConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PhoneConfig()
        c, k = cfg.channels, cfg.kernel
        self.inp = nn.Conv1d(N_MELS, c, k, padding=k // 2)
        self.blocks = nn.ModuleList()
        for i in range(cfg.layers):
            d = 2 ** (i % 3)
            self.blocks.append(nn.Sequential(
                nn.GroupNorm(1, c), nn.GELU(), nn.Dropout(cfg.dropout),
                nn.Conv1d(c, c, k, padding=d * (k // 2), dilation=d)))
        self.out = nn.Sequential(nn.GroupNorm(1, c), nn.GELU(), nn.Conv1d(c, cfg.phones, 1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.inp(mel.transpose(1, 2))
        for block in self.blocks:
            x = x + block(x)
        return self.out(x).transpose(1, 2)

    @torch.inference_mode()
    def posteriorgram(self, audio16: np.ndarray) -> np.ndarray:
        """Phone probabilities ``[T_c, 41]`` of 16 kHz speech (50 frames/s)."""
        self.eval()
        x = torch.from_numpy(log_mel(audio16))[None].to(next(self.parameters()).device)
        return torch.softmax(self(x)[0].float(), dim=-1).cpu().numpy()


def save_phone_recogniser(model: PhoneRecogniser, path: str | os.PathLike, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().half().contiguous() for k, v in model.state_dict().items()}
    info = {"config": json.dumps(asdict(model.cfg)), "phones": " ".join(PHONES)}
    info.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    save_file(tensors, str(path), metadata=info)


def load_phone_recogniser(path: str | os.PathLike, device: str = "cpu") -> PhoneRecogniser:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as exc:
        raise AlignSTSError(f"{path}: cannot read the phone recogniser ({type(exc).__name__}); reinstall alignsts") from None
    if meta.get("phones", "").split() != list(PHONES):
        raise AlignSTSError(f"{path}: the phone recogniser was trained on another phone set; reinstall alignsts")
    model = PhoneRecogniser(PhoneConfig(**json.loads(meta["config"])))
    model.load_state_dict(state)
    return model.eval().to(torch.device(device))
