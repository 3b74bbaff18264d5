"""The rhythm adaptor's vector quantiser: EMA codebook, commitment loss, straight-through gradient.

Official buffers (all in the checkpoint): ``embedding`` [K, D] (the codebook, the only one used at
inference), ``ema_count`` [K] and ``ema_weight`` [K, D] (training statistics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VQEmbeddingEMA(nn.Module):
    """K codes of size D, updated as exponential moving averages of the frames assigned to them.

    Update per training step (frames x_i assigned to code k, n = number of frames):
        count_k <- decay·count_k + (1-decay)·n_k, then Laplace smoothing with ``eps``,
        weight_k <- decay·weight_k + (1-decay)·Σ x_i,   code_k = weight_k / count_k.
    Loss = commitment · mean ||x - sg[code]||² (eq. 4).

    ``data_init`` (training only, off by default = official): when the codebook has never been updated
    (all counts 0), seed it with K frames of the first batch, with a count of 1 each. With the official
    start (codes ~U(±1/512), counts 0) every code not chosen in the very first step becomes a vector of
    size ~weight/eps and is never chosen again; data_init keeps all K codes in play from the start.

    For a trainer that splits one optimizer step into several forwards (gradient accumulation, the ranks
    of DistributedDataParallel): with ``hold`` set, forwards only collect the step's statistics and
    :meth:`flush` applies them once, summed over the forwards and, under ``torch.distributed``, over the
    ranks, so every rank keeps the same codebook, the one a single forward of the whole batch would give.
    ``frozen`` makes a forward leave the codebook and its statistics alone (a placeholder batch).
    """

    hold = False
    frozen = False

    def __init__(self, codes: int, dim: int, commitment: float = 0.25, decay: float = 0.999,
                 eps: float = 1e-5, data_init: bool = False):
        super().__init__()
        self.commitment, self.decay, self.eps, self.data_init = commitment, decay, eps, data_init
        bound = 1 / 512
        embedding = torch.empty(codes, dim).uniform_(-bound, bound)
        self.register_buffer("embedding", embedding)
        self.register_buffer("ema_count", torch.zeros(codes))
        self.register_buffer("ema_weight", embedding.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of x [N, D] -> [N] long."""
        dist = torch.addmm(
            (self.embedding**2).sum(1) + (x**2).sum(1, keepdim=True), x, self.embedding.t(), alpha=-2.0, beta=1.0
        )
        return dist.float().argmin(dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for indices [...] -> [..., D]."""
        return F.embedding(indices, self.embedding)

    @torch.no_grad()
    def _seed_from(self, frames: torch.Tensor) -> None:
        world = _world()
        if world is not None:  # every rank's frames, in rank order: the frames of the whole batch
            from torch import distributed as dist

            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, frames.cpu())
            frames = torch.cat(parts).to(frames.device)
        if frames.shape[0] == 0:
            return
        k = self.embedding.shape[0]
        pick = torch.randperm(frames.shape[0], device=frames.device)[:k]
        seeds = frames[pick]
        if seeds.shape[0] < k:  # fewer frames than codes: jitter copies
            extra = frames[torch.randint(frames.shape[0], (k - seeds.shape[0],), device=frames.device)]
            seeds = torch.cat([seeds, extra + 1e-3 * torch.randn_like(extra)])
        if world is not None:  # rank 0's draw for all
            from torch import distributed as dist

            dist.broadcast(seeds, 0)
        self.embedding.copy_(seeds)
        self.ema_weight.copy_(seeds)
        self.ema_count.fill_(1.0)

    @torch.no_grad()
    def _collect(self, frames: torch.Tensor, indices: torch.Tensor) -> None:
        onehot = F.one_hot(indices, self.embedding.shape[0]).to(self.ema_weight.dtype)  # [N, K]
        stats = torch.cat([onehot.sum(0)[:, None], onehot.t() @ frames.to(onehot.dtype)], 1)  # [K, 1 + D]
        self._pending = stats if getattr(self, "_pending", None) is None else self._pending + stats
        if not self.hold:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Apply the statistics collected since the last update (summed over the ranks): one EMA step."""
        stats, self._pending = getattr(self, "_pending", None), None
        if _world() is not None:
            from torch import distributed as dist

            if stats is None:
                stats = self.ema_weight.new_zeros(self.ema_weight.shape[0], 1 + self.ema_weight.shape[1])
            dist.all_reduce(stats)
        if stats is None:
            return
        k = self.embedding.shape[0]
        self.ema_count.mul_(self.decay).add_((1 - self.decay) * stats[:, 0])
        n = self.ema_count.sum()
        self.ema_count.copy_((self.ema_count + self.eps) / (n + k * self.eps) * n)
        self.ema_weight.mul_(self.decay).add_((1 - self.decay) * stats[:, 1:])
        self.embedding.copy_(self.ema_weight / self.ema_count[:, None])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """x: [B, T, D], mask: [B, T] bool (True = real frame) or None (all real).

        Returns quantised [B, T, D] (straight-through), loss (scalar), indices [B, T] long and
        perplexity (scalar, of the code usage in this batch). Padded frames get an index too, but
        take no part in the update, the loss or the perplexity.
        """
        b, t, d = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        flat = x.detach().reshape(-1, d)
        keep = mask.reshape(-1)
        if self.training and self.data_init and float(self.ema_count.sum()) == 0.0:
            self._seed_from(flat[keep][:0] if self.frozen else flat[keep])
        indices = self.nearest(flat)  # [B*T]
        quantised = self.lookup(indices).view_as(x)  # the codes before this step's update (official order)
        if self.training and not self.frozen:
            self._collect(flat[keep], indices[keep])
        w = mask[..., None].to(x.dtype)
        loss = self.commitment * (((x - quantised.detach()) ** 2) * w).sum() / (w.sum() * d).clamp(min=1)
        probs = F.one_hot(indices[keep], self.embedding.shape[0]).float().mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        quantised = x + (quantised - x).detach()
        return quantised, loss, indices.view(b, t), perplexity


def _world():
    """torch.distributed's default group when a run has more than one rank, else None."""
    from torch import distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None
