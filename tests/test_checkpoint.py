"""Tests for alignsts_cli.model.checkpoint: our safetensors format and the official-checkpoint importer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import AlignSTS, AlignSTSConfig, import_official, load_model, save_model
from alignsts_cli.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    config_from_official,
    find_official_checkpoint,
    unused_reason,
)
from alignsts_cli.model.diffusion import schedule

torch.set_num_threads(2)
DATA = Path(__file__).parent / "data"
OFFICIAL_KEYS = json.loads((DATA / "official_alignsts_keys.json").read_text())["keys"]


def tiny_config(**changes) -> AlignSTSConfig:
    base = dict(audio_profile="toy", n_mels=16, content_dim=8, hidden=32, speaker_dim=32, norm_groups=4,
                denoiser_layers=3, denoiser_channels=32, ffn_mult=2)
    base.update(changes)
    return AlignSTSConfig(**base)


def inputs(cfg, t=40, tc=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(1, tc, cfg.content_dim, generator=g)
    speaker = F.normalize(torch.randn(1, cfg.speaker_dim, generator=g), dim=-1)
    f0 = 150 + 200 * torch.rand(1, t, generator=g)
    noise = torch.randn(cfg.diffusion_steps + 1, 1, 1, cfg.n_mels, t, generator=g)
    return content, speaker, f0, noise


def fake_official_state(layout, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors with the official key names and shapes; the schedule buffers get their real
    values (random ones would overflow the sampler)."""
    g = torch.Generator().manual_seed(seed)
    sched = schedule(next(shape for key, shape, _ in layout if key == "diff_decoder.betas")[0] - 1)
    state = {}
    for key, shape, _ in layout:
        name = key.rsplit(".", 1)[-1]
        if key.startswith("diff_decoder.") and name in sched:
            state[key] = torch.tensor(sched[name], dtype=torch.float32)
        elif name in ("timesteps", "timescale"):
            state[key] = torch.tensor(4.0 if name == "timesteps" else 1.0)
        elif name == "ema_count":
            state[key] = torch.rand(shape, generator=g) * 100 + 1
        elif name == "embedding":
            state[key] = torch.randn(shape, generator=g)
        elif name == "weight" and len(shape) == 1:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)  # GroupNorm / LayerNorm gains
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


def write_official(path: Path, state: dict, flat: bool = False, step: int = 200000) -> Path:
    """A legacy (non-zip) torch.save like the authors' Lightning-style checkpoint."""
    sd = {f"model.{k}": v for k, v in state.items()} if flat else {"model": state}
    ckpt = {"epoch": 3, "global_step": step, "checkpoint_callback_best": 0.1, "optimizer_states": [{}],
            "state_dict": sd}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path


def tiny_layout(cfg):
    return [(k, list(v.shape), "x") for k, v in AlignSTS(cfg).state_dict().items()]


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["folder", "model.safetensors"])
def test_save_and_load_round_trip(tmp_path, name):
    cfg = tiny_config(use_f0_skip=False, aligner_window=0.3)
    model = AlignSTS(cfg)
    with torch.no_grad():
        model.diff_decoder.denoise_fn.output_projection.weight.normal_(0, 0.1)
    path = save_model(model, tmp_path / name)
    if name == "folder":
        assert (path / CONFIG_NAME).exists() and (path / WEIGHTS_NAME).exists()
        assert json.loads((path / CONFIG_NAME).read_text())["use_f0_skip"] is False
    loaded = load_model(path)
    assert loaded.config == cfg and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    content, speaker, f0, noise = inputs(cfg)
    a = model.infer(content, speaker, f0, noise)
    b = loaded.infer(content, speaker, f0, noise)
    for key in ("mel", "condition", "rhythm_codes", "attention"):
        assert torch.equal(a[key], b[key]), key
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave nothing behind


def test_load_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(AlignSTSError, match="no such model"):
        load_model(tmp_path / "missing")
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(AlignSTSError, match="import_official"):
        load_model(tmp_path / "x.ckpt")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AlignSTSError, match="no AlignSTS config"):
        load_model(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AlignSTSError, match="not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")
    # a folder whose weights miss a key and carry an extra one
    cfg = tiny_config()
    folder = save_model(AlignSTS(cfg), tmp_path / "m")
    state = AlignSTS(cfg).state_dict()
    state.pop("crossformer.layer_norm.bias")
    state["crossformer.extra"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_NAME))
    with pytest.raises(AlignSTSError,
                       match=r"missing key\(s\): crossformer.layer_norm.bias.*left over: crossformer.extra"):
        load_model(folder)


def test_import_official_layout_round_trips(tmp_path):
    """The full official layout (268 keys, 26,150,488 parameters) imports with no key left over, and the
    imported, exported and reloaded model computes exactly what the same weights compute in memory."""
    state = fake_official_state(OFFICIAL_KEYS)
    archive = tmp_path / "archive"
    write_official(archive / "checkpoints" / "alignsts" / "model_ckpt_steps_100000.ckpt", {"junk": torch.zeros(1)})
    write_official(archive / "checkpoints" / "alignsts" / "model_ckpt_steps_200000.ckpt", state)
    assert find_official_checkpoint(archive).name == "model_ckpt_steps_200000.ckpt"  # highest step wins
    dst = import_official(archive, tmp_path / "alignsts")
    loaded = load_model(dst)
    assert loaded.config.extra["global_step"] == 200000
    assert loaded.config.extra["imported_from"] == "model_ckpt_steps_200000.ckpt"
    assert loaded.config.replace(extra={}) == AlignSTSConfig()  # the official config, read from the shapes
    assert sum(p.numel() for p in loaded.parameters()) == 26_150_488
    for k, v in state.items():
        assert torch.equal(loaded.state_dict()[k], v), k

    reference = AlignSTS().eval()
    reference.load_state_dict(state)
    content, speaker, f0, noise = inputs(loaded.config, t=30, tc=10)
    a = reference.infer(content, speaker, f0, noise)
    b = loaded.infer(content, speaker, f0, noise)
    for key in ("mel", "condition", "rhythm_codes", "attention"):
        assert torch.equal(a[key], b[key]), key
    assert torch.isfinite(b["mel"]).all() and b["mel"].shape == (1, 30, 80)
    # a .ckpt given directly, and a single-file destination
    single = import_official(archive / "checkpoints" / "alignsts" / "model_ckpt_steps_200000.ckpt",
                             tmp_path / "one.safetensors")
    assert torch.equal(load_model(single).infer(content, speaker, f0, noise)["mel"], b["mel"])


def test_every_official_buffer_is_used_or_explained():
    used_at_inference = {"rhythm_vqvae.embedding", "diff_decoder.sqrt_alphas_cumprod",
                         "diff_decoder.sqrt_one_minus_alphas_cumprod", "diff_decoder.posterior_mean_coef1",
                         "diff_decoder.posterior_mean_coef2", "diff_decoder.posterior_log_variance_clipped"}
    for key, _, kind in OFFICIAL_KEYS:
        if kind == "buffer":
            assert (key in used_at_inference) != (unused_reason(key) is not None), key
        else:
            assert unused_reason(key) is None, key


def test_import_flattened_variant_and_read_sizes_from_shapes(tmp_path):
    cfg = tiny_config(aligner_layers=3, denoiser_layers=5, content_dim=12)
    layout = tiny_layout(cfg)
    state = fake_official_state(layout, seed=1)
    write_official(tmp_path / "model_ckpt_steps_7.ckpt", state, flat=True, step=7)
    read = config_from_official(state)
    for field in ("hidden", "content_dim", "n_mels", "aligner_layers", "denoiser_layers", "denoiser_channels",
                  "ffn_mult", "vq_codes", "diffusion_steps", "predictor_conv_layers"):
        assert getattr(read, field) == getattr(cfg, field), field
    loaded = load_model(import_official(tmp_path, tmp_path / "out"))  # folder holding the .ckpt directly
    for k, v in state.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_import_names_leftover_and_missing_keys(tmp_path):
    cfg = tiny_config()
    state = fake_official_state(tiny_layout(cfg))
    extra = dict(state, **{"rhythm_predictor.mystery.weight": torch.zeros(3)})
    src = write_official(tmp_path / "a" / "model_ckpt_steps_1.ckpt", extra)
    with pytest.raises(AlignSTSError, match=r"left over: rhythm_predictor\.mystery\.weight"):
        import_official(src, tmp_path / "out")
    missing = dict(state)
    missing.pop("crossformer.layers.0.cross_attn.out_proj.weight")
    src = write_official(tmp_path / "b" / "model_ckpt_steps_1.ckpt", missing)
    with pytest.raises(AlignSTSError, match=r"missing key\(s\): crossformer\.layers\.0\.cross_attn\.out_proj\.weight"):
        import_official(src, tmp_path / "out")
    # the vocoder's checkpoint (model_gen) is not the acoustic model
    vocoder = tmp_path / "c" / "model_ckpt_steps_1.ckpt"
    vocoder.parent.mkdir()
    torch.save({"state_dict": {"model_gen": {"conv_pre.weight": torch.zeros(1)}}}, vocoder,
               _use_new_zipfile_serialization=False)
    with pytest.raises(AlignSTSError, match="model_gen"):
        import_official(vocoder, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignSTSError, match="no checkpoints/alignsts"):
        import_official(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
