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
