"""Our checkpoint format, for the acoustic model and the vocoder alike (no pickle: loading never runs code).

A checkpoint is either

* a folder with ``config.json`` and ``model.safetensors`` (every state-dict tensor), or
* one ``.safetensors`` file whose metadata holds the config JSON.

The safetensors metadata names the format (``alignsts-acoustic`` or ``alignsts-hifigan``) and, under
the format's key (``alignsts_config`` / ``alignsts_vocoder``), carries the config. ``save_model`` /
``load_model`` (AlignSTS) and ``save_vocoder`` / ``load_vocoder`` (HiFi-GAN) rebuild a model from the
file alone; foreign formats (the authors' pickles, TorchScript, jik876) are read by
:mod:`alignsts_cli.model.foreign` and written here once.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from alignsts_cli.errors import AlignSTSError, WeightsDamaged, WeightsMissing
from alignsts_cli.files import atomic_output, write_text
from alignsts_cli.model.alignsts import AlignSTS
from alignsts_cli.model.config import AlignSTSConfig
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig, fold_weight_norm

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class Format:
    name: str  # metadata "format"
    key: str  # metadata key of the config JSON
    config: str  # what the config is called in messages
    what: str  # what the model is called in messages


ACOUSTIC = Format("alignsts-acoustic", "alignsts_config", "AlignSTS config", "alignsts acoustic model")
VOCODER = Format("alignsts-hifigan", "alignsts_vocoder", "vocoder config", "alignsts vocoder")
#: Version of the vocoder's config record; a newer one is refused with a hint to upgrade.
VOCODER_VERSION = 1


# ---------------------------------------------------------------------------------------------
# The format, for both models
# ---------------------------------------------------------------------------------------------

def write_checkpoint(path: str | os.PathLike, state: dict, config_json: str, fmt: Format,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write ``state`` and ``config_json``: ``path`` ending in ``.safetensors`` -> one file, else a folder.

    Floating tensors are stored as ``dtype`` (``torch.float16`` halves the file, for shipping); every
    file is written atomically.
    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in state.items()}
    metadata = {"format": fmt.name, fmt.key: config_json}
    if path.suffix == ".safetensors":
        target = path
    elif path.exists() and not path.is_dir():
        raise AlignSTSError(f"{path} is a file: give a folder, or a name ending in .safetensors")
    else:
        target = path / WEIGHTS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:  # usual file permissions, nothing left behind on failure
        save_file(state, str(tmp), metadata=metadata)
    if target != path:
        write_text(path / CONFIG_NAME, config_json + "\n")
    return path


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise WeightsDamaged(f"{path}: not a readable safetensors file ({exc}); download or export it again") from None


def _locate(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) of a checkpoint, with a clear error when it is not one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsMissing(f"{path}: no such model; download the weights or give the right path")
    if path.suffix == ".ckpt":
        raise AlignSTSError(f"{path} is an official pickle checkpoint: convert it once with "
                            "import_official(src, dst) (or `alignsts import-checkpoint`) and load the result")
    if not path.is_dir():
        return path, None
    if not (path / WEIGHTS_NAME).exists():
        raise WeightsMissing(f"{path}: no {WEIGHTS_NAME} in this folder; export the model again")
    return path / WEIGHTS_NAME, (path / CONFIG_NAME if (path / CONFIG_NAME).exists() else None)


def read_config(path: str | os.PathLike, fmt: Format) -> dict:
    """The config a checkpoint carries (from ``config.json``, else the metadata), without reading its tensors."""
    weights, config_file = _locate(path)
    if config_file is not None:
        text = config_file.read_text(encoding="utf-8")
    else:
        metadata = _metadata(weights)
        if fmt.key not in metadata:
            what = f"no {CONFIG_NAME}" if weights.parent == Path(path).expanduser() else \
                f"this safetensors file carries no {fmt.config}"
            raise AlignSTSError(f"{path}: {what}; it is not an {fmt.what} (export it again)")
        text = metadata[fmt.key]
    try:
        config = json.loads(text)
    except ValueError:
        raise WeightsDamaged(f"{path}: the {fmt.config} is not valid JSON; export or download it again") from None
    if not isinstance(config, dict):
        raise WeightsDamaged(f"{path}: the {fmt.config} is not a JSON object; export or download it again")
    return config


def read_checkpoint(path: str | os.PathLike, fmt: Format) -> tuple[dict, dict]:
    """(state dict of float32 tensors, config) of a checkpoint that :func:`write_checkpoint` wrote."""
    from safetensors.torch import load_file

    config = read_config(path, fmt)
    weights, _ = _locate(path)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise WeightsDamaged(f"{weights}: not a readable safetensors file ({exc}); download or export it again") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, config


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


def load_generator(model: HiFiGAN, state_dict: dict, source: str) -> HiFiGAN:
    """Load a HiFi-GAN state dict (weight norm folded) with every key accounted for, else a clear error."""
    state_dict = fold_weight_norm(state_dict)
    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        raise AlignSTSError(f"{source}: weights do not fit the HiFi-GAN layout ({'; '.join(problems)}); "
                            "check that the file and its configuration belong together")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The acoustic model
# ---------------------------------------------------------------------------------------------

def save_model(model: AlignSTS, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` in our format: ``path`` ending in ``.safetensors`` -> one file, else a folder.

    ``dtype=torch.float16`` halves the file (for shipping); loading always gives float32 weights.
    """
    return write_checkpoint(path, model.state_dict(), model.config.to_json(), ACOUSTIC, dtype)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AlignSTS:
    """Rebuild the model (config + weights) from our format; returns it in eval mode with ``.config``."""
    state, config = read_checkpoint(path, ACOUSTIC)
    model = AlignSTS(AlignSTSConfig.from_json(json.dumps(config)))
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The vocoder
# ---------------------------------------------------------------------------------------------

def save_vocoder(model: HiFiGAN, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write the generator (weight norm folded) with its config and audio profile, in our format.
    ``dtype=torch.float16`` halves the file (for shipping); loading always gives float32 weights."""
    from alignsts_cli.profiles import get_profile

    sd = model.state_dict()
    if any(k.endswith(".weight_g") for k in sd):
        sd = fold_weight_norm(sd)
    record = {"format": VOCODER.name, "version": VOCODER_VERSION, "config": model.config.to_dict(),
              "profile": get_profile(model.config.profile).to_dict()}
    return write_checkpoint(path, sd, json.dumps(record, indent=2), VOCODER, dtype)


def load_vocoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read what :func:`save_vocoder` wrote (folder or single file) → ``(model, config, profile_name)`` (eval mode)."""
    from alignsts_cli.profiles import AudioProfile, register_profile

    state, record = read_checkpoint(path, VOCODER)
    if record.get("format") != VOCODER.name:
        raise AlignSTSError(f"{path}: not an alignsts vocoder configuration")
    if int(record.get("version", 0)) > VOCODER_VERSION:
        raise AlignSTSError(f"{path}: written by a newer alignsts (format {record['version']}); upgrade alignsts")
    config = HiFiGANConfig.from_dict(record["config"])
    if "profile" in record:
        register_profile(AudioProfile(**record["profile"]))  # no-op for a known profile, clear error on a clash
    model = load_generator(HiFiGAN(config), state, str(path))
    return model.to(device), config, config.profile
