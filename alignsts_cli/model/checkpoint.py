"""Acoustic-model checkpoints: our safetensors format, and the importer for the official ``.ckpt``.

Our format (no pickle, so loading never runs code):

* a folder with ``config.json`` (the AlignSTSConfig) and ``model.safetensors`` (every state-dict
  tensor, float32), or
* one ``.safetensors`` file whose metadata holds the config JSON under ``alignsts_config``.

``load_model(path)`` rebuilds the model from the file alone. ``import_official(src, dst)`` converts the
authors' checkpoint once (see /work/shared/reference/official-checkpoint.md for its layout).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output
from alignsts_cli.model.alignsts import AlignSTS
from alignsts_cli.model.config import AlignSTSConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "alignsts_config"
FORMAT_NAME = "alignsts-acoustic"

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


# ---------------------------------------------------------------------------------------------
# Our format
# ---------------------------------------------------------------------------------------------

def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    with atomic_output(path) as tmp:  # usual file permissions, nothing left behind on failure
        save_file(tensors, str(tmp), metadata=metadata)


def _atomic_write_text(text: str, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_model(model: AlignSTS, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` in our format: ``path`` ending in ``.safetensors`` -> one file, else a folder.

    ``dtype=torch.float16`` halves the file (for shipping); loading always gives float32 weights.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT_NAME, METADATA_KEY: model.config.to_json()}
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(state, path, metadata)
        return path
    if path.exists() and not path.is_dir():
        raise AlignSTSError(f"{path} is a file: give a folder, or a name ending in .safetensors")
    path.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, path / WEIGHTS_NAME, metadata)
    _atomic_write_text(model.config.to_json() + "\n", path / CONFIG_NAME)
    return path


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AlignSTSError(f"{path}: not a readable safetensors file ({exc}); download or export it again") from None
    return tensors, metadata


def state_dict_problems(ours: dict, state: dict) -> list[str]:
    """Missing, left-over and mis-shaped keys of ``state`` against a module's ``ours`` (empty: it fits)."""
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    shapes = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"{len(extra)} key(s) left over: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
    if shapes:
        problems.append("shape mismatch: " + ", ".join(
            f"{k} {list(state[k].shape)} vs {list(ours[k].shape)}" for k in shapes[:8]))
    return problems


def check_state_dict(model: AlignSTS, state: dict, source: str) -> None:
    """Raise AlignSTSError naming every missing, unexpected or mis-shaped key."""
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise AlignSTSError(f"{source}: weights do not fit the AlignSTS model ({'; '.join(problems)}); "
                            "use a checkpoint written by alignsts or import the official one with import_official")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AlignSTS:
    """Rebuild the model (config + weights) from our format; returns it in eval mode with ``.config``."""
    path = Path(path)
    if not path.exists():
        raise AlignSTSError(f"{path}: no such model; download the weights or give the right path")
    if path.suffix == ".ckpt":
        raise AlignSTSError(f"{path} is an official pickle checkpoint: convert it once with "
                            "import_official(src, dst) and load the result")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            raise AlignSTSError(f"{path}: no {WEIGHTS_NAME} in this folder; export the model again")
        state, metadata = _read_safetensors(weights)
        config_file = path / CONFIG_NAME
        if config_file.exists():
            config = AlignSTSConfig.from_json(config_file.read_text())
        elif METADATA_KEY in metadata:
            config = AlignSTSConfig.from_json(metadata[METADATA_KEY])
        else:
            raise AlignSTSError(f"{path}: no {CONFIG_NAME}; export the model again")
    else:
        state, metadata = _read_safetensors(path)
        if METADATA_KEY not in metadata:
            raise AlignSTSError(f"{path}: this safetensors file carries no AlignSTS config; "
                                "it is not an alignsts acoustic model")
        config = AlignSTSConfig.from_json(metadata[METADATA_KEY])
    model = AlignSTS(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The official checkpoint
# ---------------------------------------------------------------------------------------------

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


def import_official(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert the authors' AlignSTS checkpoint into our format; returns ``dst``.

    src: the official ``model_ckpt_steps_<N>.ckpt``, or a folder containing
    ``checkpoints/alignsts/model_ckpt_steps_<N>.ckpt`` (the highest N is taken).
    dst: a folder, or a file name ending in ``.safetensors``.

    WARNING: the official file is a pickle. Unpickling can execute arbitrary code written by whoever
    made the file; call this only on a checkpoint you trust, and only when the user asked to import it.
    The result is safetensors, which loads without running code.

    Every official key is loaded into the parameter or buffer of the same name; a key with no
    counterpart (left over), a counterpart with no key (missing) or a shape mismatch raises
    AlignSTSError naming the keys. Buffers kept but never read are listed in UNUSED_OFFICIAL_KEYS and
    recorded in the config's ``extra``.
    """
    ckpt_path = find_official_checkpoint(src)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # pickle: runs the file's code
    except Exception as exc:
        raise AlignSTSError(f"{ckpt_path}: cannot read this checkpoint ({type(exc).__name__}: {exc}); "
                            "check that the download is complete") from None
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
