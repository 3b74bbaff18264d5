"""The rhythm codebook (alignsts_cli/model/vq.py): the EMA update worked out by hand."""
from __future__ import annotations

import math

import torch

from alignsts_cli.model.vq import VQEmbeddingEMA


torch.set_num_threads(2)


def test_vq_ema_update_hand_case():
    vq = VQEmbeddingEMA(2, 1, commitment=0.25, decay=0.5, eps=0.0)
    with torch.no_grad():
        vq.embedding.copy_(torch.tensor([[0.0], [10.0]]))
        vq.ema_weight.copy_(torch.tensor([[0.0], [10.0]]))
        vq.ema_count.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[[1.0], [2.0], [9.0]]])
    q, loss, idx, _ = vq.train()(x)
    assert idx.tolist() == [[0, 0, 1]]
    assert torch.equal(q, torch.tensor([[[0.0], [0.0], [10.0]]]))  # codes before the update
    assert math.isclose(float(loss), 0.25 * (1 + 4 + 1) / 3, rel_tol=1e-6)
    # count = .5*[1,1] + .5*[2,1] = [1.5, 1]; weight = .5*[0,10] + .5*[3,9] = [1.5, 9.5]
    assert torch.allclose(vq.embedding, torch.tensor([[1.0], [9.5]]))
    x.requires_grad_(True)
    q, *_ = vq.eval()(x)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through
