"""The AlignSTS acoustic model: content + speaker + target F0 -> singing mel.

    from alignsts_cli.model import load_model
    model = load_model("weights/alignsts")            # folder or .safetensors in our format
    out = model.infer(content, speaker, f0)           # out["mel"]: [B, T, 80]

Modules: config.py (every size and switch), alignsts.py (encoders, rhythm adaptor, aligner, fusion,
the rhythm curve of eq. 3), attention.py (windowed cross-attention, guided loss), vq.py (EMA codebook),
diffusion.py (4-step decoder, SSIM), hifigan.py (the vocoder network), checkpoint.py (our format, for
both models), foreign.py (the authors' checkpoints, TorchScript and jik876 vocoders).
"""
from alignsts_cli.model.alignsts import RRD_BETA, RRD_SIGMA, AlignSTS, f0_to_coarse, rhythm_curve, source_inputs
from alignsts_cli.model.checkpoint import load_model, save_model
from alignsts_cli.model.foreign import import_official
from alignsts_cli.model.config import AlignSTSConfig

__all__ = [
    "AlignSTS",
    "AlignSTSConfig",
    "f0_to_coarse",
    "import_official",
    "load_model",
    "rhythm_curve",
    "RRD_BETA",
    "RRD_SIGMA",
    "save_model",
    "source_inputs",
]
