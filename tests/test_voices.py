"""Voice models (alignsts_cli/voices.py) end to end: tiny random models published on a loopback Hub, fetched
with verification, then `convert` and `batch` as a user runs them; the authors' archive imported as a voice."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import EXAMPLES, fake_official_hifigan, fake_official_state, tiny_voice, write_midi, write_official
from hub_server import FakeHub

SPEECH = EXAMPLES / "speech.wav"
DATA = Path(__file__).parent / "data"


def tiny_wav2vec2(folder: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2)
    Wav2Vec2ForCTC(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def _files(folder: Path, prefix="") -> dict:
    return {prefix + str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _lock(entries) -> str:
    out = []
    for name, repo, commit, files in entries:
        rows = ", ".join(f'{{ name = "{n}", sha256 = "{hashlib.sha256(b).hexdigest()}", size = {len(b)} }}'
                         for n, b in files.items())
        out += ["[[component]]", f'name = "{name}"', f'repo = "{repo}"', f'revision = "{commit}"', f"files = [{rows}]", ""]
    return "\n".join(out)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A Hub stand-in serving a tiny wav2vec2 and a tiny voice, and a weights.lock pinning them."""
    root = tmp_path_factory.mktemp("hub")
    hub = FakeHub().start()
    content = _files(tiny_wav2vec2(root / "w2v"))
    voice_dir = tiny_voice(root / "voice")
    acoustic = _files(voice_dir / "acoustic", "acoustic/")
    vocoder = _files(voice_dir / "vocoder", "vocoder/")
    c1 = hub.publish("test/content", content)
    c2 = hub.publish("test/voice", {**acoustic, **vocoder})
    lock = root / "weights.lock"
    lock.write_text(_lock([("content", "test/content", c1, content), ("acoustic", "test/voice", c2, acoustic),
                           ("vocoder", "test/voice", c2, vocoder)]))
    yield hub, lock
    hub.stop()


def _env(tmp_path, hub, lock, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ALIGNSTS_DEBUG", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), ALIGNSTS_HOME=str(tmp_path / "home"),
               ALIGNSTS_WEIGHTS_LOCK=str(lock), **extra)
    return env


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "alignsts_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_download_then_convert_and_batch(published, tmp_path):
    hub, lock = published
    env = _env(tmp_path, hub, lock)
    melody = write_midi(tmp_path / "m.mid", [(0, 1, 48), (1, 1, 50), (2, 2, 52)])  # 2 s at 120 bpm
    out = tmp_path / "out.wav"

    # Before any download: the neural engine says what to run; auto is psola, which needs no weights.
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out, "--engine", "alignsts")
    assert proc.returncode == 1 and "alignsts download-weights" in proc.stderr and not out.exists()
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out)
    assert proc.returncode == 0 and "psola engine" in proc.stdout and not proc.stderr
    out.unlink()

    proc = run(env, "download-weights")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("present") == 3

    # A corrupted cache file is caught before use, and download-weights repairs it.
    blob = next(p for p in (tmp_path / "hf" / "hub").rglob("blobs/*") if p.stat().st_size > 100_000)
    blob.write_bytes(b"x" * blob.stat().st_size)
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out, "--engine", "alignsts")
    assert proc.returncode == 1 and "corrupt" in proc.stderr
    assert run(env, "download-weights").returncode == 0

    # Offline, from the cache only: the Hub is not asked (its counters do not move).
    before = sum(hub.downloads.values())
    env_off = dict(env, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    proc = run(env_off, "convert", SPEECH, "-m", melody, "-o", out, "--engine", "alignsts", "--device", "cpu",
               "--plot", tmp_path / "p.png")
    assert proc.returncode == 0, proc.stderr
    assert "AlignSTS engine" in proc.stderr + proc.stdout
    x, sr = sf.read(out)
    assert sr == 24000 and abs(len(x) / sr - 2.0) < 0.02
    assert np.all(np.isfinite(x)) and np.abs(x).max() > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert sum(hub.downloads.values()) == before

    # Same seed, same song; another seed, another song.
    out2, out3 = tmp_path / "again.wav", tmp_path / "seed7.wav"
    assert run(env_off, "convert", SPEECH, "-m", melody, "-o", out2, "--engine", "alignsts").returncode == 0
    assert run(env_off, "convert", SPEECH, "-m", melody, "-o", out3, "--seed", "7", "--engine", "alignsts").returncode == 0
    assert np.array_equal(sf.read(out2)[0], x)
    assert not np.array_equal(sf.read(out3)[0], x)

    # batch reuses the loaded models for every file.
    folder = tmp_path / "takes"
    folder.mkdir()
    for stem, notes in (("a", [(0, 2, 48)]), ("b", [(0, 1, 50), (1, 3, 53)])):
        (folder / f"{stem}.wav").write_bytes(SPEECH.read_bytes())
        write_midi(folder / f"{stem}.mid", notes)
    proc = run(env_off, "batch", folder, "-o", tmp_path / "sung", "--engine", "alignsts")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stem, seconds in (("a", 1.0), ("b", 2.0)):
        y, sr = sf.read(tmp_path / "sung" / f"{stem}.wav")
        assert abs(len(y) / sr - seconds) < 0.02

    # Offline with an empty cache: the right message.
    env_empty = dict(env_off, HF_HOME=str(tmp_path / "empty"))
    proc = run(env_empty, "download-weights")
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr
    proc = run(env_empty, "convert", SPEECH, "-m", melody, "-o", tmp_path / "n.wav", "--engine", "alignsts")
    assert proc.returncode == 1 and "download-weights" in proc.stderr


def test_import_official_archive_then_convert(published, tmp_path):
    """The authors' released layout (zip of checkpoints/alignsts + checkpoints/hifigan, pickles) is
    imported once into safetensors, becomes the default engine, and sings at 24 kHz."""
    import zipfile

    hub, lock = published
    layout = [tuple(k) for k in json.loads((DATA / "official_alignsts_keys.json").read_text())["keys"]]
    tree = tmp_path / "release"
    write_official(tree / "checkpoints" / "alignsts" / "model_ckpt_steps_200000.ckpt", fake_official_state(layout))
    fake_official_hifigan(tree / "checkpoints" / "hifigan")
    archive = tmp_path / "AlignSTS-release.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tree))
    env = _env(tmp_path, hub, lock)
    proc = run(env, "import-checkpoint", archive)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the pickles are read under the weights-only rules: no warning to give
    dest = tmp_path / "home" / "models" / "official"
    assert sorted(p.name for p in (dest / "acoustic").iterdir()) == ["config.json", "model.safetensors"]
    assert "already imported" in run(env, "import-checkpoint", archive).stderr

    assert run(env, "download-weights").returncode == 0  # the wav2vec2 content model
    melody = write_midi(tmp_path / "m.mid", [(0, 1, 50), (1, 1, 53)])
    out = tmp_path / "official.wav"
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out, "--engine", "alignsts")
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout and "note:" not in proc.stderr
    x, sr = sf.read(out)
    assert sr == 24000 and abs(len(x) / sr - 1.0) < 0.02 and np.all(np.isfinite(x))
