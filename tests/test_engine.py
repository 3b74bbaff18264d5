"""The neural engine end to end: tiny random models published on a loopback Hub, fetched with
verification, then `convert` and `batch` as a user runs them (issue 4)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub  # noqa: F401  (imported before any test sets HF_HUB_OFFLINE)
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import EXAMPLES, write_midi
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


def tiny_voice(folder: Path, content_kind="wav2vec2-ctc-logits", content_dim=32, **config) -> Path:
    from alignsts_cli.model import AlignSTS, AlignSTSConfig, save_model
    from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig, save_vocoder

    torch.manual_seed(0)
    cfg = AlignSTSConfig(content_kind=content_kind, content_dim=content_dim, aligner_layers=1, denoiser_layers=2,
                         denoiser_channels=32, ffn_mult=1, **config)
    save_model(AlignSTS(cfg), folder / "acoustic")
    voc = HiFiGANConfig(upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    save_vocoder(HiFiGAN(voc), folder / "vocoder")
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

    # Before any download: the neural engine says what to run; auto falls back to psola with a notice.
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out, "--engine", "alignsts")
    assert proc.returncode == 1 and "alignsts download-weights" in proc.stderr and not out.exists()
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out)
    assert proc.returncode == 0 and "psola engine" in proc.stdout and "note: using the psola engine" in proc.stderr
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
    proc = run(env_off, "convert", SPEECH, "-m", melody, "-o", out, "--device", "cpu", "--plot", tmp_path / "p.png")
    assert proc.returncode == 0, proc.stderr
    assert "AlignSTS engine" in proc.stderr + proc.stdout
    x, sr = sf.read(out)
    assert sr == 24000 and abs(len(x) / sr - 2.0) < 0.02
    assert np.all(np.isfinite(x)) and np.abs(x).max() > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert sum(hub.downloads.values()) == before

    # Same seed, same song; another seed, another song.
    out2, out3 = tmp_path / "again.wav", tmp_path / "seed7.wav"
    assert run(env_off, "convert", SPEECH, "-m", melody, "-o", out2).returncode == 0
    assert run(env_off, "convert", SPEECH, "-m", melody, "-o", out3, "--seed", "7").returncode == 0
    assert np.array_equal(sf.read(out2)[0], x)
    assert not np.array_equal(sf.read(out3)[0], x)

    # batch reuses the loaded models for every file.
    folder = tmp_path / "takes"
    folder.mkdir()
    for stem, notes in (("a", [(0, 2, 48)]), ("b", [(0, 1, 50), (1, 3, 53)])):
        (folder / f"{stem}.wav").write_bytes(SPEECH.read_bytes())
        write_midi(folder / f"{stem}.mid", notes)
    proc = run(env_off, "batch", folder, "-o", tmp_path / "sung")
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


def _engine(tmp_path, content_kind="mfcc", content_dim=20, **config):
    from alignsts_cli.engines.alignsts import NeuralEngine, VoiceModel

    voice = tiny_voice(tmp_path / "voice", content_kind=content_kind, content_dim=content_dim, **config)
    return NeuralEngine(VoiceModel(voice / "acoustic", voice / "vocoder", "test"), device="cpu")


def test_long_melody_is_converted_in_chunks(tmp_path):
    from alignsts_cli.api import load_speech
    from alignsts_cli.engines import alignsts as neural
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.melody import load_midi

    engine = _engine(tmp_path)
    # 24 phrases of 3 notes and a rest: 48 s at 120 bpm.
    notes = [(4 * k + j, 1, 48 + (k + j) % 5) for k in range(24) for j in range(3)]
    melody = load_midi(write_midi(tmp_path / "long.mid", notes))
    audio, sr = load_speech(SPEECH)
    analysis = analyse_speech(audio, sr)
    chunks = neural.plan_chunks(melody, analysis.syllables, len(audio) / sr)
    assert len(chunks) >= 3
    assert chunks[0].t0 == 0 and chunks[-1].t1 == melody.duration
    for a, b in zip(chunks[:-1], chunks[1:]):
        assert a.t1 == b.t0 and a.s1 == b.s0 and a.t1 - a.t0 <= neural.MAX_CHUNK_SECONDS
        # every cut lies in a rest of the melody
        assert melody.f0_at(np.array([a.t1]))[0] == 0
    res = engine.sing(audio, sr, melody, analysis, seed=1)
    assert len(res.audio) == round(melody.duration * res.sample_rate)
    assert res.mel.shape[0] == engine._frames(melody.duration)
    quiet = res.audio[int(3.1 * sr):int(3.9 * sr)]  # a rest between the first two phrases
    assert np.all(np.isfinite(res.audio))
    assert quiet.size


@pytest.mark.parametrize("ablation", ["use_rhythm_adaptor", "use_cross_modal_alignment", "use_f0_skip"])
def test_ablated_voices_sing(tmp_path, ablation):
    """Voices trained as the paper's ablations convert too (w/o RA follows the speech's own rhythm)."""
    from alignsts_cli.api import load_speech
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.melody import load_midi

    engine = _engine(tmp_path, **{ablation: False})
    melody = load_midi(write_midi(tmp_path / "m.mid", [(0, 1, 48), (1, 1, 52)]))
    audio, sr = load_speech(SPEECH)
    res = engine.sing(audio, sr, melody, analyse_speech(audio, sr))
    assert len(res.audio) == round(melody.duration * res.sample_rate) and np.all(np.isfinite(res.audio))


def test_batched_chunks_match_one_by_one(tmp_path):
    """The padded, length-masked batch path (used on CUDA) gives what one-at-a-time gives."""
    engine = _engine(tmp_path)
    rng = np.random.default_rng(0)
    spk = rng.standard_normal(256).astype(np.float32)
    spk /= np.linalg.norm(spk)
    items = []
    for t, tc in ((120, 40), (90, 33)):
        f0 = np.where(np.arange(t) % 30 < 25, 220.0, 0.0).astype(np.float32)
        noise = torch.randn(5, 1, 1, 80, t, generator=torch.Generator().manual_seed(t))
        items.append((rng.standard_normal((tc, 20)).astype(np.float32), f0, noise, None, 0, None, spk))
    together = engine._acoustic(items)
    alone = [engine._acoustic([it])[0] for it in items]
    for a, b in zip(together, alone):
        assert a["mel"].shape == b["mel"].shape
        assert np.max(np.abs(a["mel"] - b["mel"])) < 1e-3


def test_songs_batched_together_match_alone(tmp_path):
    """batch on CUDA puts the chunks of several songs in one acoustic call: same songs as one by one."""
    from alignsts_cli.api import load_speech
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.melody import load_midi

    engine = _engine(tmp_path)
    audio, sr = load_speech(SPEECH)
    analysis = analyse_speech(audio, sr)
    jobs = [(audio, sr, load_midi(write_midi(tmp_path / f"{k}.mid", notes)), analysis, k)
            for k, notes in enumerate(([(0, 2, 48)], [(0, 1, 50), (1, 2, 53)], [(0, 3, 47)]))]
    alone = [engine.sing(*job[:4], seed=job[4]).audio for job in jobs]
    engine.batch_size = 4
    together = [r.audio for r in engine.sing_many(jobs)]
    for a, b in zip(alone, together):
        assert a.shape == b.shape and np.max(np.abs(a - b)) < 2e-3


def test_precision_float32_and_bf16_vocoder(tmp_path):
    """--precision auto runs the vocoder in bfloat16 only on CPUs with native bf16; the acoustic model stays
    float32 either way, and float32 gives the exact float32 audio."""
    from alignsts_cli.api import load_speech
    from alignsts_cli.engines.alignsts import NeuralEngine, VoiceModel, cpu_has_bf16
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.errors import AlignSTSError
    from alignsts_cli.melody import load_midi

    voice = tiny_voice(tmp_path / "voice", content_kind="mfcc", content_dim=20)
    vm = VoiceModel(voice / "acoustic", voice / "vocoder", "test")
    melody = load_midi(write_midi(tmp_path / "m.mid", [(0, 2, 48), (2, 2, 52)]))
    audio, sr = load_speech(SPEECH)
    analysis = analyse_speech(audio, sr)
    exact = NeuralEngine(vm, "cpu", precision="float32")
    auto = NeuralEngine(vm, "cpu", precision="auto")
    assert not exact.vocoder_bf16 and auto.vocoder_bf16 == cpu_has_bf16()
    a = exact.sing(audio, sr, melody, analysis, seed=3)
    b = auto.sing(audio, sr, melody, analysis, seed=3)
    assert np.array_equal(a.mel, b.mel)
    if auto.vocoder_bf16:
        err = np.sqrt(np.mean((a.audio - b.audio) ** 2) / np.mean(a.audio ** 2))
        assert 0 < err < 0.2
    else:
        assert np.array_equal(a.audio, b.audio)
    with pytest.raises(AlignSTSError, match="--precision"):
        NeuralEngine(vm, "cpu", precision="half")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: CPU/CUDA agreement not run")
def test_cuda_matches_cpu(tmp_path):
    from alignsts_cli.engines.alignsts import NeuralEngine, VoiceModel
    from alignsts_cli.api import load_speech
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.melody import load_midi

    voice = tiny_voice(tmp_path / "voice", content_kind="mfcc", content_dim=20)
    melody = load_midi(write_midi(tmp_path / "m.mid", [(0, 2, 48), (2, 2, 52)]))
    audio, sr = load_speech(SPEECH)
    analysis = analyse_speech(audio, sr)
    outs = []
    for device in ("cpu", "cuda"):
        eng = NeuralEngine(VoiceModel(voice / "acoustic", voice / "vocoder", "test"), device=device)
        outs.append(eng.sing(audio, sr, melody, analysis, seed=3).mel)
    assert np.max(np.abs(outs[0] - outs[1])) < 0.05  # half precision on CUDA


def test_import_official_archive_then_convert(published, tmp_path):
    """The authors' released layout (zip of checkpoints/alignsts + checkpoints/hifigan, pickles) is
    imported once into safetensors, becomes the default engine, and sings at 24 kHz."""
    import zipfile

    from test_checkpoint import fake_official_state, write_official
    from test_vocoder import _fake_official_ckpt

    hub, lock = published
    layout = [tuple(k) for k in json.loads((DATA / "official_alignsts_keys.json").read_text())["keys"]]
    tree = tmp_path / "release"
    write_official(tree / "checkpoints" / "alignsts" / "model_ckpt_steps_200000.ckpt", fake_official_state(layout))
    _fake_official_ckpt(tree / "checkpoints" / "hifigan")
    archive = tmp_path / "AlignSTS-release.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tree))
    env = _env(tmp_path, hub, lock)
    proc = run(env, "import-checkpoint", archive)
    assert proc.returncode == 0, proc.stderr
    assert "can run code" in proc.stderr
    dest = tmp_path / "home" / "models" / "official"
    assert sorted(p.name for p in (dest / "acoustic").iterdir()) == ["config.json", "model.safetensors"]
    assert "already imported" in run(env, "import-checkpoint", archive).stderr

    assert run(env, "download-weights").returncode == 0  # the wav2vec2 content model
    melody = write_midi(tmp_path / "m.mid", [(0, 1, 50), (1, 1, 53)])
    out = tmp_path / "official.wav"
    proc = run(env, "convert", SPEECH, "-m", melody, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout and "note:" not in proc.stderr
    x, sr = sf.read(out)
    assert sr == 24000 and abs(len(x) / sr - 1.0) < 0.02 and np.all(np.isfinite(x))
