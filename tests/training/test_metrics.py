"""The objective measures (docs/audio-and-metrics.md) against values worked out by hand."""
import math

import numpy as np
import pytest

from alignsts_cli.training import metrics as M
from conftest import vowel
from alignsts_cli.training.metrics import raw_chroma_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000


def bursts(on: float, off: float, seconds: float, f0: float = 220.0, start: float = 0.0) -> np.ndarray:
    """A vowel switched on for ``on`` s and off for ``off`` s, from ``start`` s on: ``[seconds·SR]``."""
    x = vowel(f0, seconds, SR)
    t = np.arange(len(x)) / SR - start
    gate = (t >= 0) & (np.mod(t, on + off) < on)
    return (x * gate).astype(np.float32)


# ------------------------------------------------------------------------------------------ LSD

def test_lsd_identical_is_zero_and_noise_is_not():
    x = bursts(0.3, 0.2, 2.0)
    assert M.lsd(x, x, SR) == 0.0
    rng = np.random.default_rng(0)
    noisy = x + 0.05 * rng.standard_normal(len(x)).astype(np.float32)
    d = M.lsd(x, noisy, SR)
    assert d > 1.0
    assert M.lsd(noisy, x, SR) == pytest.approx(d)  # symmetric
    # The longer signal is cut to the shorter: a tail of anything changes nothing.
    assert M.lsd(x, np.concatenate([noisy, rng.standard_normal(4000)]), SR) == pytest.approx(d)


def test_lsd_of_one_sinusoid_against_silence_by_hand():
    """A sine exactly on bin k under a periodic Hann window of N = 512 has |X| = A·N/4 on bin k,
    A·N/8 on bins k ± 1 and 0 elsewhere, so each frame fully inside the signal is at distance
    sqrt(ln((0.1 + A·N/4) / 0.1)² + 2·ln((0.1 + A·N/8) / 0.1)²) from silence."""
    a, k, n = 0.5, 32, 512  # bin 32 = 1000 Hz at 16 kHz
    x = (a * np.sin(2 * np.pi * k * SR / n * np.arange(SR) / SR)).astype(np.float64)
    frames = M.lsd_frames(np.zeros_like(x), x, SR)
    inner = frames[2:len(x) // M.LSD_HOP - 2]  # frame t covers samples t·128 - 256 ... t·128 + 256
    want = math.sqrt(math.log((0.1 + a * n / 4) / 0.1) ** 2 + 2 * math.log((0.1 + a * n / 8) / 0.1) ** 2)
    assert inner == pytest.approx(np.full(len(inner), want), rel=1e-6)
    assert M.lsd(np.zeros_like(x), x, SR) == pytest.approx(np.mean(frames))


def test_lsd_ignores_bins_at_or_below_100_hz():
    """A hum on bin 2 (62.5 Hz) spreads over bins 1-3 (31-94 Hz), all dropped: no distance inside."""
    x = bursts(0.3, 0.2, 1.0).astype(np.float64)
    hum = 0.3 * np.sin(2 * np.pi * 62.5 * np.arange(len(x)) / SR)
    inner = M.lsd_frames(x, x + hum, SR)[2:-3]
    assert np.max(inner) < 1e-6
    buzz = 0.3 * np.sin(2 * np.pi * 125.0 * np.arange(len(x)) / SR)  # bin 4: kept
    assert np.min(M.lsd_frames(x, x + buzz, SR)[2:-3]) > 1.0


# ------------------------------------------------------------------------------------------ RCA

def test_rca_identical_octave_and_semitone():
    x = bursts(0.3, 0.1, 1.6, f0=220.0)
    assert M.rca(x, x, SR) == 1.0
    assert M.rca(x, bursts(0.3, 0.1, 1.6, f0=440.0), SR) == 1.0  # octave errors are forgiven
    assert M.rca(x, bursts(0.3, 0.1, 1.6, f0=220.0 * 2 ** (1 / 12)), SR) == 0.0  # a semitone off
    # Steady tones (no voicing edges): 40 cents off is within the tolerance, 60 cents is not.
    tone = vowel(220.0, 1.0, SR)
    assert M.rca(tone, vowel(220.0 * 2 ** (40 / 1200), 1.0, SR), SR) == 1.0
    assert M.rca(tone, vowel(220.0 * 2 ** (60 / 1200), 1.0, SR), SR) == 0.0


def test_rca_counts_reference_frames_the_output_leaves_unvoiced():
    x = bursts(1.0, 0.0, 1.0)
    half = x.copy()
    half[SR // 2:] = 0
    assert M.rca(x, half, SR) == pytest.approx(0.5, abs=0.03)
    assert M.rca(np.zeros(SR, np.float32), x, SR) == 0.0  # no voiced reference: 0, as mir_eval


def test_raw_chroma_accuracy_tolerance_is_strict_like_mir_eval():
    ref = np.full(4, 220.0)
    assert M.raw_chroma_accuracy(ref, ref * 2 ** (49.9 / 1200)) == 1.0
    assert M.raw_chroma_accuracy(ref, ref * 2 ** (50.1 / 1200)) == 0.0
    assert M.raw_chroma_accuracy(ref, ref * 2 ** (1160 / 1200)) == 1.0  # 40 cents below the octave
    assert M.raw_chroma_accuracy(ref, ref * 2 ** (600 / 1200)) == 0.0  # a tritone is as far as it gets
    with pytest.raises(ValueError):
        M.raw_chroma_accuracy(np.zeros(3), ref)


# ------------------------------------------------------------------------------------------ RRD

def test_rhythm_curve_is_near_binary_with_beta_400():
    x = bursts(0.3, 0.2, 2.0)
    r = M.rhythm(x, "compact-16k")  # 100 frames/s
    assert len(r) == len(x) // 160
    t = np.arange(len(r)) * 0.01 + 0.005
    phase = np.mod(t, 0.5)
    on, off = (phase > 0.05) & (phase < 0.25), (phase > 0.35) & (phase < 0.45)
    assert np.all(r[on] > 0.95) and np.all(r[off] < 0.05)


def test_rrd_identical_zero_shifted_and_rearranged_not():
    x = bursts(0.3, 0.2, 3.0)
    assert M.rrd(x, x, SR) == 0.0
    # 50 ms later: each of the 12 on/off edges in 3 s disagrees on ~5 of 300 frames, so
    # RMS ≈ sqrt(12·5/300) ≈ 0.45 (a little less: the smoothed edges overlap).
    late = bursts(0.3, 0.2, 3.0, start=0.05)
    d = M.rrd(x, late, SR)
    assert 0.3 < d < 0.5
    assert M.rrd(x, late, SR, reduction="l2") == pytest.approx(d * math.sqrt(len(x) // 160), rel=1e-6)
    # Same sound, another rhythm (long notes, short rests).
    assert M.rrd(x, bursts(0.45, 0.05, 3.0), SR) > 0.3
    # Loudness alone is not rhythm: the curve is normalised per utterance.
    assert M.rrd(x, 0.3 * x, SR) < 1e-3
    with pytest.raises(ValueError):
        M.rrd(x, x, 22050)


# ------------------------------------------------------------------------------------------ speaker

@pytest.fixture(scope="module")
def enc():
    return M.speaker_encoder()


def test_speaker_similarity(enc):
    a = bursts(0.25, 0.1, 2.0, f0=120.0)
    b = vowel(300.0, 2.0, SR) * np.sin(np.linspace(0, 40, 2 * SR)) ** 2
    assert M.speaker_similarity(a, a, SR, enc) == pytest.approx(1.0, abs=1e-5)
    other = M.speaker_similarity(a, b, SR, enc)
    assert -1.0 <= other < 0.99
    # Same audio at another rate: the encoder resamples, the score stays (almost) 1.
    import librosa

    a22 = librosa.resample(a, orig_sr=SR, target_sr=22050)
    assert M.speaker_similarity(a, a22, SR, enc, output_sr=22050) > 0.99
    assert M.speaker_similarity(a, np.zeros(SR, np.float32), SR, enc) == 0.0


def test_score_gives_all_four(enc):
    x = bursts(0.3, 0.2, 1.5)
    s = M.score(x, x, SR, "compact-16k", speech=x, speech_sr=SR, encoder=enc)
    assert s["lsd"] == 0.0 and s["rca"] == 1.0 and s["rrd"] == 0.0
    assert s["speaker_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert M.score(x, x, SR)["speaker_similarity"] is None


def test_metric_raw_chroma_accuracy():
    ref = np.array([220.0, 220, 220, 0, 220])
    assert raw_chroma_accuracy(ref, ref) == 1.0
    assert raw_chroma_accuracy(ref, ref * 2) == 1.0  # octave errors are forgiven
    assert raw_chroma_accuracy(ref, ref * 2 ** (1 / 12)) == 0.0  # a semitone off
    assert raw_chroma_accuracy(ref, np.array([220.0, 0, 226, 220, 220])) == 0.75  # unvoiced counts as wrong


# ------------------------------------------------------------------------------------------ melody accuracy

def sung(melody, sr: int = SR, cents: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """A vowel that follows ``melody``'s contour exactly, ``cents`` off, silent on its rests."""
    n = int(round((melody.duration if seconds is None else seconds) * sr))
    t = np.arange(n) / sr
    f0 = melody.f0_at(t) * 2 ** (cents / 1200)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.exp(-(((k * f0 - 700) / 400) ** 2) + 0.05) * np.sin(k * phase) for k in range(1, 15))
    return (0.3 * x * (f0 > 0) / 3).astype(np.float32)


@pytest.fixture(scope="module")
def tune():
    from alignsts_cli.melody import Melody, Note, render_notes

    notes = [Note(0.2, 0.7, 57), Note(0.7, 1.2, 60), Note(1.4, 2.2, 62), Note(2.2, 3.0, 55)]
    return Melody(f0=render_notes(notes), notes=notes)


def test_a_voice_on_the_notes_scores_one_and_a_semitone_off_zero(tune):
    on = M.melody_accuracy(sung(tune), SR, tune)
    assert on["raw_pitch_accuracy"] > 0.97 and on["raw_chroma_accuracy"] > 0.97 and on["voiced_cover"] > 0.97
    assert abs(on["duration_error"]) < 0.011
    off = M.melody_accuracy(sung(tune, cents=100), SR, tune)
    assert off["raw_pitch_accuracy"] < 0.03 and off["raw_chroma_accuracy"] < 0.03 and off["voiced_cover"] > 0.97
    octave = M.melody_accuracy(sung(tune, cents=1200), SR, tune)  # chroma forgives the octave, raw pitch does not
    assert octave["raw_pitch_accuracy"] < 0.03 and octave["raw_chroma_accuracy"] > 0.97
    quiet = M.melody_accuracy(np.zeros(int(3.5 * SR), np.float32), SR, tune)
    assert quiet["voiced_cover"] == 0.0 and quiet["raw_pitch_accuracy"] == 0.0
    assert quiet["duration_error"] == pytest.approx(0.5)  # 3.5 s of output for a melody that ends at 3.0 s


def test_melody_accuracy_leaves_out_each_notes_first_and_last_40_ms(tune):
    judged = M.judged_frames(tune)
    # 0.5 + 0.5 + 0.8 + 0.8 s of notes, less 80 ms each: 2.28 s of 10 ms frames.
    assert judged.sum() == pytest.approx(228, abs=4)
    assert not judged[int(0.7 / 0.01) - 3: int(0.7 / 0.01) + 3].any()  # around the note change at 0.7 s
    # Wrong pitch only at the note edges does not count.
    x = sung(tune)
    t = np.arange(len(x)) / SR
    edges = np.zeros(len(x), bool)
    for n in tune.notes:
        edges |= ((t >= n.start) & (t < n.start + 0.02)) | ((t > n.end - 0.02) & (t < n.end))
    glided = np.where(edges, sung(tune, cents=300), x)
    assert M.melody_accuracy(glided, SR, tune)["raw_pitch_accuracy"] > 0.95
