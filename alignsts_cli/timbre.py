"""The speaker's own spectral character carried onto the neural engine's song (envelope restoration).

A trained decoder knows only the voices it learnt from; a new speaker's mel envelope (vocal-tract
resonances, brightness, the microphone's colour) is lost even when the words survive. Here the
long-term average log-mel of the speech's voiced frames is compared with that of the song's voiced
frames, and the difference, smoothed across bands and limited, is added to every frame of the song
before vocoding: the song keeps its own phones and dynamics and takes the input's average envelope.
Nothing here was trained, so it works the same on a voice no model has heard.

The bands below ``LOW_HZ`` are left alone: there the average follows the harmonics of F0, which
the song changes on purpose.
"""
from __future__ import annotations

import numpy as np

#: Correction tapers to nothing below this frequency (the F0 and its first harmonics).
LOW_HZ = 300.0
#: Largest change of any band, dB.
MAX_DB = 12.0
#: Frames more than this below the loudest voiced frame are not part of the average, dB.
RANGE_DB = 30.0
#: Smoothing of the correction across mel bands (Gaussian sigma, bands).
SMOOTH_BANDS = 2.0


def average_envelope(mel: np.ndarray, voiced: np.ndarray, log_base: float) -> np.ndarray | None:
    """Mean log-mel ``[n_mels]`` over the loud voiced frames of ``mel`` ``[T, n_mels]``; None if there are none."""
    voiced = np.asarray(voiced, bool)[: len(mel)]
    mel = mel[: len(voiced)]
    if voiced.sum() < 5:
        return None
    db = 20.0 * np.log10(np.mean(np.power(float(log_base), mel), axis=1) + 1e-12)  # frame level (magnitude mel)
    keep = voiced & (db >= db[voiced].max() - RANGE_DB)
    return mel[keep].mean(axis=0)


def envelope_correction(speech_env: np.ndarray, song_env: np.ndarray, band_hz: np.ndarray, log_base: float,
                        strength: float = 1.0) -> np.ndarray:
    """What to add to each song frame ``[n_mels]`` (in the mel's log units) to give it the speech's envelope."""
    from scipy.ndimage import gaussian_filter1d

    diff = gaussian_filter1d(speech_env - song_env, SMOOTH_BANDS, mode="nearest")
    taper = np.clip((band_hz - LOW_HZ / 2) / (LOW_HZ / 2), 0.0, 1.0)
    diff = diff * taper
    diff -= np.average(diff, weights=taper + 1e-9)  # the shape only: the song's loudness stays its own
    limit = MAX_DB / 20.0 * np.log(10.0) / np.log(log_base)
    return strength * np.clip(diff, -limit, limit) * taper


def mel_band_hz(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre frequency of each mel band (Slaney scale, as the profiles' filterbanks)."""
    import librosa

    return librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax)[1:-1]
