"""The acoustic model's configuration: every size and switch, defaults = the official AlignSTS values.

The config travels with the weights (``config.json`` beside ``model.safetensors``), so a checkpoint
rebuilds its own model. Where the paper and the authors' code disagree, the defaults follow the code,
because only those values load the official checkpoint; the paper's value is noted beside each.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.profiles import BUILTIN_PROFILES, PROFILES

#: Audio profiles the model may be trained for: name -> (mel bins, base of the mel's logarithm), read from
#: the shipped profiles (the model only needs n_mels, and the log base to undo the log for the rhythm curve).
KNOWN_PROFILES = {name: (PROFILES[name].n_mels, PROFILES[name].log_base) for name in BUILTIN_PROFILES}


@dataclass
class AlignSTSConfig:
    # --- data -------------------------------------------------------------------------------
    audio_profile: str = "official-24k"
    n_mels: int = 80
    mel_log_base: float | None = None  # None: the profile's (10 for official-24k, e for compact-16k)
    content_dim: int = 32  # wav2vec2-base-960h CTC logits
    content_kind: str = "wav2vec2-ctc-logits"  # what the content features are (recorded, not used)
    speaker_dim: int = 256  # Resemblyzer; added to the hidden stream without projection

    # --- encoders ---------------------------------------------------------------------------
    hidden: int = 256
    norm_groups: int = 16  # GroupNorm groups in every encoder block
    content_kernel: int = 3
    content_layers: int = 2
    pitch_kernel: int = 5
    pitch_layers: int = 3
    f0_bins: int = 256  # coarse F0 values 1..f0_bins-1 (1 = unvoiced)
    f0_embed_rows: int = 300  # rows of the pitch embedding table (official: 300 > f0_bins)
    f0_min: float = 50.0
    f0_max: float = 1100.0
    rhythm_kernel: int = 7
    rhythm_layers: int = 2  # each layer has stride 2: the rhythm stream runs at T / 2**layers

    # --- rhythm representation (eq. 3) --------------------------------------------------------
    rhythm_beta: float = 35.0  # official training value (the RRD metric uses 400)
    rhythm_sigma: float | None = None  # Gaussian smoothing in frames; official training: none (paper: 1.0)

    # --- rhythm adaptor -----------------------------------------------------------------------
    vq_codes: int = 6
    vq_decay: float = 0.999
    vq_eps: float = 1e-5
    vq_commitment: float = 0.25
    vq_data_init: bool = False  # training only: seed an untouched codebook from data (see vq.py); official: off
    predictor_heads: int = 1
    predictor_layers: int = 1
    predictor_window: float | None = 0.3  # paper's table: 0.5
    predictor_guided_g: float = 0.3  # official: the g=0.1 setting never reaches the predictor
    predictor_conv_kernel: int = 5  # paper's table: 3
    predictor_conv_layers: int = 2  # stride 2 each; must equal rhythm_layers
    predictor_dropout: float = 0.8  # in the strided conv stack
    predictor_block_dropout: float = 0.0  # attention block: after positions / on residuals (official 0)
    predictor_ln_eps: float = 1e-12

    # --- cross-modal aligner (also the predictor's attention block) -----------------------------
    aligner_heads: int = 2
    aligner_layers: int = 2
    aligner_window: float | None = 0.2  # paper's table: 0.4; None = no window
    aligner_guided_g: float = 0.1
    aligner_dropout: float = 0.1  # after positions / on residual branches
    attn_dropout: float = 0.1  # on attention weights (both attention blocks)
    ffn_dropout: float = 0.1  # inside the conv feed-forward (both attention blocks)
    ffn_kernel: int = 9
    ffn_mult: int = 4
    ln_eps: float = 1e-5

    # --- diffusion decoder (ProDiff teacher) --------------------------------------------------
    diffusion_steps: int = 4  # reverse steps at inference; the schedule has steps + 1 entries
    diffusion_schedule: str = "vpsde"
    beta_min: float = 0.1
    beta_max: float = 40.0
    denoiser_layers: int = 20
    denoiser_channels: int = 256
    denoiser_dilation_cycle: int = 4

    # --- losses -------------------------------------------------------------------------------
    l1_weight: float = 0.5
    ssim_weight: float = 0.5
    ssim_offset: float = 6.0  # added to both mels before SSIM so the "image" is non-negative
    vq_weight: float = 1.0  # on top of vq_commitment, which the VQ loss already includes
    rhythm_ce_weight: float = 0.1
    guided_attn_weight: float = 40.0  # aligner
    predictor_guided_attn_weight: float = 40.0  # predictor's one attention layer (g = predictor_guided_g)

    # --- ablations (paper, Table 2) -----------------------------------------------------------
    use_rhythm_adaptor: bool = True  # False: "w/o RA", the speech's own rhythm stretched to T
    use_cross_modal_alignment: bool = True  # False: "w/o CM", content stretched to T, no attention
    use_f0_skip: bool = True  # False: "w/o F0", no pitch encoding in the decoder condition
    fuse_rhythm: bool = False  # paper §3.5 adds the rhythm stream to the condition; official code does not

    # --- timbre from the input (not in the paper) ---------------------------------------------
    # reference_mel: the decoder is also conditioned on the speech's own spectral envelope, frame by frame,
    # gathered onto the song's frames by the aligner's attention (model.alignsts.AlignSTS._reference), so the
    # voice and the consonants' spectra come from the input rather than from the speaker embedding alone.
    reference_mel: bool = False
    reference_lifter: int = 20  # cepstral coefficients kept of each speech mel frame (its envelope, not its harmonics)
    # reference_residual (with reference_mel): the decoder no longer sings the whole mel but what the song adds
    # to the speech's envelope: its output is that envelope, each song frame taking the one speech frame the
    # aligner attends to most (a hard gather, so a burst stays a burst), plus the diffused residual
    # (AlignSTS._reference): the voice and the consonants pass through instead of being re-drawn from memory.
    reference_residual: bool = False

    extra: dict = field(default_factory=dict)  # free-form notes (training data, source checkpoint, ...)

    def __post_init__(self):
        if self.mel_log_base is None:
            self.mel_log_base = KNOWN_PROFILES.get(self.audio_profile, (0, 10.0))[1]
        problems = []
        if self.n_mels <= 0 or self.content_dim <= 0 or self.hidden <= 0:
            problems.append("n_mels, content_dim and hidden must be positive")
        if self.hidden % self.norm_groups:
            problems.append(f"hidden ({self.hidden}) must be divisible by norm_groups ({self.norm_groups})")
        for name in ("aligner_heads", "predictor_heads"):
            if self.hidden % getattr(self, name):
                problems.append(f"hidden ({self.hidden}) must be divisible by {name}")
        if self.speaker_dim != self.hidden:
            problems.append(f"speaker_dim ({self.speaker_dim}) must equal hidden ({self.hidden}): "
                            "the speaker embedding is added without projection")
        if self.rhythm_layers != self.predictor_conv_layers:
            problems.append("rhythm_layers and predictor_conv_layers must be equal (both downsample by 2 per layer)")
        if self.diffusion_schedule != "vpsde":
            problems.append(f"diffusion_schedule {self.diffusion_schedule!r}: only 'vpsde' is implemented")
        if self.diffusion_steps < 1 or self.denoiser_layers < 1:
            problems.append("diffusion_steps and denoiser_layers must be at least 1")
        if self.f0_bins > self.f0_embed_rows:
            problems.append("f0_embed_rows must be at least f0_bins")
        if self.audio_profile in KNOWN_PROFILES and KNOWN_PROFILES[self.audio_profile][0] != self.n_mels:
            want = KNOWN_PROFILES[self.audio_profile][0]
            problems.append(f"profile {self.audio_profile} has {want} mels, not {self.n_mels}")
        if self.reference_mel and not 1 <= self.reference_lifter <= self.n_mels:
            problems.append(f"reference_lifter must lie between 1 and n_mels ({self.n_mels})")
        if self.reference_residual and not (self.reference_mel and self.use_cross_modal_alignment):
            problems.append("reference_residual needs reference_mel and the cross-modal aligner (its attention "
                            "picks the speech frames)")
        if self.mel_log_base <= 1:
            problems.append("mel_log_base must be greater than 1")
        if problems:
            raise AlignSTSError("invalid AlignSTS config: " + "; ".join(problems))

    @property
    def downsample(self) -> int:
        """How many mel frames one rhythm code covers (4 for the official model)."""
        return 2**self.rhythm_layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "AlignSTSConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AlignSTSError(
                f"the model config has unknown fields {unknown}; it was written by a newer alignsts: upgrade alignsts"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "AlignSTSConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlignSTSError(f"the model config is not valid JSON ({exc}); re-export the checkpoint") from None
        if not isinstance(data, dict):
            raise AlignSTSError("the model config must be a JSON object; re-export the checkpoint")
        return cls.from_dict(data)

    def replace(self, **changes) -> "AlignSTSConfig":
        return dataclasses.replace(self, **changes)
