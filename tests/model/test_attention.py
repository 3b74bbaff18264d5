"""Windowed cross-attention (alignsts_cli/model/attention.py): windows, guided attention, positions, by hand."""
from __future__ import annotations

import math

import torch

from alignsts_cli.model.attention import (
    count_positions,
    guided_attention_loss,
    guided_attention_weights,
    sinusoid,
    window_mask,
)


torch.set_num_threads(2)


def test_window_mask_hand_cases():
    # Tq = Tk = 10, w = 0.4: h = int(4)//2 = 2; query t sees keys [max(0, t-2), t+2)
    m = window_mask(10, 10, 0.4)[0]
    assert m[5].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert m[0].nonzero().flatten().tolist() == [0, 1]
    assert m[9].nonzero().flatten().tolist() == [7, 8, 9]
    # Tq = 4, Tk = 10, w = 0.2: h = 1; centres int(t/4*10) = 0, 2, 5, 7
    m = window_mask(4, 10, 0.2)[0]
    assert [row.nonzero().flatten().tolist() for row in m] == [[0], [1, 2], [4, 5], [6, 7]]
    # float64 centre: int(3/10*10) = int(3.0000000000000004) = 3
    assert window_mask(10, 10, 0.4)[0, 3].nonzero().flatten().tolist() == [1, 2, 3, 4]
    # per-item lengths in a batch; rows beyond the query length are left open
    m = window_mask(torch.tensor([4, 2]), torch.tensor([10, 5]), 0.4, 4, 10)
    assert m[1, 1].nonzero().flatten().tolist() == [1, 2] and bool(m[1, 3].all())  # h = int(5*.4)//2 = 1, c = 2


def test_guided_attention_weights_and_loss_hand_cases():
    w = guided_attention_weights(2, 2, 0.5)[0]
    off = 1 - math.exp(-0.5)  # (1/2 - 0)^2 / (2 * 0.25) = 0.5
    assert torch.allclose(w, torch.tensor([[0.0, off], [off, 0.0]]))
    w = guided_attention_weights(4, 2, 0.1)[0]  # t/T = 0, .25, .5, .75 ; n/N = 0, .5
    assert w[2, 1] == 0 and math.isclose(float(w[1, 0]), 1 - math.exp(-0.0625 / 0.02), rel_tol=1e-6)
    diag = torch.eye(2)[None, None]  # [B, H, T, N]
    anti = torch.eye(2).flip(0)[None, None]
    lens = torch.tensor([2])
    assert float(guided_attention_loss([diag], lens, lens, 0.5)) == 0.0
    assert math.isclose(float(guided_attention_loss([anti], lens, lens, 0.5)), off / 2, rel_tol=1e-6)
    # layers are summed (official), cells outside the lengths do not count
    assert math.isclose(float(guided_attention_loss([anti, anti], lens, lens, 0.5)), off, rel_tol=1e-6)
    padded = torch.zeros(1, 1, 3, 3)
    padded[0, 0, :2, :2] = anti[0, 0]
    assert math.isclose(float(guided_attention_loss([padded], lens, lens, 0.5)), off / 2, rel_tol=1e-6)


def test_positions_count_only_frames_with_nonzero_channel_0():
    x = torch.zeros(1, 6, 4)
    x[0, :, 0] = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0])
    x[0, :, 1] = 1.0  # other channels do not matter
    assert count_positions(x).tolist() == [[0, 1, 0, 2, 3, 0]]
    valid = torch.tensor([[True, True, True, True, False, False]])
    assert count_positions(x, valid).tolist() == [[0, 1, 0, 2, 0, 0]]
    emb = sinusoid(count_positions(x), 8)
    assert torch.all(emb[0, [0, 2, 5]] == 0)
    freq = torch.exp(torch.arange(4.0) * -(math.log(10000) / 3))
    assert torch.allclose(emb[0, 3], torch.cat([torch.sin(2 * freq), torch.cos(2 * freq)]))
