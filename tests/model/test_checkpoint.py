"""Our checkpoint format (alignsts_cli/model/checkpoint.py), for the acoustic model and the vocoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import AlignSTS, load_model, save_model
from alignsts_cli.model import checkpoint, foreign
from alignsts_cli.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig
from conftest import fake_official_hifigan, model_inputs, tiny_config

torch.set_num_threads(2)
DATA = Path(__file__).resolve().parents[1] / "data"


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
    content, speaker, f0, noise = model_inputs(cfg)
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


def test_left_over_weights_are_named(tmp_path):
    model = HiFiGAN(HiFiGANConfig(nsf=False))
    sd = dict(model.state_dict())
    sd["extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(AlignSTSError, match="extra_layer.weight"):
        checkpoint.load_generator(HiFiGAN(HiFiGANConfig(nsf=False)), sd, "test")
    del sd["extra_layer.weight"], sd["conv_post.bias"]
    with pytest.raises(AlignSTSError, match="conv_post.bias"):
        checkpoint.load_generator(HiFiGAN(HiFiGANConfig(nsf=False)), sd, "test")


def test_save_load_round_trip(tmp_path):
    folder = fake_official_hifigan(tmp_path / "official")
    model, config, profile = foreign.load_official_nsf(folder)
    out = checkpoint.save_vocoder(model, tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["upsample_rates"] == [8, 4, 2, 2] and meta["profile"]["name"] == "official-24k"
    loaded, config2, profile2 = checkpoint.load_vocoder(out)
    assert config2 == config and profile2 == profile
    mel, f0 = torch.randn(2, 80, 20) - 4, torch.full((2, 20), 150.0)
    with torch.no_grad():
        a = model(mel, f0, generator=torch.Generator().manual_seed(3))
        b = loaded(mel, f0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_saving_a_weight_normed_model_folds_it(tmp_path):
    torch.manual_seed(0)
    cfg = HiFiGANConfig(upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], upsample_initial_channel=16,
                        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], resblock="2",
                        sample_rate=8000, hop_length=16)
    model = HiFiGAN(cfg).apply_weight_norm()
    loaded, _, _ = checkpoint.load_vocoder(checkpoint.save_vocoder(model, tmp_path / "v"))
    mel, f0 = torch.randn(1, 80, 10), torch.full((1, 10), 300.0)
    with torch.no_grad():
        a = model(mel, f0, generator=torch.Generator().manual_seed(0))
        b = loaded(mel, f0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-6)
