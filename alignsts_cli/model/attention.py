"""Windowed cross-attention (the rhythm predictor's and the cross-modal aligner's), positions, guided loss.

Shapes: B batch, Tq query frames, Tk key frames, D hidden, H heads. Masks are boolean with True = a
real frame. Two ways of knowing which frames are real:

* explicit (``query_mask``/``key_mask`` given, built from lengths): used for padded batches;
* the official rule (no masks given): a frame is padding when the sum of |x| over channels is 0.

With a batch of one and no masks, everything here computes what the official AlignSTS code computes
(docs/official-numerics.md, items 1-5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Added to attention logits outside the window (paper, App. B.1). The official code blocks them with
#: a boolean mask (-inf) instead: identical whenever a window holds at least one key; when it holds none
#: (T_k·w < 2, h = 0) the official row is NaN and ours is uniform over the real keys.
WINDOW_FILL = -1e8


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True on the first ``lengths[b]`` frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, T] integer positions -> [B, T, dim]: [sin(p·f_k), cos(p·f_k)], f_k = exp(-k·ln(10000)/(dim/2-1)).

    Position 0 is the padding position and gets the zero row (official: fairseq-style table, padding_idx 0).
    """
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float, device=positions.device) * -step)  # [half]
    angle = positions.float()[..., None] * freq  # [B, T, half]
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb * (positions > 0)[..., None].to(emb.dtype)


def count_positions(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Official positions: a running count of the frames whose channel 0 is non-zero, 0 elsewhere.

    x: [B, T, D]; valid: optional [B, T] bool (frames outside it never count). Returns [B, T] long.
    The inputs are ReLU outputs, so channel 0 is often exactly 0: those frames get position 0 (the
    zero row) and do not advance the count. Plain 1..T positions change the official output.
    """
    counted = x[..., 0] != 0
    if valid is not None:
        counted = counted & valid
    counted = counted.long()
    return torch.cumsum(counted, dim=1) * counted


class SinusoidalPositions(nn.Module):
    """Sinusoidal positions of a sequence (no parameters).

    The ``_float_tensor`` buffer exists only because the official checkpoint stores one (a dummy that
    fairseq used to know its device/dtype); it is loaded and never read.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("_float_tensor", torch.zeros(1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, D] -> [B, T, D] position embeddings (counted as in ``count_positions``)."""
        return sinusoid(count_positions(x, valid), self.dim)


def window_centres(q_len: torch.Tensor, k_len: torch.Tensor, t_max: int) -> torch.Tensor:
    """Window centre for each query frame: int(t / Tq · Tk), computed in float64. [B] x [B] -> [B, t_max]."""
    t = torch.arange(t_max, dtype=torch.float64, device=q_len.device)
    return torch.floor(t[None, :] / q_len[:, None].double() * k_len[:, None].double()).long()


def window_mask(q_len, k_len, width: float, t_q: int | None = None, t_k: int | None = None) -> torch.Tensor:
    """Which keys each query may see (App. B.1, official formula). True = visible.

    q_len, k_len: ints or [B] tensors (true lengths). For query t the centre is c = int(t/Tq·Tk), the
    half-width h = int(Tk·width)//2 and keys in [max(0, c-h), c+h) are visible. Query rows at or beyond
    Tq (padding) see everything (they are masked elsewhere). Returns [B, t_q, t_k] (t_q/t_k default to
    the largest lengths). Example: Tq = Tk = 10, width 0.4 -> h = 2, query 5 sees keys 3, 4, 5, 6.
    """
    q_len = torch.as_tensor(q_len).reshape(-1)
    k_len = torch.as_tensor(k_len).reshape(-1)
    t_q = int(q_len.max()) if t_q is None else t_q
    t_k = int(k_len.max()) if t_k is None else t_k
    centre = window_centres(q_len, k_len, t_q)  # [B, t_q]
    half = torch.floor(k_len.double() * width).long() // 2  # [B]
    lo = (centre - half[:, None]).clamp(min=0)
    hi = centre + half[:, None]
    n = torch.arange(t_k, device=centre.device)
    visible = (n[None, None, :] >= lo[..., None]) & (n[None, None, :] < hi[..., None])
    beyond = torch.arange(t_q, device=centre.device)[None, :] >= q_len[:, None]  # padded query rows
    return visible | beyond[..., None]


def guided_attention_weights(q_len, k_len, g: float, t_q: int | None = None, t_k: int | None = None) -> torch.Tensor:
    """Eq. 11: W[t, n] = 1 - exp(-(n/N - t/T)² / (2g²)), t, n counted from 0; N, T the true lengths.

    q_len, k_len: ints or [B] tensors. Returns [B, t_q, t_k]; cells beyond the lengths are 0.
    Example: T = N = 2, g = 0.5 -> W = [[0, 1-e^-0.5], [1-e^-0.5, 0]].
    """
    q_len = torch.as_tensor(q_len).reshape(-1)
    k_len = torch.as_tensor(k_len).reshape(-1)
    t_q = int(q_len.max()) if t_q is None else t_q
    t_k = int(k_len.max()) if t_k is None else t_k
    t = torch.arange(t_q, dtype=torch.float)[None, :, None] / q_len.float()[:, None, None]
    n = torch.arange(t_k, dtype=torch.float)[None, None, :] / k_len.float()[:, None, None]
    w = 1.0 - torch.exp(-((n - t) ** 2) / (2 * g * g))
    valid = (torch.arange(t_q)[None, :, None] < q_len[:, None, None]) \
        & (torch.arange(t_k)[None, None, :] < k_len[:, None, None])
    return w * valid


def guided_attention_loss(maps: list[torch.Tensor], q_len: torch.Tensor, k_len: torch.Tensor, g: float) -> torch.Tensor:
    """Eq. 10 for each layer, summed over the layers (official): per layer, the mean of Ā·W over the
    valid cells, Ā the attention averaged over heads.

    maps: list of [B, H, Tq, Tk] (one per guided layer); q_len, k_len: [B] true lengths. Returns a scalar.
    """
    total = maps[0].new_zeros(())
    cells = (q_len * k_len).sum().to(maps[0].dtype)
    for attn in maps:
        t_q, t_k = attn.shape[-2:]
        w = guided_attention_weights(q_len.cpu(), k_len.cpu(), g, t_q, t_k).to(attn)  # [B, Tq, Tk]
        total = total + (attn.mean(1) * w).sum() / cells
    return total


def attention_band_mass(attn: torch.Tensor, q_len: torch.Tensor, k_len: torch.Tensor, width: float) -> torch.Tensor:
    """Fraction of attention mass with |n/N - t/T| < width/2 (how diagonal a map is). attn: [B, Tq, Tk]."""
    b, t_q, t_k = attn.shape
    q_len, k_len = q_len.cpu(), k_len.cpu()
    t = torch.arange(t_q, dtype=torch.float)[None, :, None] / q_len.float()[:, None, None]
    n = torch.arange(t_k, dtype=torch.float)[None, None, :] / k_len.float()[:, None, None]
    band = ((n - t).abs() < width / 2).to(attn)
    valid_rows = (torch.arange(t_q)[None, :] < q_len[:, None]).to(attn)
    return (attn * band).sum() / (attn.sum(-1) * valid_rows).sum()


class CrossAttention(nn.Module):
    """Multi-head attention without biases (official: fairseq layout, ``in_proj_weight`` [3D, D])."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)

    def forward(self, query, key, key_pad: torch.Tensor, bias: torch.Tensor | None = None):
        """query [B, Tq, D], key (= value) [B, Tk, D], key_pad [B, Tk] bool (True = padding),
        bias [B, Tq, Tk] additive (window). Returns out [B, Tq, D] and weights [B, H, Tq, Tk]."""
        b, t_q, d = query.shape
        t_k = key.shape[1]
        q = F.linear(query, self.in_proj_weight[:d]) * self.scaling
        k, v = F.linear(key, self.in_proj_weight[d:]).chunk(2, dim=-1)
        q = q.reshape(b, t_q, self.heads, self.head_dim).transpose(1, 2)  # [B, H, Tq, hd]
        k = k.reshape(b, t_k, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t_k, self.heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-1, -2)  # [B, H, Tq, Tk]
        if bias is not None:
            logits = logits + bias[:, None]
        logits = logits.masked_fill(key_pad[:, None, None, :], float("-inf"))
        weights = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        out = F.dropout(weights, self.dropout, self.training) @ v  # [B, H, Tq, hd]
        out = out.transpose(1, 2).reshape(b, t_q, d)
        return self.out_proj(out), weights


class ConvFeedForward(nn.Module):
    """Conv1d(k) D -> mult·D, scaled by k^-1/2, exact GELU, Linear back to D."""

    def __init__(self, dim: int, mult: int, kernel: int, dropout: float):
        super().__init__()
        self.kernel, self.dropout = kernel, dropout
        self.ffn_1 = nn.Conv1d(dim, dim * mult, kernel, padding=kernel // 2)
        self.ffn_2 = nn.Linear(dim * mult, dim)

    def forward(self, x):  # [B, T, D] -> [B, T, D]
        x = self.ffn_1(x.transpose(1, 2)).transpose(1, 2)
        x = F.gelu(x * self.kernel**-0.5)
        x = F.dropout(x, self.dropout, self.training)
        return self.ffn_2(x)


class CrossFormerLayer(nn.Module):
    """Pre-LN cross-attention block: x + Attn(LN(x), key), then x + FFN(LN(x)). Only the query is normalised."""

    def __init__(self, dim: int, heads: int, dropout: float, attn_dropout: float, ffn_dropout: float,
                 ffn_kernel: int, ffn_mult: int, eps: float):
        super().__init__()
        self.dropout = dropout  # on each residual branch
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = ConvFeedForward(dim, ffn_mult, ffn_kernel, ffn_dropout)
        self.cross_attn = CrossAttention(dim, heads, attn_dropout)

    def forward(self, x, key, q_keep, key_pad, bias, explicit: bool):
        """x [B, Tq, D], key [B, Tk, D], q_keep [B, Tq, 1] float. Returns x and weights [B, H, Tq, Tk]."""
        h, weights = self.cross_attn(self.layer_norm1(x), key, key_pad, bias)
        x = (x + F.dropout(h, self.dropout, self.training)) * q_keep
        h = self.layer_norm2(x)
        if explicit:  # padded rows of LN(x) are not zero; keep them out of the FFN's convolution
            h = h * q_keep
        h = self.ffn(h)
        x = (x + F.dropout(h, self.dropout, self.training)) * q_keep
        return x, weights * q_keep[:, None]


class CrossFormer(nn.Module):
    """Stack of windowed cross-attention layers with learnably scaled sinusoidal positions.

    query [B, Tq, D] (pitch encoding in the predictor, rhythm stream in the aligner) attends to
    key = value [B, Tk, D] (content encoding).
    """

    def __init__(self, dim, heads, layers, window, dropout=0.1, attn_dropout=0.1, ffn_dropout=0.1,
                 ffn_kernel=9, ffn_mult=4, eps=1e-5):
        super().__init__()
        self.window, self.dropout = window, dropout  # dropout: after the positions and on residual branches
        self.pos_embed_alpha = nn.Parameter(torch.ones(1))
        self.embed_positions_1 = SinusoidalPositions(dim)  # query side
        self.embed_positions_2 = SinusoidalPositions(dim)  # key side
        self.layers = nn.ModuleList(
            CrossFormerLayer(dim, heads, dropout, attn_dropout, ffn_dropout, ffn_kernel, ffn_mult, eps)
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, query, key, query_mask=None, key_mask=None):
        """Returns (out [B, Tq, D], [weights [B, H, Tq, Tk] per layer]).

        query_mask / key_mask: [B, T] bool from lengths, or None for the official rule (padding =
        all-zero frame). Both must be given or neither.
        """
        explicit = query_mask is not None
        if explicit != (key_mask is not None):
            raise ValueError("give both query_mask and key_mask, or neither")
        b, t_q, _ = query.shape
        t_k = key.shape[1]
        if not explicit:  # official: padding = frames whose |x| sums to 0, found before positions are added
            query_mask = query.abs().sum(-1) != 0
            key_mask = key.abs().sum(-1) != 0
        q_keep = query_mask[..., None].to(query.dtype)
        x = query + self.pos_embed_alpha * self.embed_positions_1(query, query_mask if explicit else None)
        k = key + self.pos_embed_alpha * self.embed_positions_2(key, key_mask if explicit else None)
        x = F.dropout(x, self.dropout, self.training) * q_keep

        bias = None
        if self.window is not None:
            if explicit:
                q_len, k_len = query_mask.sum(1), key_mask.sum(1)
            else:  # official: the window follows the tensor lengths
                q_len = torch.full((b,), t_q, device=query.device)
                k_len = torch.full((b,), t_k, device=query.device)
            visible = window_mask(q_len, k_len, self.window, t_q, t_k)
            bias = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(~visible, WINDOW_FILL)

        maps = []
        for layer in self.layers:
            x, weights = layer(x, k, q_keep, ~key_mask, bias, explicit)
            maps.append(weights)
        return self.layer_norm(x) * q_keep, maps
