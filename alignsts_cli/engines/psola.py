"""The signal-processing engine: syllables mapped onto notes, then PSOLA.

The classical model-based way of turning speech into singing, with Praat doing
the signal work through parselmouth. From the speech analysis (:mod:`alignsts_cli.analysis`:
syllables with vowel cores and consonant edges, and which syllables go on which notes):

1. time-map each group: onset consonants lead into the note, vowel cores are
   stretched to fill it, consonants keep (at most) their natural length;
2. set the pitch to the target contour (optional vibrato) and resynthesise by
   pitch-synchronous overlap-add, one group at a time, joined with short cross-fades.

It keeps the speaker's own voice and words, and needs no model weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignsts_cli.analysis import STEP, SpeechAnalysis, analyse_speech, assign_syllables
from alignsts_cli.audio import fade_envelope
from alignsts_cli.engines.timing import MARGIN, fill_holes, group_spans, plan_info, rest_gate, time_map, vibrato_cents
from alignsts_cli.melody import Melody, midi_to_hz

#: Cross-fade between consecutive syllable groups, seconds.
GROUP_XFADE = 0.01



@dataclass
class PsolaSettings:
    vibrato_cents: float = 0.0  # depth (peak deviation); 0 = none
    vibrato_rate: float = 5.5  # Hz
    vibrato_delay: float = 0.25  # s after the note starts before vibrato fades in


# --------------------------------------------------------------------------- synthesis

def _tiers(knots_in: np.ndarray, knots_out: np.ndarray):
    """Duration-tier points (time, relative duration) for a piecewise-linear time map."""
    pts = []
    for k in range(len(knots_in) - 1):
        dx = knots_in[k + 1] - knots_in[k]
        if dx <= 1e-6:
            continue
        f = max((knots_out[k + 1] - knots_out[k]) / dx, 1e-3)
        eps = min(5e-4, dx / 4)
        pts.append((knots_in[k] + eps, f))
        pts.append((knots_in[k + 1] - eps, f))
    return pts


def sing(
    audio: np.ndarray,
    sr: int,
    melody: Melody,
    settings: PsolaSettings | None = None,
    analysis: SpeechAnalysis | None = None,
    progress=None,
    groups=None,
) -> tuple[np.ndarray, dict]:
    """Sing ``[n]`` speech audio to ``melody``; returns (audio ``[round(melody.duration·sr)]``, info).

    ``analysis``: the speech's (made here when not given). ``groups``: the syllable-to-note plan, a list
    of (syllable indices, note indices) (default: ``analysis.assign_syllables``; an edited one from
    :mod:`alignsts_cli.plan`). ``progress(done, total)`` is called after each syllable group when given. The same input gives the same output: Praat's overlap-add places
    its pulses with Praat's random generator, which is seeded here (and set back to unpredictable after).
    """
    import parselmouth

    parselmouth.praat.run("random_initializeWithSeedUnsafelyButPredictably (0)")
    try:
        return _sing(audio, sr, melody, settings, analysis, progress, groups)
    finally:
        parselmouth.praat.run("random_initializeSafelyAndUnpredictably ()")


def _sing(audio, sr, melody, settings, analysis, progress, groups) -> tuple[np.ndarray, dict]:
    settings = settings or PsolaSettings()
    analysis = analysis or analyse_speech(audio, sr)
    sylls, notes = analysis.syllables, melody.notes
    groups = groups if groups is not None else assign_syllables(sylls, notes)
    n_out = int(round(melody.duration * sr))
    out = np.zeros(n_out + int(sr * (MARGIN + GROUP_XFADE)) * 2, dtype=np.float64)
    offset = int(sr * (MARGIN + GROUP_XFADE))  # out[offset + k] is output sample k
    spans = group_spans(groups, sylls, notes)
    for gi, (s_idx, n_idx) in enumerate(groups):
        o0, o1 = spans[gi]
        if o1 - o0 >= 0.02:
            g_sylls = [sylls[k] for k in s_idx]
            kin, kout = time_map(g_sylls, o0, o1, len(audio) / sr)
            res = _resynthesise(audio, sr, kin, kout, melody, n_idx, analysis, settings)
            _place(out, offset, res, sr, kout, melody, n_idx)
        if progress:
            progress(gi + 1, len(groups))
    song = out[offset:offset + n_out].astype(np.float32)
    info = plan_info(analysis, melody, groups)
    return song, info


def _resynthesise(audio, sr, kin, kout, melody: Melody, n_idx: list[int], analysis: SpeechAnalysis,
                  settings: PsolaSettings) -> np.ndarray:
    """One group's speech, time-mapped by (``kin``, ``kout``) and re-pitched to the melody, by Praat PSOLA.

    Returns the resynthesised audio from song time ``kout[0]`` on (longer than the group: it is cut by
    :func:`_place`).
    """
    import parselmouth
    from parselmouth.praat import call

    notes = melody.notes
    x0 = kin[0]
    chunk = audio[int(x0 * sr):int(math.ceil(kin[-1] * sr))].astype(np.float64)
    in_len = len(chunk) / sr
    out_len = kout[-1] - kout[0]
    # Praat's overlap-add gives at most ~3x the input's length: pad with silence.
    pad = max(0.0, out_len / 2.5 - in_len) + 0.05
    chunk = np.concatenate([chunk, np.zeros(int(pad * sr))])
    snd = parselmouth.Sound(chunk, sampling_frequency=sr)
    local_in = kin - x0
    man = call(snd, "To Manipulation", STEP, analysis.f0_floor, analysis.f0_ceiling)
    dt = call("Create DurationTier", "d", 0.0, snd.xmax)
    for tx, f in _tiers(local_in, kout):
        call(dt, "Add point", tx, f)
    call(dt, "Add point", local_in[-1] + 1e-3, 1.0)
    call([man, dt], "Replace duration tier")

    # Pitch: the melody at each output time, drawn back to speech time.
    taus = np.arange(kout[0], kout[-1], 0.005)
    xs = np.interp(taus, kout, local_in)
    target = melody.f0_at(taus)
    hold = np.where(taus < notes[n_idx[0]].start, midi_to_hz(notes[n_idx[0]].pitch), 0.0)
    hold = np.where((hold == 0) & (taus >= notes[n_idx[-1]].end), midi_to_hz(notes[n_idx[-1]].pitch), hold)
    target = np.where(target > 0, target, hold)
    if np.any(target <= 0):  # rests inside a group: hold the last sung pitch
        target = fill_holes(target)
    if settings.vibrato_cents > 0:
        target = target * 2.0 ** (vibrato_cents(taus, notes, n_idx, settings.vibrato_cents, settings.vibrato_rate,
                                                      settings.vibrato_delay) / 1200.0)
    pt = call("Create PitchTier", "p", 0.0, snd.xmax)
    last_x = -1.0
    for x, f in zip(xs, target):
        if x > last_x + 1e-4 and f > 0:
            call(pt, "Add point", float(x), float(f))
            last_x = x
    call([man, pt], "Replace pitch tier")
    return call(man, "Get resynthesis (overlap-add)").values[0]


def _place(out: np.ndarray, offset: int, res: np.ndarray, sr: int, kout: np.ndarray, melody: Melody,
           n_idx: list[int]) -> None:
    """Cut one group's resynthesis to its span (plus the cross-fade) and add it into ``out`` in place."""
    a_out = kout[1] - kout[0] - GROUP_XFADE
    b_out = kout[-2] - kout[0] + GROUP_XFADE
    ia, ib = int(round(max(a_out, 0.0) * sr)), int(round(b_out * sr))
    piece = res[ia:ib]
    # Rests inside a group stay silent.
    pt_times = kout[0] + (ia + np.arange(len(piece))) / sr
    piece = piece * rest_gate(pt_times, melody.notes, n_idx)
    fade = max(1, int(GROUP_XFADE * sr))
    env = fade_envelope(len(piece), min(fade, len(piece) // 2), dtype=np.float64)
    pos = offset + int(round((kout[0] + ia / sr) * sr))
    lo, hi = max(pos, 0), min(pos + len(piece), len(out))
    if hi > lo:
        out[lo:hi] += (piece * env)[lo - pos:hi - pos]


