"""The time plan the signal engines share: where each syllable group sounds in the song and how its speech
is stretched to fill it.

From the syllable-to-note plan (:func:`alignsts_cli.analysis.assign_syllables` or an edited one), each group gets
an output span (its notes, led in by its onset consonant, :func:`group_spans`) and a piecewise-linear time map
from speech seconds to song seconds (:func:`time_map`): onset consonants lead into the note, vowel cores are
stretched to fill it, consonants keep (at most) their natural length. Also the pitch helpers both engines use:
rests gated (:func:`rest_gate`), holes filled, a delayed vibrato.
"""
from __future__ import annotations

import numpy as np

from alignsts_cli.analysis import SpeechAnalysis, Syllable
from alignsts_cli.melody import Melody, Note

#: Longest stretch of consonant kept on either side of a core, seconds (longer ones are compressed).
MAX_CONSONANT = 0.08
#: ... and at most this fraction of the group's output length (short notes, short consonants).
CONSONANT_SHARE = 0.08
#: Margin of input audio analysed around each group, seconds.
MARGIN = 0.04


def consonant_cap(out_len: float) -> float:
    """Longest consonant (either side of a vowel core) in a group sung for ``out_len`` seconds."""
    return min(MAX_CONSONANT, CONSONANT_SHARE * out_len)


def pieces(sylls: list[Syllable], out_len: float) -> list[tuple[float, float, float]]:
    """(input start, input end, output length) of each onset / core / coda piece of a group."""
    cap = consonant_cap(out_len)
    cons = []
    for s in sylls:
        cons += [min(s.onset, cap), min(s.coda, cap)]
    c_total = sum(cons)
    if c_total > 0.5 * out_len:  # short notes: consonants give up time too
        cons = [c * 0.5 * out_len / c_total for c in cons]
        c_total = 0.5 * out_len
    cores = np.array([s.core_end - s.core_start for s in sylls])
    core_out = (out_len - c_total) * cores / cores.sum()
    out = []
    for k, s in enumerate(sylls):
        out.append((s.start, s.core_start, cons[2 * k]))
        out.append((s.core_start, s.core_end, float(core_out[k])))
        out.append((s.core_end, s.end, cons[2 * k + 1]))
    return out


def group_spans(groups, sylls: list[Syllable], notes: list[Note]) -> list[list[float]]:
    """Output span [start, end] (seconds of the song) of each group: its notes, led in by the onset consonant."""
    spans = []
    for gi, (s_idx, n_idx) in enumerate(groups):
        start, end = notes[n_idx[0]].start, notes[n_idx[-1]].end
        lead = min(sylls[s_idx[0]].onset, consonant_cap(end - start))
        prev_end = notes[groups[gi - 1][1][-1]].end if gi else 0.0
        prev_start = notes[groups[gi - 1][1][0]].start if gi else 0.0
        room = (start - prev_end) + 0.3 * max(0.0, prev_end - prev_start) if gi else start
        spans.append([start - min(lead, max(room, 0.0)), end])
    for gi in range(len(spans) - 1):  # a lead cuts the tail of the group before it
        spans[gi][1] = min(spans[gi][1], spans[gi + 1][0])
    return spans


def time_map(g_sylls: list[Syllable], o0: float, o1: float, speech_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots of one group's piecewise-linear time map: (speech seconds ``[K]``, song seconds ``[K]``).

    The first and last knots add ``MARGIN`` of speech around the group (cut off again when placing it).
    """
    parts = pieces(g_sylls, o1 - o0)
    x0 = max(0.0, g_sylls[0].start - MARGIN)
    x1 = min(speech_seconds, g_sylls[-1].end + MARGIN)
    kin = [x0, g_sylls[0].start]
    kout = [o0 - (g_sylls[0].start - x0), o0]
    for a, b, length in parts:
        if a > kin[-1] + 1e-6:  # a silent gap inside the group is dropped
            kin.append(a)
            kout.append(kout[-1] + 1e-3 * (a - kin[-2]))
        if b > a:
            kin.append(b)
            kout.append(kout[-1] + length)
    kin.append(x1)
    kout.append(kout[-1] + (x1 - kin[-2]))
    return np.array(kin), np.array(kout)


def fill_holes(f: np.ndarray) -> np.ndarray:
    """Unvoiced (0) stretches of a contour filled by linear interpolation between its voiced values."""
    idx = np.nonzero(f > 0)[0]
    if len(idx) == 0:
        return f
    return np.interp(np.arange(len(f)), idx, f[idx])


#: Deepest vibrato accepted (``--vibrato``), cents: a whole tone either way.
MAX_VIBRATO_CENTS = 200.0


def vibrato_cents(taus: np.ndarray, notes: list[Note], n_idx: list[int], depth: float, rate: float,
                  delay: float, fade: float = 0.2) -> np.ndarray:
    """Pitch deviation (cents) ``[len(taus)]`` of a vibrato of peak ``depth`` at ``rate`` Hz in each note of
    ``n_idx``: it starts ``delay`` s into the note and fades in over ``fade`` s, so short notes have none."""
    cents = np.zeros(len(taus))
    for k in n_idx:
        n = notes[k]
        sel = (taus >= n.start) & (taus < n.end)
        age = taus[sel] - n.start - delay
        cents[sel] = depth * np.clip(age / fade, 0.0, 1.0) * np.sin(2 * np.pi * rate * np.maximum(age, 0.0))
    return cents


def rest_gate(times: np.ndarray, notes: list[Note], n_idx: list[int]) -> np.ndarray:
    """1 where a group should sound, 0 in rests (of 50 ms or more) between its notes, with 15 ms ramps."""
    g = np.ones(len(times))
    ramp = 0.015
    for a, b in zip(n_idx[:-1], n_idx[1:]):
        r0, r1 = notes[a].end, notes[b].start
        if r1 - r0 < 0.05:
            continue
        down = np.clip((times - r0) / ramp, 0, 1)
        up = np.clip((r1 - times) / ramp, 0, 1)
        inside = (times > r0) & (times < r1)
        g[inside] = np.minimum(g[inside], 1 - np.minimum(down[inside], up[inside]))
    return g


def plan_info(analysis: SpeechAnalysis, melody: Melody, groups) -> dict:
    """What a signal engine reports of a song: syllables, notes, groups, the speech's median F0, voiced share."""
    return {
        "syllables": len(analysis.syllables),
        "notes": len(melody.notes),
        "groups": len(groups),
        "speech_median_f0": analysis.median_f0,
        "voiced_fraction": float((melody.f0 > 0).mean()),
    }
