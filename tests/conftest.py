"""Inputs the tests build themselves: synthetic voice-like audio, MIDI files, espeak-ng speech."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def vowel(f0: float, seconds: float, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    """A vowel-like tone: 20 harmonics of ``f0`` under two formant bumps, ``[n]`` float32."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for k in range(1, 21):
        fk = k * f0
        if fk >= sr / 2:
            break
        gain = np.exp(-(((fk - 700) / 300) ** 2)) + 0.5 * np.exp(-(((fk - 1200) / 400) ** 2)) + 0.05
        x += gain * np.sin(2 * np.pi * fk * t)
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def write_midi(path: Path, notes, *, tempos=((0, 500000),), tpb: int = 480, channel: int = 0, name="Melody",
               extra_tracks=()):
    """Write a type-1 MIDI file. ``notes``: (start_beat, beats, pitch); ``tempos``: (tick, µs per beat)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)
    conductor = mido.MidiTrack()
    last = 0
    for tick, tempo in tempos:
        conductor.append(mido.MetaMessage("set_tempo", tempo=tempo, time=tick - last))
        last = tick
    mid.tracks.append(conductor)
    mid.tracks.append(_track(notes, tpb, channel, name))
    for name, ch, tr_notes in extra_tracks:
        mid.tracks.append(_track(tr_notes, tpb, ch, name))
    mid.save(str(path))
    return path


def _track(notes, tpb, channel, name):
    events = []
    for start, beats, pitch in notes:
        events.append((round(start * tpb), 1, pitch))
        events.append((round((start + beats) * tpb), 0, pitch))
    events.sort(key=lambda e: (e[0], e[1]))
    trk = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
    now = 0
    for tick, on, pitch in events:
        kind = "note_on" if on else "note_off"
        trk.append(mido.Message(kind, channel=channel, note=pitch, velocity=90 if on else 0, time=tick - now))
        now = tick
    return trk


def espeak(path: Path, text: str, voice: str = "en-us", speed: int = 150) -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is not installed; `bash .ci/run` installs it (apt-get install espeak-ng)")
    subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


@pytest.fixture
def speech(tmp_path) -> Path:
    """A spoken English sentence from espeak-ng (22.05 kHz mono)."""
    return espeak(tmp_path / "speech.wav", "The quick brown fox jumps over the lazy dog near the river bank.")


@pytest.fixture
def tone_file(tmp_path) -> Path:
    path = tmp_path / "tone.wav"
    sf.write(path, vowel(220.0, 1.0), 16000)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on shared, busy cores two spinning threads run several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_voice(folder: Path, content_kind="wav2vec2-ctc-logits", content_dim=32, **config) -> Path:
    """A voice folder (acoustic/ + vocoder/) with tiny random models, for tests of the neural path."""
    import torch

    from alignsts_cli.model import AlignSTS, AlignSTSConfig, save_model
    from alignsts_cli.model.checkpoint import save_vocoder
    from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    cfg = AlignSTSConfig(content_kind=content_kind, content_dim=content_dim, aligner_layers=1, denoiser_layers=2,
                         denoiser_channels=32, ffn_mult=1, **config)
    save_model(AlignSTS(cfg), folder / "acoustic")
    voc = HiFiGANConfig(upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    save_vocoder(HiFiGAN(voc), folder / "vocoder")
    return folder


def fake_official_hifigan(folder: Path, seed: int = 0) -> Path:
    """A folder with a random NSF-HiFiGAN checkpoint in the authors' layout (and an older, empty one)."""
    import json

    import torch

    keys = json.loads((Path(__file__).parent / "data" / "official_hifigan_keys.json").read_text())["keys"]
    g = torch.Generator().manual_seed(seed)
    gen = {}
    for key, shape in keys:
        t = torch.randn(shape, generator=g) * 0.05
        gen[key] = t.abs() + 0.5 if key.endswith("weight_g") else t
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model_gen": gen}, "global_step": 200000}, folder / "model_ckpt_steps_200000.ckpt")
    torch.save({"state_dict": {"model_gen": {}}}, folder / "model_ckpt_steps_1000.ckpt")  # older; must be skipped
    return folder


def tiny_config(**changes):
    """A small AlignSTSConfig (toy profile, 16 mels, hidden 32) that runs in a moment on 2 CPU threads."""
    from alignsts_cli.model import AlignSTSConfig

    base = dict(audio_profile="toy", n_mels=16, content_dim=8, hidden=32, speaker_dim=32, norm_groups=4,
                denoiser_layers=3, denoiser_channels=32, ffn_mult=2)
    base.update(changes)
    return AlignSTSConfig(**base)


def model_inputs(cfg, t=40, tc=12, seed=0):
    """(content [1, tc, D], speaker [1, S] unit norm, F0 [1, t] Hz, noise [steps+1, 1, 1, M, t]) for ``cfg``."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    content = torch.randn(1, tc, cfg.content_dim, generator=g)
    speaker = F.normalize(torch.randn(1, cfg.speaker_dim, generator=g), dim=-1)
    f0 = 150 + 200 * torch.rand(1, t, generator=g)
    noise = torch.randn(cfg.diffusion_steps + 1, 1, 1, cfg.n_mels, t, generator=g)
    return content, speaker, f0, noise


def fake_official_state(layout, seed=0) -> dict:
    """Random tensors with the official key names and shapes; the schedule buffers get their real
    values (random ones would overflow the sampler)."""
    import torch

    from alignsts_cli.model.diffusion import schedule

    g = torch.Generator().manual_seed(seed)
    sched = schedule(next(shape for key, shape, _ in layout if key == "diff_decoder.betas")[0] - 1)
    state = {}
    for key, shape, _ in layout:
        name = key.rsplit(".", 1)[-1]
        if key.startswith("diff_decoder.") and name in sched:
            state[key] = torch.tensor(sched[name], dtype=torch.float32)
        elif name in ("timesteps", "timescale"):
            state[key] = torch.tensor(4.0 if name == "timesteps" else 1.0)
        elif name == "ema_count":
            state[key] = torch.rand(shape, generator=g) * 100 + 1
        elif name == "embedding":
            state[key] = torch.randn(shape, generator=g)
        elif name == "weight" and len(shape) == 1:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)  # GroupNorm / LayerNorm gains
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


def write_official(path: Path, state: dict, flat: bool = False, step: int = 200000) -> Path:
    """A legacy (non-zip) torch.save like the authors' Lightning-style checkpoint."""
    import torch

    sd = {f"model.{k}": v for k, v in state.items()} if flat else {"model": state}
    # The best validation loss as the authors' trainer keeps it, a numpy float: read under the weights-only rules.
    ckpt = {"epoch": 3, "global_step": step, "checkpoint_callback_best": np.float64(0.1), "optimizer_states": [{}],
            "state_dict": sd}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path
