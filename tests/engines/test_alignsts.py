"""The neural engine (alignsts_cli/engines/alignsts.py) on tiny random voices: chunks, batches, precision, devices."""

import numpy as np
import pytest
import torch

from conftest import EXAMPLES, tiny_voice, write_midi

SPEECH = EXAMPLES / "speech.wav"


def _engine(tmp_path, content_kind="mfcc", content_dim=20, **config):
    from alignsts_cli.engines.alignsts import NeuralEngine
    from alignsts_cli.voices import VoiceModel

    voice = tiny_voice(tmp_path / "voice", content_kind=content_kind, content_dim=content_dim, **config)
    return NeuralEngine(VoiceModel(voice / "acoustic", voice / "vocoder", "test"), device="cpu")


def test_long_melody_is_converted_in_chunks(tmp_path):
    from alignsts_cli.audio import load_speech
    from alignsts_cli.engines import alignsts as neural
    from alignsts_cli.analysis import analyse_speech
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


@pytest.mark.parametrize("ablation", [{"use_rhythm_adaptor": False}, {"use_cross_modal_alignment": False},
                                      {"use_f0_skip": False}, {"reference_mel": True},
                                      {"reference_mel": True, "reference_residual": True}], ids=lambda a: "+".join(a))
def test_ablated_voices_sing(tmp_path, ablation):
    """Voices trained as the paper's ablations convert too (w/o RA follows the speech's own rhythm), and so does
    a voice that takes the speech's own mel (reference_mel), or sings on it (reference_residual)."""
    from alignsts_cli.audio import load_speech
    from alignsts_cli.analysis import analyse_speech
    from alignsts_cli.melody import load_midi

    engine = _engine(tmp_path, **ablation)
    melody = load_midi(write_midi(tmp_path / "m.mid", [(0, 1, 48), (1, 1, 52)]))
    audio, sr = load_speech(SPEECH)
    res = engine.sing(audio, sr, melody, analyse_speech(audio, sr))
    assert len(res.audio) == round(melody.duration * res.sample_rate) and np.all(np.isfinite(res.audio))


@pytest.mark.parametrize("reference", [False, True, "residual"], ids=["mfcc", "reference-mel", "residual"])
def test_batched_chunks_match_one_by_one(tmp_path, reference):
    """The padded, length-masked batch path (used on CUDA) gives what one-at-a-time gives."""
    from alignsts_cli.engines.alignsts import ChunkInput

    engine = _engine(tmp_path, reference_mel=bool(reference), reference_residual=reference == "residual")
    rng = np.random.default_rng(0)
    spk = rng.standard_normal(256).astype(np.float32)
    spk /= np.linalg.norm(spk)
    items = []
    for t, tc in ((120, 40), (90, 33)):
        f0 = np.where(np.arange(t) % 30 < 25, 220.0, 0.0).astype(np.float32)
        noise = torch.randn(5, 1, 1, 80, t, generator=torch.Generator().manual_seed(t))
        speech = (rng.standard_normal((2 * tc + 3, 80)) - 5).astype(np.float32) if reference else None
        items.append(ChunkInput(rng.standard_normal((tc, 20)).astype(np.float32), f0, noise, None, 0, speech, spk))
    together = engine._acoustic(items)
    alone = [engine._acoustic([it])[0] for it in items]
    for a, b in zip(together, alone):
        assert a.mel.shape == b.mel.shape
        assert np.max(np.abs(a.mel - b.mel)) < 1e-3


def test_songs_batched_together_match_alone(tmp_path):
    """batch on CUDA puts the chunks of several songs in one acoustic call: same songs as one by one."""
    from alignsts_cli.audio import load_speech
    from alignsts_cli.analysis import analyse_speech
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
    from alignsts_cli.audio import load_speech
    from alignsts_cli.engines.alignsts import NeuralEngine
    from alignsts_cli.runtime import cpu_has_bf16
    from alignsts_cli.voices import VoiceModel
    from alignsts_cli.analysis import analyse_speech
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
    from alignsts_cli.engines.alignsts import NeuralEngine
    from alignsts_cli.voices import VoiceModel
    from alignsts_cli.audio import load_speech
    from alignsts_cli.analysis import analyse_speech
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


def test_envelope_correction_moves_the_song_to_the_speech_envelope():
    """Above the F0 region the song's average envelope becomes the speech's (shape only, within the limit)."""
    from alignsts_cli.timbre import LOW_HZ, average_envelope, envelope_correction, mel_band_hz

    rng = np.random.default_rng(0)
    hz = mel_band_hz(80, 0.0, 8000.0)
    speech_shape = 0.6 * np.sin(np.arange(80) / 9.0)  # a smooth resonance pattern, ln units
    song = rng.normal(-4.0, 0.3, (200, 80))
    speech = rng.normal(-4.0, 0.3, (300, 80)) + speech_shape
    voiced_song, voiced_speech = np.ones(200, bool), np.ones(300, bool)
    s_env, g_env = average_envelope(speech, voiced_speech, np.e), average_envelope(song, voiced_song, np.e)
    fixed = song + envelope_correction(s_env, g_env, hz, np.e)[None]
    after = average_envelope(fixed, voiced_song, np.e) - s_env
    before = g_env - s_env
    high = hz > 2 * LOW_HZ
    assert np.std(after[high]) < 0.35 * np.std(before[high])  # the shape now follows the speech
    assert abs(fixed.mean() - song.mean()) < 0.05  # the song's level stays its own
    assert np.allclose(envelope_correction(s_env, g_env, hz, np.e)[hz < LOW_HZ / 2], 0.0)


def test_timbre_restoration_brings_an_unseen_voice_closer(tmp_path, speech):
    """The bundled voice never heard espeak-ng: restoring the speech's envelope moves the song's speaker
    embedding toward the input's."""
    from alignsts_cli.audio import load_speech
    from alignsts_cli.analysis import analyse_speech
    from alignsts_cli.engines.alignsts import NeuralEngine
    from alignsts_cli.melody import load_midi
    from alignsts_cli.voices import locate

    melody = load_midi(EXAMPLES / "melody.mid")
    audio, sr = load_speech(speech)
    analysis = analyse_speech(audio, sr)
    sims = {}
    for mode in ("model", "restore"):
        engine = NeuralEngine(locate(None), "cpu", timbre=mode)
        res = engine.sing(audio, sr, melody, analysis, seed=0)
        assert len(res.audio) == round(melody.duration * res.sample_rate)
        sims[mode] = float(engine.features.speaker(audio, sr) @ engine.features.speaker(res.audio, res.sample_rate))
    print(f"speaker similarity to the espeak-ng input: {sims}")
    assert sims["restore"] > sims["model"]  # measured 0.496 against 0.488 here; +0.06 on the real devset


def test_phone_content_voice_sings(tmp_path):
    """A voice trained on the phone posteriorgram (content kind "phones") runs with the bundled recogniser."""
    from alignsts_cli.audio import load_speech
    from alignsts_cli.analysis import analyse_speech
    from alignsts_cli.melody import load_midi

    engine = _engine(tmp_path, content_kind="phones", content_dim=41)
    assert engine.features.kind == "phones"
    melody = load_midi(write_midi(tmp_path / "m.mid", [(0, 1, 48), (1, 1, 52)]))
    audio, sr = load_speech(SPEECH)
    res = engine.sing(audio, sr, melody, analyse_speech(audio, sr))
    assert len(res.audio) == round(melody.duration * res.sample_rate) and np.all(np.isfinite(res.audio))
