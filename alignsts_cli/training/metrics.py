"""Objective measures of a conversion (docs/audio-and-metrics.md; paper section 4.1.3).

Every function takes mono float audio ``[n]`` at one sample rate ``sr`` and compares an *output*
with a *reference* (the ground-truth singing). Both are cut to the shorter before analysis, so a
few samples more or less at the end never count. The values depend on the rate (LSD sums over the
bins up to sr / 2, RRD runs on the profile's mel frames): ``alignsts evaluate`` resamples every
signal to the audio profile's rate (the model rate, as the official evaluation) before scoring.

- ``lsd``: log-spectral distance. STFT with n_fft 512, hop 128, window 512 (periodic Hann, librosa
  ``center=True`` with zero padding); bins at or below 100 Hz dropped; natural log of 0.1 + |X|;
  per frame the Euclidean (L2) norm of the difference over frequency; the mean over frames.
  (As Parekh et al. 2020, whom the paper follows: ``mean_t sqrt(sum_f (ln(0.1+|R|) - ln(0.1+|O|))^2)``.)
- ``rca``: raw chroma accuracy. Praat F0 of both with the singing settings of
  ``melody.extract_f0`` (autocorrelation, 80-750 Hz, voicing threshold 0.6, 10 ms grid), the
  longer contour truncated, mir_eval's raw chroma accuracy at 50 cents.
- ``rrd``: rhythm representation distance. The rhythm curve of eq. 3 (β = 400, σ = 1.5 frames;
  ``model.rhythm_curve``) of each signal's log-mel (``profiles.mel_spectrogram``), then
  ``sqrt(mean_t (r_ref[t] - r_out[t])^2)``: the RMS over frames of the difference, i.e. the L2
  norm divided by sqrt(T). See ``RRD_REDUCTION`` for why RMS and not the plain L2 norm.
- ``speaker_similarity``: cosine of the Resemblyzer embeddings (``features.FeatureExtractor.speaker``)
  of the input speech and the output singing.

Without a reference singing (real speech and a melody file: ``training.scorecard``), the output is judged
against the melody it was asked to sing instead:

- ``melody_accuracy``: the output's Praat F0 on the melody's 10 ms grid against the melody's contour, over
  the melody's voiced frames less each note's first and last 40 ms (``MELODY_EDGE``: onsets and
  releases are where consonants and glides belong): raw pitch accuracy and raw chroma accuracy at 50
  cents, the voiced cover (share of those frames where the output is voiced at all), and the
  duration error (output length minus the melody's: its contour's, which for MIDI ends with the last
  note; seconds).
"""
from __future__ import annotations


import numpy as np

#: LSD analysis (docs/audio-and-metrics.md).
LSD_N_FFT = 512
LSD_HOP = 128
LSD_WIN = 512
LSD_MIN_HZ = 100.0  # bins at or below this frequency are dropped
LSD_FLOOR = 0.1  # ln(LSD_FLOOR + |X|)
#: RCA tolerance (docs/audio-and-metrics.md), cents.
RCA_CENTS = 50.0
#: How RRD reduces the per-frame differences of the two rhythm curves: "rms" = sqrt(mean_t d_t^2).
#: The paper's "Euclidean distance" read literally is the L2 norm sqrt(sum_t d_t^2), which grows with
#: the length of the utterance (and with the frame rate), so a mean over items would weight long
#: items more and values would not compare between profiles; RMS is the L2 norm / sqrt(T), lies in
#: [0, 1] (curves are in [0, 1]) and is the same for every system. ``rrd(..., reduction="l2")`` gives
#: the plain norm.
RRD_REDUCTION = "rms"
#: Melody accuracy leaves out this much of each note's start and end, seconds.
MELODY_EDGE = 0.04


def _cents_apart(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """|1200 log2(est / ref)| where both are voiced (> 0), else 0."""
    both = (ref > 0) & (est > 0)
    return np.abs(1200.0 * np.log2(np.where(both, est, 1.0) / np.where(both, ref, 1.0)))


def _octaves_forgiven(diff: np.ndarray) -> np.ndarray:
    """mir_eval's chroma distance: ``|d - 1200·floor(d/1200 + 0.5)|``."""
    return np.abs(diff - 1200.0 * np.floor(diff / 1200.0 + 0.5))


def raw_chroma_accuracy(ref_f0: np.ndarray, est_f0: np.ndarray, cents: float = RCA_CENTS) -> float:
    """Share of the reference's voiced frames where the estimate is voiced and less than
    ``cents`` away from the reference, octave errors forgiven (mir_eval's raw chroma accuracy:
    ``|d - 1200·floor(d/1200 + 0.5)| < cents`` with d the absolute difference in cents).

    Both contours ``[T]`` in Hz (0 = unvoiced) on the same frame grid; the longer one
    is truncated to the shorter. Raises ``ValueError`` when the reference has no voiced frame.
    """
    n = min(len(ref_f0), len(est_f0))
    ref, est = np.asarray(ref_f0[:n], dtype=np.float64), np.asarray(est_f0[:n], dtype=np.float64)
    ref_v, est_v = ref > 0, est > 0
    if not ref_v.any():
        raise ValueError("the reference has no voiced frames")
    both = ref_v & est_v
    chroma = _octaves_forgiven(_cents_apart(ref, est))
    return float(np.sum(both & (chroma < cents)) / np.sum(ref_v))


def tracker_scores(true_f0: np.ndarray, est_f0: np.ndarray, edge: int = 3, cents: float = 50.0) -> dict:
    """How well a pitch tracker's ``est_f0`` follows a known ``true_f0`` (both ``[T]`` Hz on one grid, 0 =
    unvoiced), frames within ``edge`` of a voicing change left out (where "voiced" is a matter of taste):

    ``raw_pitch`` share of true voiced frames the estimate calls voiced within ``cents`` (mir_eval's raw
    pitch accuracy); ``octave_errors`` share within ``cents`` of twice or half the truth; ``recall`` share
    called voiced; ``false_alarm`` share of true unvoiced frames called voiced; ``frames``/``rests``: how
    many voiced and unvoiced frames were judged.
    """
    n = min(len(true_f0), len(est_f0))
    ref, est = np.asarray(true_f0[:n], float), np.asarray(est_f0[:n], float)
    on = ref > 0
    change = np.flatnonzero(np.diff(on.astype(np.int8)))
    keep = np.ones(n, bool)
    for c in change:
        keep[max(0, c - edge + 1):c + edge + 1] = False
    voiced, rest = on & keep, ~on & keep
    d = 1200.0 * np.log2(np.where(est > 0, est, 1.0) / np.where(on, ref, 1.0))
    hit = voiced & (est > 0)
    good = hit & (np.abs(d) <= cents)
    octave = hit & (np.abs(np.abs(d) - 1200.0) <= cents)
    v = max(1, int(voiced.sum()))
    return {"raw_pitch": float(good.sum() / v), "octave_errors": float(octave.sum() / v),
            "recall": float(hit.sum() / v), "false_alarm": float((rest & (est > 0)).sum() / max(1, int(rest.sum()))),
            "frames": int(voiced.sum()), "rests": int(rest.sum())}


def judged_frames(melody, edge: float = MELODY_EDGE) -> np.ndarray:
    """``[T]`` bool on the melody's grid: voiced frames inside a note, at least ``edge`` seconds from
    its start and end (a contour without notes: every voiced frame)."""
    voiced = melody.f0 > 0
    if not melody.notes:
        return voiced
    t = melody.times
    inside = np.zeros(len(t), dtype=bool)
    for n in melody.notes:
        inside |= (t >= n.start + edge) & (t < n.end - edge)
    return voiced & inside


def output_f0(audio: np.ndarray, sr: int, melody) -> np.ndarray:
    """Praat F0 ``[T]`` of a sung output on the melody's grid, searched from a little over an octave
    below the melody's lowest pitch to a little over an octave above its highest: low male tunes and
    high female ones are both tracked, and an output an octave off is seen as such (a narrower search
    would report the octave below an output sung an octave high, i.e. the target)."""
    from alignsts_cli.melody import extract_f0

    target = melody.f0[melody.f0 > 0]
    floor = float(np.clip(target.min() / 2.2, 40.0, 400.0))
    ceiling = float(np.clip(target.max() * 2.2, 4 * floor, 0.45 * sr))
    f0, _ = extract_f0(np.asarray(audio, dtype=np.float32), sr, hop=melody.hop, floor=floor, ceiling=ceiling)
    n = len(melody.f0)
    return np.pad(f0[:n], (0, max(0, n - len(f0))))


def melody_accuracy(audio: np.ndarray, sr: int, melody, cents: float = RCA_CENTS,
                    edge: float = MELODY_EDGE) -> dict:
    """How well ``[n]`` audio at ``sr`` sings ``melody`` (a ``melody.Melody``): see the module docstring.

    ``{"raw_pitch_accuracy", "raw_chroma_accuracy", "voiced_cover", "duration_error"}``; the first
    three are shares of the judged frames (:func:`judged_frames`), the last is in seconds (positive =
    the output is longer than ``melody.duration``). Raises ``ValueError`` when the melody has no judged frame.
    """
    judged = judged_frames(melody, edge)
    if not judged.any():
        raise ValueError("the melody has no voiced frame to judge")
    ref = np.where(judged, melody.f0, 0.0)
    est = output_f0(audio, sr, melody)
    voiced = judged & (est > 0)
    diff = _cents_apart(ref, est)
    count = float(judged.sum())
    return {
        "raw_pitch_accuracy": float(np.sum(voiced & (diff < cents)) / count),
        "raw_chroma_accuracy": float(np.sum(voiced & (_octaves_forgiven(diff) < cents)) / count),
        "voiced_cover": float(voiced.sum() / count),
        "duration_error": float(len(audio) / sr - melody.duration),
    }


def _mono(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono [n], got shape {x.shape}")
    return x


def _cut(reference, output) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64 ``[n]``, cut to the shorter."""
    r, o = _mono(reference), _mono(output)
    n = min(len(r), len(o))
    if n == 0:
        raise ValueError("one of the signals is empty")
    return r[:n], o[:n]


def log_spectrogram(audio: np.ndarray, sr: int) -> np.ndarray:
    """``ln(0.1 + |STFT|)`` of ``[n]`` audio with the LSD settings, bins ≤ 100 Hz dropped: ``[F, T]``."""
    import librosa

    spec = np.abs(librosa.stft(np.asarray(audio, dtype=np.float64), n_fft=LSD_N_FFT, hop_length=LSD_HOP,
                               win_length=LSD_WIN, window="hann", center=True, pad_mode="constant"))
    freqs = np.arange(spec.shape[0]) * sr / LSD_N_FFT
    return np.log(LSD_FLOOR + spec[freqs > LSD_MIN_HZ])


def lsd_frames(reference: np.ndarray, output: np.ndarray, sr: int) -> np.ndarray:
    """Per-frame log-spectral distance ``[T]``: the L2 norm over frequency of the difference of
    ``log_spectrogram`` of the two signals (cut to the shorter first)."""
    r, o = _cut(reference, output)
    d = log_spectrogram(r, sr) - log_spectrogram(o, sr)  # [F, T]
    return np.sqrt(np.sum(d * d, axis=0))


def lsd(reference: np.ndarray, output: np.ndarray, sr: int) -> float:
    """Log-spectral distance (docs/audio-and-metrics.md): the mean over frames of :func:`lsd_frames`. 0 = identical."""
    return float(np.mean(lsd_frames(reference, output, sr)))


def singing_f0(audio: np.ndarray, sr: int) -> np.ndarray:
    """Praat F0 ``[T]`` (Hz, 0 = unvoiced, 10 ms grid) with the singing settings of ``melody.extract_f0``."""
    from alignsts_cli.melody import extract_f0

    return extract_f0(np.asarray(audio, dtype=np.float32), sr)[0]


def rca(reference: np.ndarray, output: np.ndarray, sr: int, cents: float = RCA_CENTS) -> float:
    """Raw chroma accuracy of the output's F0 against the reference's (docs/audio-and-metrics.md); 1 = every voiced
    frame of the reference within ``cents`` (octaves forgiven). A reference without any voiced frame
    scores 0, as mir_eval does."""
    ref_f0, out_f0 = singing_f0(reference, sr), singing_f0(output, sr)
    if not np.any(ref_f0[: len(out_f0)] > 0):
        return 0.0
    return raw_chroma_accuracy(ref_f0, out_f0, cents)


def rhythm(audio: np.ndarray, profile) -> np.ndarray:
    """RRD rhythm curve ``[T]`` of ``[n]`` audio at the profile's rate: eq. 3 with β 400, σ 1.5 frames,
    on the profile's log-mel."""
    from alignsts_cli.model import RRD_BETA, RRD_SIGMA, rhythm_curve
    from alignsts_cli.profiles import get_profile, mel_spectrogram

    p = get_profile(profile)
    mel = mel_spectrogram(np.asarray(audio, dtype=np.float32), p)  # [T, n_mels]
    return rhythm_curve(mel, RRD_BETA, RRD_SIGMA, log_base=p.log_base).astype(np.float64)


def rrd(reference: np.ndarray, output: np.ndarray, sr: int, profile="compact-16k", *,
        reduction: str = RRD_REDUCTION) -> float:
    """Rhythm representation distance (docs/audio-and-metrics.md) between two signals at ``sr`` (must be the profile's rate).

    Both signals are cut to the shorter *before* analysis, so the two curves cover the same stretch of
    time, have the same length T, and their per-utterance normalisation (eq. 3) sees the same span.
    ``reduction``: ``"rms"`` (default, ``RRD_REDUCTION``) = sqrt(mean_t d_t²); ``"l2"`` = sqrt(sum_t d_t²).
    """
    from alignsts_cli.profiles import get_profile

    p = get_profile(profile)
    if sr != p.sample_rate:
        raise ValueError(f"rrd needs audio at the profile's rate ({p.sample_rate} Hz), got {sr} Hz")
    r, o = _cut(reference, output)
    d = rhythm(r, p) - rhythm(o, p)
    if reduction == "rms":
        return float(np.sqrt(np.mean(d * d)))
    if reduction == "l2":
        return float(np.sqrt(np.sum(d * d)))
    raise ValueError(f"reduction must be 'rms' or 'l2', not {reduction!r}")


def speaker_encoder(device: str = "cpu"):
    """The speaker embedder of the neural engine (Resemblyzer via ``features.FeatureExtractor``);
    build it once and pass it to every :func:`speaker_similarity` call."""
    from alignsts_cli.features import FeatureExtractor

    return FeatureExtractor("mfcc", 20, device=device)  # the content side of it is never used here


def speaker_embedding(audio: np.ndarray, sr: int, encoder=None) -> np.ndarray:
    """Resemblyzer embedding ``[256]`` of ``[n]`` audio at ``sr``; zeros for a silent signal (no voice).
    ``encoder``: anything with ``speaker(audio, sr) -> [256]`` (a ``features.FeatureExtractor``, e.g.
    :func:`speaker_encoder` or a neural engine's ``features``); None builds one (slow: build it once)."""
    from alignsts_cli.audio import SILENCE_DBFS, loudest_dbfs

    a = np.asarray(audio, dtype=np.float32)
    if a.size == 0 or loudest_dbfs(a, sr) < SILENCE_DBFS:
        return np.zeros(256)
    enc = encoder if encoder is not None else speaker_encoder()
    return np.asarray(enc.speaker(a, sr), dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings; 0 when either is zero (a silent signal)."""
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0


def speaker_similarity(speech: np.ndarray, output: np.ndarray, sr: int, encoder=None, *,
                       output_sr: int | None = None) -> float:
    """Cosine similarity of the Resemblyzer embeddings of ``speech`` (at ``sr``) and ``output`` (at
    ``output_sr``, default ``sr``); see :func:`speaker_embedding` for ``encoder``. A silent output
    (or speech) has no voice to compare and scores 0.
    """
    enc = encoder if encoder is not None else speaker_encoder()
    out_sr = sr if output_sr is None else output_sr
    return cosine(speaker_embedding(speech, sr, enc), speaker_embedding(output, out_sr, enc))


def score(reference: np.ndarray, output: np.ndarray, sr: int, profile="compact-16k", *,
          speech: np.ndarray | None = None, speech_sr: int | None = None, speech_embedding=None,
          encoder=None) -> dict:
    """All four measures of one output against its reference (both ``[n]`` at ``sr``, the profile's
    rate): ``{"lsd", "rca", "rrd", "speaker_similarity"}``. Speaker similarity needs the input
    ``speech`` (at ``speech_sr``) or its ``speech_embedding`` (``speaker_embedding``; pass it to score
    many outputs of one speech); without either it is None."""
    sim = None
    if speech is not None or speech_embedding is not None:
        enc = encoder if encoder is not None else speaker_encoder()
        if speech_embedding is None:
            speech_embedding = speaker_embedding(speech, speech_sr or sr, enc)
        sim = cosine(speech_embedding, speaker_embedding(output, sr, enc))
    return {
        "lsd": lsd(reference, output, sr),
        "rca": rca(reference, output, sr),
        "rrd": rrd(reference, output, sr, profile),
        "speaker_similarity": sim,
    }
