"""Tests for alignsts_cli.model: layout, official numerics, masks, training behaviour, ablations.

Tiny configs keep everything on 2 CPU threads; the default (official-size) model is only built, or run
on a few frames.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignsts_cli.model import AlignSTS, AlignSTSConfig, f0_to_coarse, rhythm_curve
from alignsts_cli.model.alignsts import batch_stretch_matrix, lifter_matrix
from alignsts_cli.model.attention import (
    attention_band_mass,
)

from conftest import tiny_config as shared_tiny_config

torch.set_num_threads(2)
DATA = Path(__file__).resolve().parents[1] / "data"


# ---------------------------------------------------------------------------------------------
# helpers: tiny configs and a toy paired corpus with a known monotonic alignment
# ---------------------------------------------------------------------------------------------


def tiny_config(**changes) -> AlignSTSConfig:
    return shared_tiny_config(**{"denoiser_layers": 4, **changes})


def lively(model: AlignSTS, seed: int = 0) -> AlignSTS:
    """Untrained models have a zero output layer and a ~0 codebook; give both some values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.diff_decoder.denoise_fn.output_projection.weight
        w.copy_(0.1 * torch.randn(w.shape, generator=g))
        e = model.rhythm_vqvae.embedding
        e.copy_(torch.randn(e.shape, generator=g))
    return model


def random_inputs(cfg, b=1, t=45, tc=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(b, tc, cfg.content_dim, generator=g)
    speaker = F.normalize(torch.randn(b, cfg.speaker_dim, generator=g), dim=-1)
    f0 = 120 + 300 * torch.rand(b, t, generator=g)
    f0[:, ::7] = 0.0  # some unvoiced frames
    return content, speaker, f0


def toy_set(n=8, seed=0, cfg=None):
    """Paired toy corpus: each content frame is one of 6 'phones' held for 3-5 mel frames, with an
    attack/decay envelope (so the rhythm curve carries the durations), one note per phone and an
    unvoiced frame at each phone's end. Returns a padded batch with lengths."""
    cfg = cfg or tiny_config()
    g = torch.Generator().manual_seed(seed)
    phone_vec = 2 * torch.randn(6, cfg.content_dim, generator=g)
    templates = -4 + 2.5 * torch.rand(6, cfg.n_mels, generator=g)
    items = []
    for _ in range(n):
        tc = int(torch.randint(10, 15, (1,), generator=g))
        tokens = torch.randint(0, 6, (tc,), generator=g)
        durations = torch.randint(3, 6, (tc,), generator=g)
        content = phone_vec[tokens] + 0.1 * torch.randn(tc, cfg.content_dim, generator=g)
        mel, f0 = [], []
        for tok, d in zip(tokens.tolist(), durations.tolist()):
            pitch = float(150 + 250 * torch.rand(1, generator=g))
            env = torch.sin(torch.linspace(0.2, math.pi - 0.2, d))
            mel.append(templates[tok][None] + 1.5 * (env[:, None] - 1))
            f = torch.full((d,), pitch)
            f[-1] = 0.0
            f0.append(f)
        items.append((content, torch.cat(mel), torch.cat(f0)))
    speaker = F.normalize(torch.randn(n, cfg.speaker_dim, generator=g), dim=-1)
    t_max = max(len(m) for _, m, _ in items)
    tc_max = max(len(c) for c, _, _ in items)
    batch = dict(mel=torch.zeros(n, t_max, cfg.n_mels), content=torch.zeros(n, tc_max, cfg.content_dim),
                 speaker=speaker, f0=torch.zeros(n, t_max))
    for i, (c, m, f) in enumerate(items):
        batch["content"][i, :len(c)] = c
        batch["mel"][i, :len(m)] = m
        batch["f0"][i, :len(f)] = f
    batch["lengths"] = torch.tensor([len(m) for _, m, _ in items])
    batch["content_lengths"] = torch.tensor([len(c) for c, _, _ in items])
    return batch


def train(cfg, batch, steps, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    model = AlignSTS(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98))
    history = []
    for _ in range(steps):
        out = model(batch["mel"], batch["content"], batch["speaker"], batch["f0"],
                    lengths=batch["lengths"], content_lengths=batch["content_lengths"])
        opt.zero_grad()
        out["losses"]["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({k: float(v.detach()) for k, v in out["losses"].items()})
    return model.eval(), history


def eval_forward(model, batch):
    with torch.no_grad():
        return model(batch["mel"], batch["content"], batch["speaker"], batch["f0"],
                     lengths=batch["lengths"], content_lengths=batch["content_lengths"])


def test_default_model_has_the_official_layout_and_parameter_count():
    ref = json.loads((DATA / "official_alignsts_keys.json").read_text())
    model = AlignSTS()
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in ref["keys"]]  # names, shapes and order
    assert len(ours) == 268
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k, _, kind in ref["keys"] if kind == "buffer"} and len(buffers) == 23
    assert sum(p.numel() for p in model.parameters()) == 26_150_488 == ref["total_parameters"]
    for name, count in ref["parameters_per_top_level_module"].items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == count, name
    assert model.rhythm_predictor.conv[0][3].eps == 1e-12  # LayerNorm eps: 1e-12 in the predictor's convs
    assert model.crossformer.layers[0].layer_norm1.eps == model.crossformer.layer_norm.eps == 1e-5
    assert model.f0_encoder.convolutions[0][1].num_groups == 16


def test_f0_coarse_bins():
    mel_min, mel_max = 1127 * math.log(1 + 50 / 700), 1127 * math.log(1 + 1100 / 700)

    def expected(f):
        m = 1127 * math.log(1 + f / 700)
        v = (m - mel_min) * 254 / (mel_max - mel_min) + 1 if m > 0 else m
        return int(math.floor(min(max(v, 1), 255) + 0.5))

    f0 = torch.tensor([0.0, 30.0, 50.0, 100.0, 220.0, 440.0, 880.0, 1100.0, 2000.0])
    got = f0_to_coarse(f0).tolist()
    assert got == [expected(f) for f in f0.tolist()]
    assert got[0] == 1 and got[1] == 1 and got[-1] == 255 and got[-2] == 255
    # round half up, also on exact ties: these F0s give v = 30.5, 32.5, 68.5 in float32 arithmetic
    # (where the platform's log agrees to the last bit), which half-to-even rounding would send down
    f0 = torch.tensor([130.2705535888672, 136.0137481689453, 246.45863342285156, 300.0])
    v = (1127 * (1 + f0 / 700).log() - mel_min) * 254 / (mel_max - mel_min) + 1
    assert f0_to_coarse(f0).tolist() == [math.floor(x + 0.5) for x in v.tolist()]


def test_rhythm_curve_eq3():
    e = torch.tensor([1.0, 1.0, 3.0, 3.0])  # energies; one mel bin, log10
    mel = torch.log10(e)[:, None]
    std = math.sqrt(4 / 3)  # Bessel-corrected std of [1, 1, 3, 3]
    want = torch.sigmoid(torch.tensor([-1.0, -1.0, 1.0, 1.0]) * 2.0 / std)
    assert torch.allclose(rhythm_curve(mel, beta=2.0), want, atol=1e-6)
    # L2 norm over frequency of the linear magnitude: two bins of 3/sqrt(2) have energy 3
    mel2 = torch.log10(torch.stack([e / math.sqrt(2)] * 2, dim=-1))
    assert torch.allclose(rhythm_curve(mel2, beta=2.0), want, atol=1e-5)
    # numpy in -> numpy out; padding left out of the statistics and zeroed
    padded = torch.cat([mel, torch.full((3, 1), 5.0)])[None]
    r = rhythm_curve(padded.numpy(), beta=2.0, lengths=[4])
    assert isinstance(r, np.ndarray) and np.allclose(r[0, :4], want.numpy(), atol=1e-6) and np.all(r[0, 4:] == 0)
    # smoothing = scipy's gaussian_filter1d (reflect), the RRD setting
    from scipy.ndimage import gaussian_filter1d

    g = torch.Generator().manual_seed(0)
    mel3 = torch.randn(30, 8, generator=g) - 3
    raw = rhythm_curve(mel3, beta=400.0).numpy()
    smooth = rhythm_curve(mel3, beta=400.0, sigma=1.5).numpy()
    assert np.allclose(smooth, gaussian_filter1d(raw, 1.5), atol=1e-6)
    assert not np.allclose(smooth, raw)


def official_reference_infer(sd, cfg, content, speaker, f0, noise):
    """An independent, functional re-statement of the official inference (batch of one), built on
    torch's own multi-head attention with a window mask made by the official per-query loop, a
    fairseq-style position table, and ProDiff's gather-based sampler."""
    hid = cfg.hidden

    def conv_stack(x, prefix, layers, kernel, stride=1):
        for i in range(layers):
            x = F.conv1d(x, sd[f"{prefix}.{i}.0.weight"], sd[f"{prefix}.{i}.0.bias"], stride=stride,
                         padding=(kernel - 1) // 2)
            x = F.relu(F.group_norm(x, cfg.norm_groups, sd[f"{prefix}.{i}.1.weight"], sd[f"{prefix}.{i}.1.bias"]))
        return x

    def positions(x0):  # fairseq make_positions with padding_idx 0, then a table lookup
        table_len = x0.shape[1] + 1
        half = hid // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
        table = torch.arange(table_len, dtype=torch.float)[:, None] * freq[None]
        table = torch.cat([torch.sin(table), torch.cos(table)], 1)
        table[0] = 0
        m = x0.ne(0).int()
        pos = (torch.cumsum(m, 1) * m).long()
        return table.index_select(0, pos.view(-1)).view(*x0.shape, -1)

    def crossformer(p, x1, x2, layers, heads, win):
        pad1, pad2 = x1.abs().sum(-1).eq(0), x2.abs().sum(-1).eq(0)
        alpha = sd[f"{p}.pos_embed_alpha"]
        x1 = x1 + alpha * positions(x1[..., 0])
        x2 = x2 + alpha * positions(x2[..., 0])
        keep1 = 1 - pad1.transpose(0, 1).float()[:, :, None]
        x1 = x1.transpose(0, 1) * keep1
        x2 = x2.transpose(0, 1) * (1 - pad2.transpose(0, 1).float()[:, :, None])
        tq, tk = x1.shape[0], x2.shape[0]
        blocked = torch.ones(tq, tk, dtype=torch.bool)
        for t in range(tq):
            h = int(tk * win) // 2
            c = int(t / tq * tk)
            blocked[t, max(0, c - h): c + h] = False
        for i in range(layers):
            lp = f"{p}.layers.{i}"
            res = x1
            q = F.layer_norm(x1, (hid,), sd[f"{lp}.layer_norm1.weight"], sd[f"{lp}.layer_norm1.bias"])
            x, aw = F.multi_head_attention_forward(
                q, x2, x2, hid, heads, sd[f"{lp}.cross_attn.in_proj_weight"], None, None, None, False, 0.0,
                sd[f"{lp}.cross_attn.out_proj.weight"], None, training=False, key_padding_mask=pad2,
                need_weights=True, attn_mask=blocked)
            x1 = (res + x) * keep1
            res = x1
            h = F.layer_norm(x1, (hid,), sd[f"{lp}.layer_norm2.weight"], sd[f"{lp}.layer_norm2.bias"])
            h = F.conv1d(h.permute(1, 2, 0), sd[f"{lp}.ffn.ffn_1.weight"], sd[f"{lp}.ffn.ffn_1.bias"],
                         padding=cfg.ffn_kernel // 2).permute(2, 0, 1)
            h = F.linear(F.gelu(h * cfg.ffn_kernel ** -0.5), sd[f"{lp}.ffn.ffn_2.weight"], sd[f"{lp}.ffn.ffn_2.bias"])
            x1 = (res + h) * keep1 * keep1
        x1 = F.layer_norm(x1, (hid,), sd[f"{p}.layer_norm.weight"], sd[f"{p}.layer_norm.bias"]) * keep1
        return x1.transpose(0, 1), aw

    x_c = conv_stack(content.transpose(1, 2), "content_encoder.convolutions", cfg.content_layers,
                     cfg.content_kernel).transpose(1, 2)
    f0_mel = 1127 * (1 + f0 / 700).log()
    mel_min, mel_max = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
    f0_mel[f0_mel > 0] = (f0_mel[f0_mel > 0] - mel_min) * 254 / (mel_max - mel_min) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    x_p = F.embedding((f0_mel + 0.5).long(), sd["f0_encoder.pitch_embed.weight"]).transpose(1, 2)
    x_p = conv_stack(x_p, "f0_encoder.convolutions", cfg.pitch_layers, cfg.pitch_kernel).transpose(1, 2)

    x, pred_aw = crossformer("rhythm_predictor.crossformer", x_p, x_c, 1, 1, cfg.predictor_window)
    x = (x + speaker[:, None]).transpose(1, 2)
    for i in range(cfg.predictor_conv_layers):
        x = F.conv1d(F.pad(x, (2, 2)), sd[f"rhythm_predictor.conv.{i}.1.weight"],
                     sd[f"rhythm_predictor.conv.{i}.1.bias"], stride=2)
        x = F.layer_norm(F.relu(x).transpose(1, 2), (hid,), sd[f"rhythm_predictor.conv.{i}.3.weight"],
                         sd[f"rhythm_predictor.conv.{i}.3.bias"], eps=1e-12).transpose(1, 2)
    logits = F.linear(x.transpose(1, 2), sd["rhythm_predictor.linear.weight"], sd["rhythm_predictor.linear.bias"])
    codes = torch.argmax(F.softmax(logits, -1), -1)
    q_rhythm = F.embedding(codes, sd["rhythm_vqvae.embedding"])
    q_rhythm = F.interpolate(q_rhythm.transpose(1, 2), scale_factor=4).transpose(1, 2)[:, :f0.shape[1]]
    x, aw = crossformer("crossformer", q_rhythm, x_c, cfg.aligner_layers, cfg.aligner_heads, cfg.aligner_window)
    nonpad = (1 - x.abs().sum(-1).eq(0).float())[..., None]
    cond = (x + speaker[:, None]) + x_p
    cond = cond * nonpad

    def denoise(xt, t, c):
        p = "diff_decoder.denoise_fn"
        h = F.relu(F.conv1d(xt[:, 0], sd[f"{p}.input_projection.weight"], sd[f"{p}.input_projection.bias"]))
        half = cfg.denoiser_channels // 2
        e = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        e = t[:, None] * e[None]
        e = torch.cat((e.sin(), e.cos()), -1)
        e = F.linear(F.mish(F.linear(e, sd[f"{p}.mlp.0.weight"], sd[f"{p}.mlp.0.bias"])),
                     sd[f"{p}.mlp.2.weight"], sd[f"{p}.mlp.2.bias"])
        skips = []
        for i in range(cfg.denoiser_layers):
            lp = f"{p}.residual_layers.{i}"
            d = 2 ** (i % cfg.denoiser_dilation_cycle)
            step = F.linear(e, sd[f"{lp}.diffusion_projection.weight"], sd[f"{lp}.diffusion_projection.bias"])
            y = h + step[..., None]
            y = F.conv1d(y, sd[f"{lp}.dilated_conv.weight"], sd[f"{lp}.dilated_conv.bias"], padding=d, dilation=d) \
                + F.conv1d(c, sd[f"{lp}.conditioner_projection.weight"], sd[f"{lp}.conditioner_projection.bias"])
            gate, filt = torch.chunk(y, 2, dim=1)
            y = F.conv1d(torch.sigmoid(gate) * torch.tanh(filt), sd[f"{lp}.output_projection.weight"],
                         sd[f"{lp}.output_projection.bias"])
            residual, skip = torch.chunk(y, 2, dim=1)
            h = (h + residual) / math.sqrt(2.0)
            skips.append(skip)
        h = torch.sum(torch.stack(skips), 0) / math.sqrt(cfg.denoiser_layers)
        h = F.relu(F.conv1d(h, sd[f"{p}.skip_projection.weight"], sd[f"{p}.skip_projection.bias"]))
        return F.conv1d(h, sd[f"{p}.output_projection.weight"], sd[f"{p}.output_projection.bias"])[:, None]

    def extract(name, t):
        return sd[f"diff_decoder.{name}"].gather(-1, t).reshape(-1, 1, 1, 1)

    xt = noise[0]
    c = cond.transpose(1, 2)
    for k, i in enumerate(reversed(range(cfg.diffusion_steps))):
        t = torch.full((1,), i, dtype=torch.long)
        x0 = denoise(xt, t, c)
        mean = extract("posterior_mean_coef1", t) * x0 + extract("posterior_mean_coef2", t) * xt
        nonzero = (1 - (t == 0).float()).reshape(1, 1, 1, 1)
        xt = mean + nonzero * (0.5 * extract("posterior_log_variance_clipped", t)).exp() * noise[k + 1]
    return {"mel": xt[:, 0].transpose(1, 2), "condition": cond, "codes": codes, "attention": aw,
            "x_c": x_c, "q_rhythm": q_rhythm}


def test_infer_equals_the_official_computation():
    cfg = tiny_config()
    model = lively(AlignSTS(cfg)).eval()
    content, speaker, f0 = random_inputs(cfg, t=75, tc=30, seed=3)  # 75 frames -> 19 codes -> 76, cut to 75
    noise = torch.randn(5, 1, 1, cfg.n_mels, 75, generator=torch.Generator().manual_seed(1))
    ref = official_reference_infer(model.state_dict(), cfg, content, speaker, f0, noise)
    assert (ref["x_c"][..., 0] == 0).any()  # the position rule is exercised (ReLU zeros in channel 0)
    assert len(ref["codes"].unique()) > 1
    out = model.infer(content, speaker, f0, noise)
    assert out["rhythm_codes_coarse"].shape == (1, 19) and out["rhythm_codes"].shape == (1, 75)
    assert torch.equal(out["rhythm_codes_coarse"], ref["codes"])
    torch.testing.assert_close(out["attention"], ref["attention"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["condition"], ref["condition"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["mel"], ref["mel"], atol=1e-4, rtol=1e-4)
    assert out["mel"].shape == (1, 75, cfg.n_mels) and out["condition"].shape == (1, 75, cfg.hidden)


def test_diffusion_noise_is_the_only_randomness():
    cfg = tiny_config()
    model = lively(AlignSTS(cfg))
    content, speaker, f0 = random_inputs(cfg)
    noise = torch.randn(5, 1, 1, cfg.n_mels, f0.shape[1], generator=torch.Generator().manual_seed(0))
    a = model.infer(content, speaker, f0, noise)["mel"]
    assert torch.equal(a, model.infer(content, speaker, f0, noise.clone())["mel"])
    last_changed = noise.clone()
    last_changed[4] = torch.randn_like(last_changed[4])  # drawn for t = 0, multiplied by 0
    assert torch.equal(a, model.infer(content, speaker, f0, last_changed)["mel"])
    for i in range(4):
        changed = noise.clone()
        changed[i] += 1.0
        assert not torch.allclose(a, model.infer(content, speaker, f0, changed)["mel"]), i
    g1, g2 = (torch.Generator().manual_seed(s) for s in (1, 2))
    b1 = model.infer(content, speaker, f0, generator=g1)["mel"]
    assert not torch.allclose(b1, model.infer(content, speaker, f0, generator=g2)["mel"])
    assert torch.equal(b1, model.infer(content, speaker, f0, generator=torch.Generator().manual_seed(1))["mel"])
    # without a generator the draws come from torch's global generator, in the official order
    torch.manual_seed(5)
    c = model.infer(content, speaker, f0)["mel"]
    torch.manual_seed(5)
    drawn = torch.stack([torch.randn(1, 1, cfg.n_mels, f0.shape[1]) for _ in range(5)])
    assert torch.equal(c, model.infer(content, speaker, f0, drawn)["mel"])
    with pytest.raises(ValueError, match="noise must be"):
        model.infer(content, speaker, f0, noise[:4])


def test_padded_batch_gives_each_item_what_it_gets_alone():
    cfg = tiny_config()
    model = lively(AlignSTS(cfg))
    lens, clens = [37, 50, 23], [11, 16, 7]
    items = [random_inputs(cfg, t=t, tc=tc, seed=i) for i, (t, tc) in enumerate(zip(lens, clens))]
    content = torch.zeros(3, 16, cfg.content_dim)
    f0 = torch.zeros(3, 50)
    speaker = torch.cat([s for _, s, _ in items])
    for i, (c, _, f) in enumerate(items):
        content[i, :c.shape[1]] = c[0]
        f0[i, :f.shape[1]] = f[0]
    noise = torch.randn(5, 3, 1, cfg.n_mels, 50, generator=torch.Generator().manual_seed(0))
    out = model.infer(content, speaker, f0, noise, lengths=torch.tensor(lens), content_lengths=torch.tensor(clens))
    for i, (c, s, f) in enumerate(items):
        t = lens[i]
        alone = model.infer(c, s, f, noise[:, i:i + 1, ..., :t].contiguous())  # official path, no lengths
        torch.testing.assert_close(out["mel"][i, :t], alone["mel"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["attention"][i, :t, :clens[i]], alone["attention"][0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out["rhythm_codes"][i, :t], alone["rhythm_codes"][0])
        assert torch.all(out["mel"][i, t:] == 0) and torch.all(out["attention"][i, t:] == 0)
        assert torch.all(out["attention"][i, :t, clens[i]:] == 0)


def test_infer_uses_the_rhythm_predictor_not_the_true_rhythm():
    cfg = tiny_config()
    model = lively(AlignSTS(cfg)).eval()
    content, speaker, f0 = random_inputs(cfg)
    noise = torch.randn(5, 1, 1, cfg.n_mels, f0.shape[1], generator=torch.Generator().manual_seed(0))
    base = model.infer(content, speaker, f0, noise)
    with torch.no_grad():  # the codes are the predictor's argmax ...
        x_c, x_p = model._encode(content, f0, None, None)
        logits, _, _ = model.rhythm_predictor(x_p, x_c, speaker)
    assert torch.equal(base["rhythm_codes_coarse"], logits.argmax(-1))
    with torch.no_grad():  # ... so forcing the predictor to code 4 gives code 4 everywhere
        model.rhythm_predictor.linear.weight.zero_()
        model.rhythm_predictor.linear.bias.copy_(torch.arange(6.0) == 4)
    forced = model.infer(content, speaker, f0, noise)
    assert torch.all(forced["rhythm_codes"] == 4)
    assert not torch.allclose(forced["mel"], base["mel"])
    # while training rhythm codes come from the singing mel through the VQ (teacher forcing)
    mel_a = torch.randn(1, f0.shape[1], cfg.n_mels) - 3
    with torch.no_grad():
        x_r = model.rhythm_encoder(rhythm_curve(mel_a, cfg.rhythm_beta)[:, None])[0].transpose(1, 2)
        vq_codes = model.rhythm_vqvae.nearest(x_r.reshape(-1, cfg.hidden))
    out = model.train()(mel_a, content, speaker, f0)
    assert torch.equal(out["rhythm_codes"].flatten(), vq_codes)


def test_ablation_switches_are_real_paths():
    cfg = tiny_config()
    full = lively(AlignSTS(cfg))
    content, speaker, f0 = random_inputs(cfg, t=48, tc=13)
    noise = torch.randn(5, 1, 1, cfg.n_mels, 48, generator=torch.Generator().manual_seed(0))
    source_rhythm = torch.rand(1, 30, generator=torch.Generator().manual_seed(1))  # speech rhythm curve
    base = full.infer(content, speaker, f0, noise)
    switches = {"use_rhythm_adaptor": False, "use_cross_modal_alignment": False, "use_f0_skip": False}
    outs = {}
    for name, value in switches.items():
        model = AlignSTS(cfg.replace(**{name: value}))
        model.load_state_dict(full.state_dict())  # every ablation keeps the same modules and keys
        outs[name] = model.infer(content, speaker, f0, noise, source_rhythm=source_rhythm)
        assert (outs[name]["mel"] - base["mel"]).abs().max() > 1e-3, name
        # and it trains: losses finite, gradients reach the encoders
        model.train()
        mel = torch.randn(1, 48, cfg.n_mels) - 3
        losses = model(mel, content, speaker, f0, source_rhythm=source_rhythm)["losses"]
        assert all(torch.isfinite(v) for v in losses.values()), name
        losses["total"].backward()
        assert model.content_encoder.convolutions[0][0].weight.grad.abs().sum() > 0, name
    # w/o RA: the speech's rhythm drives the output and the adaptor is unused
    no_ra = outs["use_rhythm_adaptor"]
    assert no_ra["rhythm_codes"] is None
    model = AlignSTS(cfg.replace(use_rhythm_adaptor=False))
    model.load_state_dict(full.state_dict())
    with pytest.raises(ValueError, match="source_rhythm"):
        model.infer(content, speaker, f0, noise)
    other = model.infer(content, speaker, f0, noise, source_rhythm=source_rhythm.flip(1))
    assert not torch.allclose(other["mel"], no_ra["mel"])
    with torch.no_grad():
        model.rhythm_predictor.linear.bias.add_(5.0)
    assert torch.equal(model.infer(content, speaker, f0, noise, source_rhythm=source_rhythm)["mel"], no_ra["mel"])
    # w/o CM: the content is stretched linearly; the "attention" is that interpolation
    att = outs["use_cross_modal_alignment"]["attention"]
    assert torch.allclose(att.sum(-1), torch.ones(1, 48)) and att[0, 0, 0] == 1 and att[0, -1, -1] == 1
    # w/o F0: the pitch encoding is no longer in the condition
    x_c, x_p = full._encode(content, f0, None, None)
    diff = base["condition"] - outs["use_f0_skip"]["condition"]
    torch.testing.assert_close(diff, x_p.detach(), atol=1e-5, rtol=1e-5)


def test_lifter_keeps_the_envelope_and_drops_the_harmonic_ripple():
    n = 80
    full = lifter_matrix(n, n)
    torch.testing.assert_close(full, torch.eye(n), atol=1e-5, rtol=0)  # all coefficients kept: identity
    p = lifter_matrix(n, 20)
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=0)  # a projection
    bins = torch.arange(n, dtype=torch.float32)
    envelope = -4 + 2 * torch.exp(-((bins - 15) / 8) ** 2) + torch.exp(-((bins - 45) / 10) ** 2)
    ripple = 0.5 * torch.cos(math.pi * bins / 2.5)  # harmonics: a fast ripple across the bands
    smooth = (envelope + ripple) @ p
    error = (smooth - envelope).abs()
    assert error.mean() < 0.05 and error.max() < 0.2 < 0.5 == ripple.abs().max()


def test_reference_mel_carries_the_speech_envelope_into_the_condition():
    cfg = tiny_config(reference_mel=True, reference_lifter=4)
    model = lively(AlignSTS(cfg))
    base = AlignSTS(tiny_config())
    extra = set(model.state_dict()) - set(base.state_dict())
    assert extra and all(k.startswith("reference_encoder.") for k in extra)  # the official layout is untouched
    content, speaker, f0 = random_inputs(cfg, t=48, tc=13)
    noise = torch.randn(5, 1, 1, cfg.n_mels, 48, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    speech = torch.randn(1, 26, cfg.n_mels, generator=g) - 4
    with pytest.raises(ValueError, match="reference"):
        model.infer(content, speaker, f0, noise)
    out = model.infer(content, speaker, f0, noise, reference=speech)
    brighter = speech + torch.linspace(0, 2, cfg.n_mels)  # another voice: a different spectral tilt
    assert (model.infer(content, speaker, f0, noise, reference=brighter)["mel"] - out["mel"]).abs().max() > 1e-3
    # only the envelope counts: a ripple across the bands the lifter drops leaves the output nearly unchanged
    rippled = speech + 0.5 * torch.cos(math.pi * torch.arange(cfg.n_mels))
    near = (model.infer(content, speaker, f0, noise, reference=rippled)["mel"] - out["mel"]).abs().max()
    far = (model.infer(content, speaker, f0, noise, reference=brighter)["mel"] - out["mel"]).abs().max()
    assert near < 0.2 * far
    # a padded batch gives each item what it gets alone
    speech2 = torch.randn(1, 19, cfg.n_mels, generator=g) - 4
    c2, s2, f2 = random_inputs(cfg, t=40, tc=10, seed=1)
    content_b = torch.zeros(2, 13, cfg.content_dim)
    content_b[0], content_b[1, :10] = content[0], c2[0]
    f0_b = torch.zeros(2, 48)
    f0_b[0], f0_b[1, :40] = f0[0], f2[0]
    ref_b = torch.full((2, 26, cfg.n_mels), -11.5)
    ref_b[0], ref_b[1, :19] = speech[0], speech2[0]
    noise_b = torch.cat([noise, torch.randn(5, 1, 1, cfg.n_mels, 48, generator=g)], 1)
    both = model.infer(content_b, torch.cat([speaker, s2]), f0_b, noise_b, lengths=torch.tensor([48, 40]),
                       content_lengths=torch.tensor([13, 10]), reference=ref_b, reference_lengths=torch.tensor([26, 19]))
    torch.testing.assert_close(both["mel"][0], out["mel"][0], atol=1e-5, rtol=1e-5)
    alone = model.infer(c2, s2, f2, noise_b[:, 1:, ..., :40].contiguous(), reference=speech2)
    torch.testing.assert_close(both["mel"][1, :40], alone["mel"][0], atol=1e-5, rtol=1e-5)
    # it trains: the reference encoder gets gradients
    model.train()
    losses = model(torch.randn(1, 48, cfg.n_mels) - 3, content, speaker, f0, reference=speech)["losses"]
    losses["total"].backward()
    assert model.reference_encoder.convolutions[0][0].weight.grad.abs().sum() > 0


def test_reference_residual_sings_on_the_speech_frames_the_aligner_picks():
    from alignsts_cli.errors import AlignSTSError

    with pytest.raises(AlignSTSError, match="reference_residual"):
        tiny_config(reference_residual=True)  # it needs the speech mel
    cfg = tiny_config(reference_mel=True, reference_lifter=4, reference_residual=True)
    model = AlignSTS(cfg)
    with torch.no_grad():  # a decoder that draws no residual (its output layer's weight starts at zero)
        model.diff_decoder.denoise_fn.output_projection.bias.zero_()
    assert set(model.state_dict()) == set(AlignSTS(tiny_config(reference_mel=True, reference_lifter=4)).state_dict())
    content, speaker, f0 = random_inputs(cfg, t=48, tc=13)
    speech = torch.randn(1, 26, cfg.n_mels, generator=torch.Generator().manual_seed(3)) - 4
    envelope = batch_stretch_matrix(torch.tensor([26]), torch.tensor([13]), 26, 13) @ (speech @ lifter_matrix(cfg.n_mels, 4))
    out = model.infer(content, speaker, f0, reference=speech)
    picked = envelope[0, out["attention"][0].argmax(-1)]  # each song frame: one whole speech frame, not a blend
    torch.testing.assert_close(out["mel"][0], picked, atol=1e-5, rtol=0)
    assert len(set(out["attention"][0].argmax(-1).tolist())) > 1
    # training learns the residual: with no residual drawn, its x̂0 is the base at its own (teacher-forced) attention
    model.train()
    song = torch.randn(1, 48, cfg.n_mels) - 3
    res = model(song, content, speaker, f0, reference=speech)
    torch.testing.assert_close(res["mel_pred"][0], envelope[0, res["attention"][0].argmax(-1)], atol=1e-5, rtol=0)
    # a decoder with weights adds its residual on top, and gradients reach it
    live = lively(AlignSTS(cfg))
    live.train()
    res = live(song, content, speaker, f0, reference=speech)
    assert (res["mel_pred"][0] - envelope[0, res["attention"][0].argmax(-1)]).abs().max() > 1e-3
    res["losses"]["total"].backward()
    assert live.diff_decoder.denoise_fn.output_projection.weight.grad.abs().sum() > 0


def test_training_loss_falls_and_the_vq_uses_several_codes():
    batch = toy_set()
    model, history = train(tiny_config(), batch, steps=200)
    first = np.mean([h["total"] for h in history[:10]])
    last = np.mean([h["total"] for h in history[-20:]])
    print(f"total loss {first:.3f} -> {last:.3f} (ratio {last / first:.3f}); "
          f"l1 {history[0]['l1']:.3f} -> {np.mean([h['l1'] for h in history[-20:]]):.3f}")
    assert last <= 0.5 * first
    assert np.mean([h["l1"] for h in history[-20:]]) <= 0.25 * np.mean([h["l1"] for h in history[:10]])
    assert np.mean([h["rhythm_ce"] for h in history[-20:]]) < np.mean([h["rhythm_ce"] for h in history[:10]])
    out = eval_forward(model, batch)
    valid = torch.arange(out["rhythm_codes"].shape[1])[None] < (batch["lengths"][:, None] + 3) // 4
    used = out["rhythm_codes"][valid].unique()
    print(f"VQ codes used: {used.tolist()}")
    assert len(used) > 1
    # inference runs the predictor on the same batch and its codes are the VQ's most of the time
    res = model.infer(batch["content"], batch["speaker"], batch["f0"], lengths=batch["lengths"],
                      content_lengths=batch["content_lengths"], generator=torch.Generator().manual_seed(0))
    agree = (res["rhythm_codes_coarse"] == out["rhythm_codes"])[valid].float().mean()
    print(f"predictor agrees with the VQ on {float(agree):.2f} of the codes")
    assert agree > 0.5


def test_guided_attention_makes_the_alignment_diagonal():
    batch = toy_set()
    bands = {}
    for weight in (40.0, 0.0):  # no window here, so only the guided loss can shape the attention
        model, _ = train(tiny_config(aligner_window=None, guided_attn_weight=weight), batch, steps=150)
        att = eval_forward(model, batch)["attention"]
        bands[weight] = float(attention_band_mass(att, batch["lengths"], batch["content_lengths"], 0.2))
    print(f"attention mass within |n/N - t/T| < 0.1: with guided loss {bands[40.0]:.3f}, without {bands[0.0]:.3f}")
    assert bands[40.0] > 0.75
    assert bands[0.0] < bands[40.0] - 0.3


def test_bad_inputs_raise_user_errors():
    cfg = tiny_config()
    model = AlignSTS(cfg)
    content, speaker, f0 = random_inputs(cfg)
    with pytest.raises(ValueError, match="content features"):
        model.infer(content[..., :5], speaker, f0)
    with pytest.raises(ValueError, match="speaker"):
        model.infer(content, speaker[:, :10], f0)
    with pytest.raises(ValueError, match="lengths"):
        model.infer(content, speaker, f0, lengths=torch.tensor([45]))
    with pytest.raises(ValueError, match="frames"):
        model(torch.zeros(1, 44, cfg.n_mels), content, speaker, f0)
