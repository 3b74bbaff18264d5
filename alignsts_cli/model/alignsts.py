"""The AlignSTS acoustic model (paper §3, App. A/B), compatible with the official checkpoint.

Data flow (B batch, T mel frames, Tc content frames, T4 = T / 4 rhythm frames, D hidden = 256)::

    content [B, Tc, Dc] --content_encoder--> x_c [B, Tc, D]
    f0 [B, T] Hz --coarse bins--f0_encoder--> x_p [B, T, D]
    rhythm adaptor:
      training : mel --rhythm_curve (eq. 3)--rhythm_encoder--> [B, T4, D] --VQ--> codes (teacher forcing)
      inference: predictor(x_p attends to x_c, + speaker, 2 strided convs) -> logits [B, T4, 6] -> codebook
    rhythm stream: ×4 nearest, cut to T -> [B, T, D]
    aligner: rhythm stream attends to x_c (2 windowed layers) -> aligned content [B, T, D]
    condition = aligned + speaker + x_p -> diffusion decoder (4 steps) -> mel [B, T, M]
    (reference_mel voices also add: speech mel [B, Ts, M] --envelope, stretched to Tc--> attention @ it
     -> [B, T, M] --reference_encoder--> [B, T, D])

Official numerics are listed in docs/official-numerics.md; with a batch of one
and no lengths, ``infer`` computes what the official code computes. Passing lengths makes every mask
explicit: a padded batch then gives each item exactly what it would get alone.

Where paper and official code differ, the code wins (its values load the checkpoint):
windows 0.2/0.3 (paper 0.4/0.5), predictor conv kernel 5 (paper 3), no smoothing of the training
rhythm curve and β = 35 (paper: σ = 1, β = 400 in Fig. 2), condition without the rhythm stream (paper
§3.5 adds it; ``fuse_rhythm=True`` restores the paper), the predictor's attention trained with a guided
loss of g = 0.3 (the official code never passes g = 0.1 to it), guided losses summed over layers.
The ablations (no released weights depend on them) follow the paper's words: w/o RA stretches the
speech's rhythm curve linearly to T before the rhythm encoder, w/o CM stretches the content encoding
linearly and adds the rhythm stream (the authors' code resizes encoded features with nearest-neighbour
interpolation instead).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignsts_cli.model.attention import CrossFormer, guided_attention_loss, lengths_to_mask
from alignsts_cli.model.config import AlignSTSConfig
from alignsts_cli.model.diffusion import GaussianDiffusion, ssim
from alignsts_cli.model.vq import VQEmbeddingEMA

#: RRD metric settings (paper §4.1.3; official evaluation): rhythm_curve(mel, RRD_BETA, RRD_SIGMA).
RRD_BETA = 400.0
RRD_SIGMA = 1.5


# ---------------------------------------------------------------------------------------------
# Rhythm representation (eq. 3) and F0 bins
# ---------------------------------------------------------------------------------------------

def _gaussian_smooth(x: torch.Tensor, sigma: float, lengths: torch.Tensor) -> torch.Tensor:
    """1-D Gaussian filter along T of x [B, T] within each item's length, scipy-style
    ('reflect' = symmetric edges, kernel radius int(4σ + 0.5))."""
    radius = int(4 * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, t = x.shape
    out = torch.zeros_like(x)
    for i in range(b):
        n = int(lengths[i])
        if n == 0:
            continue
        idx = torch.arange(-radius, n + radius, device=x.device) % (2 * n)
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)  # ... c b a | a b c ... c | c b a ...
        padded = x[i, idx]
        out[i, :n] = F.conv1d(padded[None, None], kernel[None, None])[0, 0]
    return out


def rhythm_curve(mel, beta: float = 35.0, sigma: float | None = None, lengths=None, *,
                 log_base: float = 10.0, eps: float = 1e-8):
    """Rhythm representation r_t (eq. 3) of a log mel.

    e_t = ‖base**mel_t‖₂ (energy of the linear-magnitude mel frame), then per utterance
    r_t = sigmoid(β·(e_t - mean(e)) / (std(e) + eps)) (std with Bessel's correction and eps 1e-8, as
    the official data code), then an optional Gaussian smoothing of σ frames (scipy's gaussian_filter1d:
    reflected edges, radius int(4σ + 0.5)). Training (official): β = 35, no smoothing. The RRD metric:
    β = 400, σ = 1.5 (``RRD_BETA``, ``RRD_SIGMA``). ``log_base`` undoes the mel's log (10 for the
    official profile; the authors' data code applies exp() to its log10 mels, i.e. log_base=e).

    mel: [T, M] or [B, T, M] (tensor or numpy array); lengths: [B] real frames (padding is left out of
    the statistics and set to 0). Returns [T] or [B, T], same kind as the input.
    """
    is_numpy = isinstance(mel, np.ndarray)
    x = torch.as_tensor(mel, dtype=torch.float32) if is_numpy else mel.float()
    single = x.dim() == 2
    if single:
        x = x[None]
    b, t, _ = x.shape
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device).reshape(-1)
    mask = lengths_to_mask(lengths, t).to(x.dtype)  # [B, T]
    energy = torch.linalg.vector_norm(torch.pow(log_base, x), dim=-1)  # [B, T]
    n = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (energy * mask).sum(1, keepdim=True) / n
    std = torch.sqrt((((energy - mean) * mask) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1))
    r = torch.sigmoid(beta * (energy - mean) / (std + eps)) * mask
    if sigma:
        r = _gaussian_smooth(r, sigma, lengths) * mask
    if single:
        r = r[0]
    return r.numpy() if is_numpy else r.to(mel.dtype)


def source_inputs(config: AlignSTSConfig, source_mel: torch.Tensor, source_lengths: torch.Tensor | None = None) -> dict:
    """The keyword arguments ``forward``/``infer`` take from the speech mel [B, Ts, M] (``source_lengths`` [B]
    for a padded batch): its rhythm curve for a model w/o rhythm adaptor, the mel itself for a reference_mel
    model; {} for the others (the official model)."""
    c = config
    kw = {}
    if c.reference_mel:
        kw.update(reference=source_mel, reference_lengths=source_lengths)
    if not c.use_rhythm_adaptor:
        r = rhythm_curve(source_mel, c.rhythm_beta, c.rhythm_sigma, source_lengths, log_base=c.mel_log_base)
        kw.update(source_rhythm=r, source_rhythm_lengths=source_lengths)
    return kw


def f0_to_coarse(f0: torch.Tensor, bins: int = 256, f0_min: float = 50.0, f0_max: float = 1100.0) -> torch.Tensor:
    """F0 in Hz [...] -> coarse bins [...] long in 1..bins-1 (official).

    m = 1127·ln(1 + f/700); voiced values map linearly from [m(f0_min), m(f0_max)] onto [1, bins-1],
    clipped; unvoiced (0 Hz) is bin 1; rounding is half-up ((v + 0.5) floored).
    """
    mel_min = 1127 * math.log(1 + f0_min / 700)
    mel_max = 1127 * math.log(1 + f0_max / 700)
    m = 1127 * (1 + f0.float() / 700).log()
    m = torch.where(m > 0, (m - mel_min) * (bins - 2) / (mel_max - mel_min) + 1, m)
    m = torch.where(m <= 1, torch.ones_like(m), m)
    m = torch.where(m > bins - 1, torch.full_like(m, bins - 1), m)
    return (m + 0.5).long()


def stretch_matrix(src_len: int, dst_len: int) -> torch.Tensor:
    """Linear interpolation as a matrix [dst_len, src_len] (half-pixel centres, edges clamped).

    ``stretch_matrix(S, D) @ x`` resamples a sequence x [S, ...] to D frames, like
    F.interpolate(mode='linear', align_corners=False). Rows sum to 1.
    """
    pos = ((torch.arange(dst_len, dtype=torch.float64) + 0.5) * src_len / dst_len - 0.5).clamp(0, src_len - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=src_len - 1)
    frac = (pos - lo).float()
    a = torch.zeros(dst_len, src_len)
    a[torch.arange(dst_len), lo] += 1 - frac
    a[torch.arange(dst_len), hi] += frac
    return a


def batch_stretch_matrix(src_lens: torch.Tensor, dst_lens: torch.Tensor, t_src: int, t_dst: int) -> torch.Tensor:
    """Per-item stretch matrices, zero-padded: [B, t_dst, t_src]."""
    out = torch.zeros(len(src_lens), t_dst, t_src)
    for i, (s, d) in enumerate(zip(src_lens.tolist(), dst_lens.tolist())):
        out[i, :d, :s] = stretch_matrix(s, d)
    return out


def lifter_matrix(n: int, keep: int) -> torch.Tensor:
    """[n, n] projection that keeps the first ``keep`` coefficients of an orthonormal DCT-II along the
    last axis: ``x @ lifter_matrix(n, k)`` is the smooth envelope of each frame x [..., n] (cepstral liftering)."""
    k = torch.arange(n, dtype=torch.float64)
    dct = torch.cos(math.pi / n * (k[None] + 0.5) * k[:, None]) * math.sqrt(2 / n)  # [coef, bin]
    dct[0] /= math.sqrt(2)
    return (dct[:keep].T @ dct[:keep]).float()


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------

def conv_out_lengths(lengths: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


def group_norm(x: torch.Tensor, gn: nn.GroupNorm, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm of x [B, C, T] with statistics over the whole sequence (official) or, given mask
    [B, 1, T], over the real frames only."""
    if mask is None:
        return F.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    b, c, t = x.shape
    g = gn.num_groups
    xg = x.reshape(b, g, c // g, t)
    m = mask[:, None].to(x.dtype)  # [B, 1, 1, T]
    n = (m.sum(-1, keepdim=True) * (c // g)).clamp(min=1)
    mean = (xg * m).sum((2, 3), keepdim=True) / n
    var = (((xg - mean) * m) ** 2).sum((2, 3), keepdim=True) / n
    xg = (xg - mean) / torch.sqrt(var + gn.eps)
    return xg.reshape(b, c, t) * gn.weight[:, None] + gn.bias[:, None]


def conv_block(c_in: int, c_out: int, kernel: int, groups: int, stride: int = 1) -> nn.Sequential:
    """Conv1d -> GroupNorm -> ReLU (keys ``.0`` conv, ``.1`` norm)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2),
                         nn.GroupNorm(groups, c_out), nn.ReLU())


def run_conv_blocks(blocks: nn.ModuleList, x: torch.Tensor, lengths: torch.Tensor | None):
    """x [B, C, T] through conv blocks; with lengths, padded frames are zero going into every conv
    and left out of the norm statistics. Returns (x [B, D, T'], lengths' or None)."""
    for block in blocks:
        conv, gn, act = block
        mask = None
        if lengths is not None:
            x = x * lengths_to_mask(lengths, x.shape[-1])[:, None].to(x.dtype)
        x = conv(x)
        if lengths is not None:
            lengths = conv_out_lengths(lengths, conv)
            mask = lengths_to_mask(lengths, x.shape[-1])[:, None]
        x = act(group_norm(x, gn, mask))
        if mask is not None:
            x = x * mask.to(x.dtype)
    return x, lengths


class ConvEncoder(nn.Module):
    """n × (Conv1d -> GroupNorm -> ReLU): [B, C_in, T] -> [B, D, T / stride**n]."""

    def __init__(self, c_in: int, hidden: int, kernel: int, layers: int, groups: int, stride: int = 1):
        super().__init__()
        self.convolutions = nn.ModuleList(
            conv_block(c_in if i == 0 else hidden, hidden, kernel, groups, stride) for i in range(layers)
        )

    def forward(self, x, lengths=None):
        return run_conv_blocks(self.convolutions, x, lengths)


class PitchEncoder(nn.Module):
    """Coarse F0 [B, T] long -> embedding (300 rows) -> n × conv block -> [B, D, T]."""

    def __init__(self, rows: int, hidden: int, kernel: int, layers: int, groups: int):
        super().__init__()
        self.pitch_embed = nn.Embedding(rows, hidden)
        nn.init.normal_(self.pitch_embed.weight, 0.0, hidden**-0.5)
        self.convolutions = nn.ModuleList(conv_block(hidden, hidden, kernel, groups) for _ in range(layers))

    def forward(self, coarse, lengths=None):
        return run_conv_blocks(self.convolutions, self.pitch_embed(coarse).transpose(1, 2), lengths)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of [B, C, T]."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class RhythmPredictor(nn.Module):
    """Predicts rhythm code logits [B, T4, K] from the pitch [B, T, D] and content [B, Tc, D] encodings.

    Windowed cross-attention (query = pitch, key/value = content), + speaker, then n × (pad, strided
    Conv1d, ReLU, LayerNorm (eps 1e-12), Dropout) and a Linear to K logits: ceil(ceil(T/2)/2) frames.
    """

    def __init__(self, c: AlignSTSConfig):
        super().__init__()
        self.crossformer = CrossFormer(c.hidden, c.predictor_heads, c.predictor_layers, c.predictor_window,
                                       c.predictor_block_dropout, c.attn_dropout, c.ffn_dropout,
                                       c.ffn_kernel, c.ffn_mult, c.ln_eps)
        k = c.predictor_conv_kernel
        self.conv = nn.ModuleList(
            nn.Sequential(nn.ConstantPad1d(((k - 1) // 2, (k - 1) // 2), 0.0),
                          nn.Conv1d(c.hidden, c.hidden, k, stride=2), nn.ReLU(),
                          ChannelLayerNorm(c.hidden, eps=c.predictor_ln_eps), nn.Dropout(c.predictor_dropout))
            for _ in range(c.predictor_conv_layers)
        )
        self.linear = nn.Linear(c.hidden, c.vq_codes)

    def forward(self, x_p, x_c, speaker, lengths=None, content_lengths=None):
        """Returns logits [B, T4, K], attention maps (list of [B, H, T, Tc]) and T4 lengths (or None)."""
        masks = (None, None)
        if lengths is not None:
            masks = (lengths_to_mask(lengths, x_p.shape[1]), lengths_to_mask(content_lengths, x_c.shape[1]))
        x, maps = self.crossformer(x_p, x_c, *masks)
        x = (x + speaker[:, None, :]).transpose(1, 2)  # speaker added (1st time) -> [B, D, T]
        for block in self.conv:
            if lengths is not None:
                x = x * lengths_to_mask(lengths, x.shape[-1])[:, None].to(x.dtype)
            x = block(x)
            if lengths is not None:  # ConstantPad1d then an unpadded conv: ceil(L / 2) for k5 pad 2
                lengths = conv_out_lengths(lengths + sum(block[0].padding), block[1])
        if lengths is not None:
            x = x * lengths_to_mask(lengths, x.shape[-1])[:, None].to(x.dtype)
        return self.linear(x.transpose(1, 2)), maps, lengths


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class AlignSTS(nn.Module):
    """AlignSTS acoustic model. Module names follow the official checkpoint (268 state-dict keys).

    ``forward`` is the training step (returns the losses); ``infer`` converts. All modules exist in
    every configuration (ablations included), so any checkpoint loads into any ablation.
    """

    def __init__(self, config: AlignSTSConfig | None = None):
        super().__init__()
        c = self.config = config or AlignSTSConfig()
        self.content_encoder = ConvEncoder(c.content_dim, c.hidden, c.content_kernel, c.content_layers, c.norm_groups)
        self.f0_encoder = PitchEncoder(c.f0_embed_rows, c.hidden, c.pitch_kernel, c.pitch_layers, c.norm_groups)
        self.rhythm_encoder = ConvEncoder(1, c.hidden, c.rhythm_kernel, c.rhythm_layers, c.norm_groups, stride=2)
        self.rhythm_predictor = RhythmPredictor(c)
        self.rhythm_vqvae = VQEmbeddingEMA(c.vq_codes, c.hidden, c.vq_commitment, c.vq_decay, c.vq_eps, c.vq_data_init)
        self.crossformer = CrossFormer(c.hidden, c.aligner_heads, c.aligner_layers, c.aligner_window,
                                       c.aligner_dropout, c.attn_dropout, c.ffn_dropout,
                                       c.ffn_kernel, c.ffn_mult, c.ln_eps)
        self.diff_decoder = GaussianDiffusion(c.n_mels, c.hidden, c.diffusion_steps, c.beta_min, c.beta_max,
                                              c.denoiser_channels, c.denoiser_layers, c.denoiser_dilation_cycle)
        self.reference_encoder = None  # only reference_mel voices have it (the official checkpoint has none)
        if c.reference_mel:
            self.reference_encoder = ConvEncoder(c.n_mels, c.hidden, c.content_kernel, c.content_layers, c.norm_groups)
            self.register_buffer("lifter", lifter_matrix(c.n_mels, c.reference_lifter), persistent=False)

    # -- shared pieces ------------------------------------------------------------------------

    def _check_inputs(self, content, speaker, f0, lengths, content_lengths):
        """Raise ValueError on malformed inputs (a programming error of the caller, not a user error);
        returns the lengths as long tensors on f0's device."""
        c = self.config
        if content.dim() != 3 or content.shape[-1] != c.content_dim:
            raise ValueError(f"content features must be [B, T_c, {c.content_dim}] ({c.content_kind}); "
                                f"got {list(content.shape)}: extract the features this model was trained on")
        b = content.shape[0]
        if speaker.shape != (b, c.speaker_dim):
            raise ValueError(f"speaker embedding must be [B, {c.speaker_dim}]; got {list(speaker.shape)}")
        if f0.dim() != 2 or f0.shape[0] != b:
            raise ValueError(f"target F0 must be [B, T] in Hz; got {list(f0.shape)}")
        if (lengths is None) != (content_lengths is None):
            raise ValueError("pass both lengths and content_lengths (padded batch) or neither")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long, device=f0.device).reshape(-1)
            content_lengths = torch.as_tensor(content_lengths, dtype=torch.long, device=f0.device).reshape(-1)
            if len(lengths) != b or len(content_lengths) != b:
                raise ValueError(f"lengths and content_lengths need one entry per batch item ({b})")
            if int(lengths.min()) < 1 or int(lengths.max()) > f0.shape[1]:
                raise ValueError("lengths must lie between 1 and the padded number of frames")
            if int(content_lengths.min()) < 1 or int(content_lengths.max()) > content.shape[1]:
                raise ValueError("content_lengths must lie between 1 and the padded number of content frames")
        if f0.shape[1] < 1 or content.shape[1] < 1:
            raise ValueError("content and F0 must have at least one frame")
        return lengths, content_lengths

    def _encode(self, content, f0, lengths, content_lengths):
        c = self.config
        x_c, _ = self.content_encoder(content.transpose(1, 2), content_lengths)
        coarse = f0_to_coarse(f0, c.f0_bins, c.f0_min, c.f0_max)
        x_p, _ = self.f0_encoder(coarse, lengths)
        return x_c.transpose(1, 2), x_p.transpose(1, 2)  # [B, Tc, D], [B, T, D]

    def _stretched_rhythm(self, source_rhythm, source_lengths, t_len, lengths):
        """w/o RA: the speech's rhythm curve [B, Ts] stretched linearly to T and encoded -> [B, T4, D]."""
        if source_rhythm is None:
            raise ValueError("this model has no rhythm adaptor (use_rhythm_adaptor=False): pass "
                                "source_rhythm=rhythm_curve(speech_mel)")
        b, t_src = source_rhythm.shape
        src = source_lengths if source_lengths is not None else torch.full((b,), t_src, dtype=torch.long)
        dst = lengths if lengths is not None else torch.full((b,), t_len, dtype=torch.long)
        a = batch_stretch_matrix(src.cpu(), dst.cpu(), t_src, t_len).to(source_rhythm)
        r = (a @ source_rhythm[..., None])[..., 0]  # [B, T]
        x_r, _ = self.rhythm_encoder(r[:, None], lengths)
        return x_r.transpose(1, 2)

    def _upsample(self, x, t_len, lengths):
        """Rhythm frames [B, T4, ...] -> [B, T, ...]: nearest ×4, cut to T (padding zeroed)."""
        x = x.repeat_interleave(self.config.downsample, dim=1)[:, :t_len]
        if lengths is not None:
            m = lengths_to_mask(lengths, t_len)
            x = x * m.reshape(*m.shape, *([1] * (x.dim() - 2))).to(x.dtype)
        return x

    def _reference(self, reference, reference_lengths, attention, content_lengths, lengths):
        """reference_mel: the speech mel [B, Ts, M]'s envelope, stretched to the content frames and gathered
        onto the song's frames by the attention [B, T, Tc] -> (encoded [B, T, D], the base [B, T, M] of a
        reference_residual model, else None)."""
        if reference is None:
            raise ValueError("this voice takes the speech's own mel (reference_mel=True): pass reference=speech_mel")
        b, t_src, m = reference.shape
        t_c = attention.shape[-1]
        src = reference_lengths if reference_lengths is not None else torch.full((b,), t_src, dtype=torch.long)
        dst = content_lengths if content_lengths is not None else torch.full((b,), t_c, dtype=torch.long)
        stretch = batch_stretch_matrix(src.cpu(), dst.cpu(), t_src, t_c).to(reference)
        envelope = stretch @ (reference @ self.lifter)  # [B, Tc, M]
        gathered = attention @ envelope  # [B, T, M]
        x_r, _ = self.reference_encoder(gathered.transpose(1, 2), lengths)
        base = None
        if self.config.reference_residual:  # hard gather: the most attended speech frame, not a blur of several
            pick = attention.argmax(-1)  # [B, T]
            base = envelope.gather(1, pick[..., None].expand(-1, -1, m))
            if lengths is not None:
                base = base * lengths_to_mask(lengths, base.shape[1])[..., None].to(base.dtype)
        return x_r.transpose(1, 2), base

    def _fuse(self, rhythm, x_c, x_p, speaker, lengths, content_lengths, reference=None, reference_lengths=None):
        """Cross-modal alignment and fusion. Returns condition [B, T, D], mask [B, T] float,
        attention [B, T, Tc], the per-layer maps and the base mel [B, T, M] the decoder's output is added to
        (reference_residual models; else None)."""
        c = self.config
        b, t_len, _ = rhythm.shape
        if c.use_cross_modal_alignment:
            masks = (None, None)
            if lengths is not None:
                masks = (lengths_to_mask(lengths, t_len), lengths_to_mask(content_lengths, x_c.shape[1]))
            aligned, maps = self.crossformer(rhythm, x_c, *masks)
            attention = maps[-1].mean(1)  # last layer, mean over heads (paper App. B.3)
        else:  # w/o CM: content stretched linearly to T; the "attention" is the interpolation matrix
            src = content_lengths if content_lengths is not None else torch.full((b,), x_c.shape[1])
            dst = lengths if lengths is not None else torch.full((b,), t_len)
            attention = batch_stretch_matrix(src.cpu(), dst.cpu(), x_c.shape[1], t_len).to(x_c)
            aligned, maps = attention @ x_c, []
        cond = aligned + speaker[:, None, :]  # speaker added (2nd time)
        if c.use_f0_skip:
            cond = cond + x_p
        if c.fuse_rhythm or not c.use_cross_modal_alignment:
            cond = cond + rhythm
        base = None
        if c.reference_mel:
            x_r, base = self._reference(reference, reference_lengths, attention, content_lengths, lengths)
            cond = cond + x_r
        if lengths is not None:
            mask = lengths_to_mask(lengths, t_len).to(cond.dtype)
        else:  # official: the mask comes from the aligner's output (zero rows = padding)
            mask = (aligned.abs().sum(-1) != 0).to(cond.dtype)
        return cond * mask[..., None], mask, attention, maps, base

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def infer(self, content, speaker, f0, noise=None, *, lengths=None, content_lengths=None,
              source_rhythm=None, source_rhythm_lengths=None, reference=None, reference_lengths=None,
              generator=None) -> dict:
        """Convert: content [B, Tc, Dc], speaker [B, 256], target F0 [B, T] Hz (0 = unvoiced) -> mel.

        noise: optional [steps+1, B, 1, M, T] diffusion draws in the official order (x_T, then steps
        3, 2, 1, 0). lengths / content_lengths: [B] real frames of a padded batch (masks are built from
        them; leave both None for unpadded input, which reproduces the official computation).
        source_rhythm [B, Ts] (rhythm_curve of the speech mel) is needed only without the rhythm adaptor;
        reference [B, Ts, M] (the speech mel, with reference_lengths for a padded batch) only by reference_mel voices.
        Runs in eval mode (dropout off) whatever the module's mode.

        Returns a dict: mel [B, T, M] (log10; padded frames 0 when lengths are given), condition
        [B, T, D] (the decoder input), rhythm_codes [B, T] (predicted codes at frame rate; None without
        the adaptor), rhythm_logits [B, T4, K], attention [B, T, Tc] (aligner, last layer, mean over
        heads), attention_layers (list of [B, H, T, Tc]), predictor_attention [B, T, Tc], mask [B, T].
        """
        c = self.config
        lengths, content_lengths = self._check_inputs(content, speaker, f0, lengths, content_lengths)
        b, t_len = f0.shape
        want = (c.diffusion_steps + 1, b, 1, c.n_mels, t_len)
        if noise is not None and tuple(noise.shape) != want:
            raise ValueError(f"noise must be {list(want)} (x_T, then one draw per step); got {list(noise.shape)}")
        was_training = self.training
        self.eval()
        try:
            x_c, x_p = self._encode(content, f0, lengths, content_lengths)
            codes = logits = pred_attn = None
            if c.use_rhythm_adaptor:
                logits, pred_maps, _ = self.rhythm_predictor(x_p, x_c, speaker, lengths, content_lengths)
                codes = logits.argmax(-1)  # [B, T4]
                rhythm = self.rhythm_vqvae.lookup(codes)  # [B, T4, D]
                pred_attn = pred_maps[-1].mean(1)
            else:
                rhythm = self._stretched_rhythm(source_rhythm, source_rhythm_lengths, t_len, lengths)
            rhythm = self._upsample(rhythm, t_len, lengths)
            cond, mask, attention, maps, base = self._fuse(rhythm, x_c, x_p, speaker, lengths, content_lengths,
                                                           reference, reference_lengths)
            dmask = mask[:, None] if lengths is not None else None
            mel = self.diff_decoder.sample(cond.transpose(1, 2), noise, dmask, generator)[:, 0].transpose(1, 2)
            if base is not None:  # the decoder drew the residual
                mel = mel + base
            if lengths is not None:
                mel = mel * mask[..., None]
            return {
                "mel": mel,
                "condition": cond,
                "rhythm_codes": None if codes is None else self._upsample(codes, t_len, lengths),
                "rhythm_codes_coarse": codes,
                "rhythm_logits": logits,
                "attention": attention,
                "attention_layers": maps,
                "predictor_attention": pred_attn,
                "mask": mask,
            }
        finally:
            self.train(was_training)

    # -- training -----------------------------------------------------------------------------

    def forward(self, mel, content, speaker, f0, *, lengths=None, content_lengths=None, source_rhythm=None,
                source_rhythm_lengths=None, reference=None, reference_lengths=None, t=None, noise=None) -> dict:
        """One training step's losses (teacher forcing with the true singing rhythm).

        mel: target singing mel [B, T, M] (log10); content [B, Tc, Dc]; speaker [B, D]; f0 [B, T] Hz;
        lengths / content_lengths: [B] real frames (give them for padded batches); t: [B] diffusion
        steps (default uniform in 0..steps); noise: [B, 1, M, T] (default N(0, I)); source_rhythm and
        reference as for ``infer``.

        Returns {"losses": {l1, ssim, vq, rhythm_ce, guided_attn, guided_attn_predictor, total},
        "mel_pred" [B, T, M] (x̂0), "attention" [B, T, Tc], "attention_layers", "predictor_attention",
        "rhythm_codes" [B, T4] (VQ indices = the predictor's targets), "rhythm_logits" [B, T4, K],
        "perplexity"}. Loss terms are unweighted; ``total`` applies the config's weights.
        """
        c = self.config
        lengths, content_lengths = self._check_inputs(content, speaker, f0, lengths, content_lengths)
        b, t_len, n_mels = mel.shape
        if n_mels != c.n_mels or mel.shape[0] != content.shape[0]:
            raise ValueError(f"the target mel must be [B, T, {c.n_mels}]; got {list(mel.shape)}")
        if f0.shape[1] != t_len:
            raise ValueError(f"F0 has {f0.shape[1]} frames but the mel has {t_len}; align them first")
        zero = mel.new_zeros(())
        full_t = lengths if lengths is not None else torch.full((b,), t_len, dtype=torch.long, device=mel.device)
        full_c = content_lengths if content_lengths is not None else \
            torch.full((b,), content.shape[1], dtype=torch.long, device=mel.device)

        x_c, x_p = self._encode(content, f0, lengths, content_lengths)
        vq_loss = ce = pred_guided = zero
        codes = logits = pred_attn = perplexity = None
        if c.use_rhythm_adaptor:
            curve = rhythm_curve(mel, c.rhythm_beta, c.rhythm_sigma, full_t, log_base=c.mel_log_base)  # [B, T]
            x_r, r_len = self.rhythm_encoder(curve[:, None], lengths)  # [B, D, T4]
            x_r = x_r.transpose(1, 2)
            code_mask = lengths_to_mask(r_len, x_r.shape[1]) if lengths is not None else None
            rhythm, vq_loss, codes, perplexity = self.rhythm_vqvae(x_r, code_mask)
            logits, pred_maps, _ = self.rhythm_predictor(x_p, x_c, speaker, lengths, content_lengths)
            ce_all = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")  # [B, T4]
            if code_mask is None:
                ce = ce_all.mean()
            else:
                ce = (ce_all * code_mask).sum() / code_mask.sum()
            pred_guided = guided_attention_loss(pred_maps, full_t, full_c, c.predictor_guided_g)
            pred_attn = pred_maps[-1].mean(1)
        else:
            rhythm = self._stretched_rhythm(source_rhythm, source_rhythm_lengths, t_len, lengths)
        rhythm = self._upsample(rhythm, t_len, lengths)
        cond, mask, attention, maps, base = self._fuse(rhythm, x_c, x_p, speaker, lengths, content_lengths,
                                                       reference, reference_lengths)
        guided = guided_attention_loss(maps, full_t, full_c, c.aligner_guided_g) if maps else zero

        # diffusion decoder: predict x0 from x_t at a random step (x0 = what the song adds to the base)
        x0 = (mel if base is None else mel - base).transpose(1, 2)[:, None]  # [B, 1, M, T]
        dec = self.diff_decoder
        if t is None:
            t = torch.randint(0, c.diffusion_steps + 1, (b,), device=mel.device)
        if noise is None:
            noise = torch.randn_like(x0)
        keep = mask[:, None, None, :]  # [B, 1, 1, T]; official: x_t and x̂0 are multiplied by the condition's mask
        x_t = dec.q_sample(x0, t, noise) * keep
        dmask = mask[:, None] if lengths is not None else None
        pred = (dec.denoise_fn(x_t, t, cond.transpose(1, 2), dmask) * keep)[:, 0].transpose(1, 2)  # [B, T, M]
        if base is not None:
            pred = pred + base
        valid = lengths_to_mask(full_t, t_len)
        w = valid[..., None].to(mel.dtype)
        l1 = ((pred - mel).abs() * w).sum() / (w.sum() * mel.shape[-1])
        ssim_loss = 1 - ssim(pred + c.ssim_offset, mel + c.ssim_offset, valid)

        total = (c.l1_weight * l1 + c.ssim_weight * ssim_loss + c.vq_weight * vq_loss + c.rhythm_ce_weight * ce
                 + c.guided_attn_weight * guided + c.predictor_guided_attn_weight * pred_guided)
        return {
            "losses": {"l1": l1, "ssim": ssim_loss, "vq": vq_loss, "rhythm_ce": ce, "guided_attn": guided,
                       "guided_attn_predictor": pred_guided, "total": total},
            "mel_pred": pred * w,
            "attention": attention,
            "attention_layers": maps,
            "predictor_attention": pred_attn,
            "rhythm_codes": codes,
            "rhythm_logits": logits,
            "perplexity": perplexity,
        }
