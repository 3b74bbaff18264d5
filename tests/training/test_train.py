"""Training (alignsts_cli/training/train.py): logs, checkpoints, samples, exact resume, modes, ablation, bad inputs.

Everything runs on a tiny model (hidden 32) and a tiny synthetic cache written here in the prepared-cache
format, with a tiny random vocoder folder for the samples, on one CPU thread.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import AlignSTS, AlignSTSConfig, load_model, rhythm_curve
from alignsts_cli.training.train import (
    TrainConfig,
    collate,
    crop,
    lr_factor,
    make_batches,
    read_cache,
    train,
)

torch.set_num_threads(1)  # tiny models: one thread is fastest, and the cores are shared
CONFIGS = Path(__file__).resolve().parents[2] / "alignsts_cli" / "training" / "configs"
TINY_MODEL = dict(hidden=32, speaker_dim=32, norm_groups=4, denoiser_layers=2, denoiser_channels=32, ffn_mult=1,
                  aligner_layers=1, vq_data_init=True)


# ---------------------------------------------------------------------------------------------
# inputs: a synthetic cache in the prepared-cache format, a tiny vocoder, a tiny train config
# ---------------------------------------------------------------------------------------------

def write_cache(root: Path, n_train=12, n_valid=3, *, content_dim=8, speaker_dim=32, seed=0, meta_changes=None,
                splits=None) -> Path:
    """Toy paired corpus: 6 'phones', each with a mel template; speech holds each phone 2-4 mel frames,
    singing 4-8 frames on one note with an attack/decay envelope (so the rhythm curve shows the
    durations); content is the phone sequence at half the mel rate (50 frames/s, as MFCCs)."""
    rng = np.random.default_rng(seed)
    phones = 2 * rng.standard_normal((6, content_dim))
    templates = -6 + 4 * rng.random((6, 80))
    voices = rng.standard_normal((2, speaker_dim))
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    (root / "items").mkdir(parents=True)
    items = []
    n = n_train + n_valid
    for k in range(n):
        tokens = rng.integers(0, 6, rng.integers(4, 9))
        sing_d, speech_d = rng.integers(4, 9, len(tokens)), rng.integers(2, 5, len(tokens))

        def mel_of(durations):
            parts = []
            for tok, d in zip(tokens, durations):
                env = np.sin(np.linspace(0.2, math.pi - 0.2, d))
                parts.append(templates[tok][None] + 3 * (env[:, None] - 1))
            return np.concatenate(parts).astype(np.float32)

        def content_of(durations):
            frames = np.repeat(tokens, durations)[::2]  # half the mel rate
            return (phones[frames] + 0.1 * rng.standard_normal((len(frames), content_dim))).astype(np.float32)

        mel, speech_mel = mel_of(sing_d), mel_of(speech_d)
        f0 = np.concatenate([np.r_[np.full(d - 1, 150 + 250 * rng.random()), 0.0] for d in sing_d]).astype(np.float32)
        voice = voices[k % 2]
        arrays = dict(content=content_of(speech_d), sing_content=content_of(sing_d), speaker=voice.astype(np.float32),
                      sing_speaker=(voice + 0.05 * rng.standard_normal(speaker_dim)).astype(np.float32),
                      mel=mel, f0=f0, speech_mel=speech_mel)
        item_id = f"item{k:02d}"
        np.savez(root / "items" / f"{item_id}.npz", **arrays)
        split = (splits or {}).get(k, "train" if k < n_train else "valid")
        items.append(dict(id=item_id, speaker=f"v{k % 2}", song=f"s{k}", text="toy", split=split, frames=len(mel),
                          content_frames=len(arrays["content"]), sing_content_frames=len(arrays["sing_content"]),
                          speech=f"speech/{item_id}.wav", singing=f"singing/{item_id}.wav"))
    meta = dict(format="alignsts-cache", version=1, profile="compact-16k", content_kind="mfcc",
                content_dim=content_dim, speaker_dim=speaker_dim, source="synthetic", items=len(items))
    meta.update(meta_changes or {})
    (root / "cache.json").write_text(json.dumps(meta))
    (root / "items.json").write_text(json.dumps(items))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("cache") / "cache")


@pytest.fixture(scope="module")
def vocoder_dir(tmp_path_factory):
    from alignsts_cli.model.checkpoint import save_vocoder
    from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    cfg = HiFiGANConfig(upsample_rates=(8, 4, 5), upsample_kernel_sizes=(16, 8, 10), upsample_initial_channel=16,
                        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),), nsf=False, sample_rate=16000,
                        hop_length=160, profile="compact-16k")
    return save_vocoder(HiFiGAN(cfg), tmp_path_factory.mktemp("vocoder") / "vocoder")


def tiny(vocoder_dir=None, **changes) -> TrainConfig:
    base = dict(model=dict(TINY_MODEL), steps=4, batch_size=4, lr=3e-3, warmup=2, log_every=1, valid_every=2,
                ckpt_every=2, n_samples=2, valid_max_items=4, vocoder=str(vocoder_dir) if vocoder_dir else None,
                seed=0, num_threads=1, device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def weights(folder: Path) -> dict:
    return load_model(folder).state_dict()


# ---------------------------------------------------------------------------------------------
# train, resume, and the same run straight through
# ---------------------------------------------------------------------------------------------

def test_train_then_resume_continues_exactly(tmp_path, cache, vocoder_dir, monkeypatch):
    run = tmp_path / "run"
    res = train(cache, run, tiny(vocoder_dir, steps=4))
    assert res["step"] == 4 and res["resumed_from"] is None and res["train_items"] == 12
    # logs: one row a step, every loss term; validation at steps 2 and 4
    rows = read_csv(run / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["step", "time", "lr", "l1", "ssim", "vq", "rhythm_ce", "guided_attn",
                             "guided_attn_predictor", "total", "grad_norm"]
    assert all(math.isfinite(float(r["total"])) for r in rows)
    lrs = [float(r["lr"]) for r in rows]  # warm-up over 2 steps to 3e-3, then 3e-3·sqrt(2/step)
    assert lrs == pytest.approx([1e-7, 1.5e-3, 3e-3, 3e-3 * math.sqrt(2 / 3)], rel=1e-4)
    valid = read_csv(run / "valid.csv")
    assert [int(r["step"]) for r in valid] == [2, 4] and all(float(r["total"]) > 0 for r in valid)
    # checkpoints, the pointer to the newest, rendered samples, the voice
    for step in (2, 4):
        folder = run / "checkpoints" / f"step_{step}"
        assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "trainer.pt"}
        trainer = torch.load(folder / "trainer.pt", weights_only=True)
        assert trainer["step"] == step and trainer["scheduler"]["last_epoch"] == step
        wavs = sorted(p.name for p in (run / "samples" / f"step_{step}").iterdir())
        assert wavs == ["item12.wav", "item13.wav"]
    assert (run / "last").read_text().strip() == "checkpoints/step_4"
    audio, sr = sf.read(run / "samples" / "step_4" / "item12.wav")
    n_frames = json.loads((cache / "items.json").read_text())[12]["frames"]
    assert sr == 16000 and len(audio) == n_frames * 160 and np.abs(audio).max() > 0
    assert sorted(p.name for p in (run / "samples" / "ground_truth").iterdir()) == ["item12.wav", "item13.wav"]
    assert json.loads((run / "train_config.json").read_text())["steps"] == 4
    from alignsts_cli.engines.alignsts import NeuralEngine
    from alignsts_cli.voices import VoiceModel

    engine = NeuralEngine(VoiceModel(run / "voice" / "acoustic", run / "voice" / "vocoder", "test"), device="cpu")
    saved = weights(run / "checkpoints" / "step_4")
    assert all(torch.equal(v, saved[k]) for k, v in engine.acoustic.state_dict().items())

    # resume to 8 steps: the first update after resuming starts from the saved AdamW moments
    seen = {}
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        if not seen:
            seen.update({i: {k: v.clone() for k, v in self.state[p].items()}
                         for i, p in enumerate(self.param_groups[0]["params"])})
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    res = train(cache, run, tiny(vocoder_dir, steps=8))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert res["resumed_from"] == 4 and res["step"] == 8
    saved_opt = torch.load(run / "checkpoints" / "step_4" / "trainer.pt", weights_only=True)["optimizer"]["state"]
    assert len(seen) == len(saved_opt)
    for i, st in saved_opt.items():
        assert torch.equal(seen[i]["exp_avg"], st["exp_avg"]) and torch.equal(seen[i]["exp_avg_sq"], st["exp_avg_sq"])
        assert float(seen[i]["step"]) == 4
    assert [int(r["step"]) for r in read_csv(run / "log.csv")] == list(range(1, 9))
    assert [int(r["step"]) for r in read_csv(run / "valid.csv")] == [2, 4, 6, 8]
    assert (run / "last").read_text().strip() == "checkpoints/step_8"
    trainer = torch.load(run / "checkpoints" / "step_8" / "trainer.pt", weights_only=True)
    assert trainer["scheduler"]["last_epoch"] == 8 and float(trainer["optimizer"]["state"][0]["step"]) == 8

    # 8 steps in one go: the same weights, optimizer moments and losses, bit for bit
    straight = tmp_path / "straight"
    train(cache, straight, tiny(vocoder_dir, steps=8))
    a, b = weights(run / "checkpoints" / "step_8"), weights(straight / "checkpoints" / "step_8")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta = torch.load(straight / "checkpoints" / "step_8" / "trainer.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(ta[i]["exp_avg"], trainer["optimizer"]["state"][i]["exp_avg"]) for i in ta)
    cols = ["lr", "l1", "ssim", "vq", "rhythm_ce", "guided_attn", "total", "grad_norm"]
    assert [[r[c] for c in cols] for r in read_csv(run / "log.csv")] == \
           [[r[c] for c in cols] for r in read_csv(straight / "log.csv")]
    assert not torch.equal(a["diff_decoder.denoise_fn.output_projection.weight"],
                           weights(run / "checkpoints" / "step_4")["diff_decoder.denoise_fn.output_projection.weight"])

    # asking for no more steps trains nothing and says so
    res = train(cache, run, None)
    assert res["step"] == 8 and res["seconds_per_step"] is None and "already at step 8" in res["notes"][0]


def test_loss_falls(tmp_path, cache):
    res = train(cache, tmp_path / "run", tiny(steps=40, log_every=10, ckpt_every=40, valid_every=40, warmup=5))
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert len(rows) == 4
    assert float(rows[-1]["l1"]) < 0.7 * float(rows[0]["l1"]), rows
    assert float(rows[-1]["total"]) < float(rows[0]["total"])
    assert res["valid"]["step"] == 40 and res["checkpoint"].name == "step_40"


# ---------------------------------------------------------------------------------------------
# modes and ablation: what is fed to the model
# ---------------------------------------------------------------------------------------------

def _spy_forward(monkeypatch):
    calls = []
    real = AlignSTS.forward

    def spy(self, mel, content, speaker, f0, **kw):
        calls.append(dict(content=content.clone(), speaker=speaker.clone(), **kw))
        return real(self, mel, content, speaker, f0, **kw)

    monkeypatch.setattr(AlignSTS, "forward", spy)
    return calls


@pytest.mark.parametrize("mode,content_key,speaker_key", [("sts", "content", "speaker"),
                                                          ("zero-shot", "sing_content", "sing_speaker")])
def test_modes_feed_speech_or_singing(tmp_path, cache, monkeypatch, mode, content_key, speaker_key):
    calls = _spy_forward(monkeypatch)
    train(cache, tmp_path / "run", tiny(mode=mode, steps=2, batch_size=12, n_samples=0, valid_max_items=0))
    assert len(calls) == 2
    arrays = {i: np.load(cache / "items" / f"item{i:02d}.npz") for i in range(12)}
    for call in calls:  # each batch row is one train item's content and speaker of this mode
        for b in range(len(call["speaker"])):
            n = int(call["content_lengths"][b])
            row = call["content"][b, :n].numpy()
            i = next(i for i, a in arrays.items() if len(a[content_key]) == n and np.array_equal(a[content_key], row))
            assert np.array_equal(call["speaker"][b].numpy(), arrays[i][speaker_key])
            assert float(call["content"][b, n:].abs().sum()) == 0
        assert "source_rhythm" not in call


def test_ablation_without_rhythm_adaptor_uses_the_speech_rhythm(tmp_path, cache, vocoder_dir, monkeypatch):
    calls = _spy_forward(monkeypatch)
    model = dict(TINY_MODEL, use_rhythm_adaptor=False)
    res = train(cache, tmp_path / "run", tiny(vocoder_dir, model=model, steps=2, n_samples=1, valid_max_items=2))
    assert res["step"] == 2 and math.isfinite(res["losses"]["total"]) and res["losses"]["rhythm_ce"] == 0
    train_calls = calls[:2]  # then validation
    speech = [np.load(cache / "items" / f"item{i:02d}.npz")["speech_mel"] for i in range(12)]
    for call in train_calls:  # the rhythm curve (eq. 3, β 35) of each item's own speech mel
        r, n = call["source_rhythm"], call["source_rhythm_lengths"]
        assert r.shape == (len(call["speaker"]), int(n.max()))
        for b in range(len(n)):
            want = [rhythm_curve(m, 35.0, log_base=math.e) for m in speech if len(m) == int(n[b])]
            assert any(np.allclose(r[b, :int(n[b])].numpy(), w, atol=1e-5) for w in want)
    assert (tmp_path / "run" / "samples" / "step_2" / "item12.wav").exists()
    assert load_model(tmp_path / "run" / "voice" / "acoustic").config.use_rhythm_adaptor is False


def test_reference_mel_voice_is_fed_its_own_speech_mel(tmp_path, cache, monkeypatch):
    calls = _spy_forward(monkeypatch)
    model = dict(TINY_MODEL, reference_mel=True, reference_lifter=4)
    res = train(cache, tmp_path / "run", tiny(model=model, steps=2, n_samples=0, valid_max_items=0))
    assert res["step"] == 2 and math.isfinite(res["losses"]["total"])
    speech = [np.load(cache / "items" / f"item{i:02d}.npz")["speech_mel"] for i in range(12)]
    for call in calls:  # each row is the speech mel of the item whose content it has, padding excluded
        ref, n = call["reference"], call["reference_lengths"]
        for b in range(len(n)):
            row = ref[b, :int(n[b])].numpy()
            assert any(m.shape == row.shape and np.array_equal(m, row) for m in speech)
        assert "source_rhythm" not in call
    assert load_model(tmp_path / "run" / "voice" / "acoustic").config.reference_mel is True
    with pytest.raises(AlignSTSError, match="reference_mel needs mode 'sts'"):
        tiny(model=model, mode="zero-shot")


# ---------------------------------------------------------------------------------------------
# batches, crops, schedule, configs
# ---------------------------------------------------------------------------------------------

def test_batches_are_length_bucketed_and_cover_the_epoch():
    rng = np.random.default_rng(0)
    frames = rng.integers(20, 400, 300).tolist()
    batches = make_batches(frames, 8, None, np.random.default_rng(1))
    assert sorted(i for b in batches for i in b) == list(range(300)) and max(map(len, batches)) == 8
    spread = np.mean([max(frames[i] for i in b) - min(frames[i] for i in b) for b in batches])
    assert spread < 60  # random batches of 8 would spread ~300 frames
    capped = make_batches(frames, 8, 1000, np.random.default_rng(1))
    assert all(len(b) == 1 or len(b) * max(frames[i] for i in b) <= 1000 for b in capped)
    assert make_batches(frames, 8, None, np.random.default_rng(1)) == batches  # same seed, same epoch


def test_crop_cuts_content_in_proportion():
    item = dict(mel=np.arange(100.0)[:, None].repeat(80, 1), f0=np.arange(100.0), content=np.arange(50.0)[:, None],
                source=np.arange(30.0)[:, None].repeat(80, 1), speaker=np.zeros(4))
    out = crop(item, 40, np.random.default_rng(3))
    a = int(out["f0"][0])
    assert len(out["mel"]) == 40 and np.array_equal(out["f0"], np.arange(a, a + 40))
    assert out["content"][0, 0] == math.floor(a / 2) and len(out["content"]) in (20, 21)
    assert out["source"][0, 0] == math.floor(a * 0.3) and 12 <= len(out["source"]) <= 13
    assert crop(item, 40)["f0"][0] == 0 and crop(item, 200) is item
    batch = collate([item, crop(item, 40)], "cpu")
    assert batch["mel"].shape == (2, 100, 80) and batch["lengths"].tolist() == [100, 40]
    assert batch["content_lengths"].tolist() == [50, 20] and float(batch["mel"][1, 40:].abs().sum()) == 0


def test_lr_schedule_and_the_shipped_configs():
    assert lr_factor(0, 2000) == 0 and lr_factor(1000, 2000) == 0.5 and lr_factor(2000, 2000) == 1
    assert lr_factor(8000, 2000) == pytest.approx(0.5)
    official = TrainConfig.load(CONFIGS / "official.json")
    assert official.peak_lr(256) == pytest.approx(2.0 * 256**-0.5 * 2000**-0.5) == pytest.approx(2.795e-3, rel=1e-3)
    assert official.model_config() == AlignSTSConfig()  # the official sizes and switches
    assert (official.betas, official.grad_clip, official.steps, official.batch_size) == ((0.9, 0.98), 1.0, 200_000, 16)
    compact = TrainConfig.load(CONFIGS / "compact-16k.json")
    meta = dict(profile="compact-16k", content_kind="mfcc", content_dim=20, speaker_dim=256)
    cfg = compact.model_config(meta)
    assert (cfg.hidden, cfg.audio_profile, cfg.content_kind, cfg.content_dim) == (256, "compact-16k", "mfcc", 20)
    n = sum(p.numel() for p in AlignSTS(cfg).parameters())
    assert n == 5_524_696 and compact.peak_lr(256) == 1e-3  # 11 MB in fp16: the bundle stays under 40 MB
    assert TrainConfig.load("compact-16k") == compact  # a shipped config by name
    for path in CONFIGS.glob("*.json"):  # every example is a valid config for a compact cache or the official one
        c = TrainConfig.load(path)
        c.model_config(meta if c.model.get("audio_profile") == "compact-16k" else None)
    assert TrainConfig.load("compact-16k-zero-shot").mode == "zero-shot"
    assert TrainConfig.load("compact-16k-no-rhythm-adaptor").model["use_rhythm_adaptor"] is False


# ---------------------------------------------------------------------------------------------
# what a user can get wrong
# ---------------------------------------------------------------------------------------------

def test_bad_inputs_raise_user_errors(tmp_path, cache):
    cfg = tiny(steps=1, n_samples=0)
    with pytest.raises(AlignSTSError, match="no such cache folder"):
        train(tmp_path / "nowhere", tmp_path / "r0", cfg)
    bad = write_cache(tmp_path / "bad", 2, 0, meta_changes={"format": "something-else"})
    with pytest.raises(AlignSTSError, match="not an alignsts cache"):
        train(bad, tmp_path / "r1", cfg)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cache.json").write_text("{}")  # not even the format
    with pytest.raises(AlignSTSError, match="not an alignsts cache"):
        read_cache(tmp_path / "half")
    unfinished = write_cache(tmp_path / "unfinished", 2, 0)
    (unfinished / "items.json").unlink()
    with pytest.raises(AlignSTSError, match="unfinished"):
        train(unfinished, tmp_path / "r1", cfg)
    empty = write_cache(tmp_path / "empty", 0, 3)
    with pytest.raises(AlignSTSError, match="no train items"):
        train(empty, tmp_path / "r2", cfg)
    wide = write_cache(tmp_path / "wide", 2, 0, content_dim=12)
    with pytest.raises(AlignSTSError, match="does not fit the model"):
        train(wide, tmp_path / "r3", tiny(steps=1, model=dict(TINY_MODEL, content_dim=8)))
    (tmp_path / "cfg.json").write_text(json.dumps({"stepz": 3}))
    with pytest.raises(AlignSTSError, match="unknown field"):
        TrainConfig.load(tmp_path / "cfg.json")
    with pytest.raises(AlignSTSError, match="mode must be"):
        TrainConfig(mode="singing")
    with pytest.raises(AlignSTSError, match="no such config"):
        TrainConfig.load(tmp_path / "missing.json")
    # an existing run is never overwritten, and resuming refuses settings that would change its course
    train(cache, tmp_path / "run", cfg)
    with pytest.raises(AlignSTSError, match="already holds a training run"):
        train(cache, tmp_path / "run", cfg, resume=False)
    with pytest.raises(AlignSTSError, match="changes lr"):
        train(cache, tmp_path / "run", tiny(steps=2, n_samples=0, lr=1e-4))
    with pytest.raises(AlignSTSError, match="changes denoiser_layers"):
        train(cache, tmp_path / "run", tiny(steps=2, n_samples=0, model=dict(TINY_MODEL, denoiser_layers=3)))
    (cache / "items" / "item05.npz").rename(tmp_path / "moved.npz")  # an item file gone missing
    try:
        with pytest.raises(AlignSTSError, match="item05.npz: unreadable cache item"):
            train(cache, tmp_path / "r4", tiny(steps=3, n_samples=0, batch_size=12))
    finally:
        (tmp_path / "moved.npz").rename(cache / "items" / "item05.npz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AlignSTSError, match="is a file"):
        train(cache, tmp_path / "file", cfg)
