"""Speech analysis that every path uses: the voice's range, its syllables, and which syllables go on which notes.

1. The voice range: a wide Praat pitch search finds the speaker's median F0; the floor and ceiling
   that suit that voice (:func:`voice_range`) then give the F0 every later step uses.
2. Syllable nuclei (de Jong & Wempe 2009): intensity peaks separated by dips, voiced; each syllable
   is split into a stretchable vowel core and consonant edges.
3. Syllable-to-note assignment (:func:`assign_syllables`): in order, several notes per syllable or
   several syllables per note when the counts differ (dynamic programming on durations).

The psola engine sings from this plan; the neural engine cuts long songs where it allows; ``prepare``
flattens the speech's pitch within the range it finds.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Note

#: Praat analysis step for intensity and pitch of the speech, seconds.
STEP = 0.01
#: Intensity drop below the loudest part (99th percentile) that counts as silence, dB.
SILENCE_DB = 25.0
#: Least intensity dip between two syllable nuclei, dB.
MIN_DIP_DB = 2.0
#: A vowel core spans the frames within this many dB of its peak (and voiced).
CORE_DB = 6.0
@dataclass
class Syllable:
    start: float  # segment start, seconds in the speech
    end: float  # segment end
    core_start: float  # vowel core (the stretchable part)
    core_end: float
    peak: float

    @property
    def onset(self) -> float:
        return self.core_start - self.start

    @property
    def coda(self) -> float:
        return self.end - self.core_end


@dataclass
class SpeechAnalysis:
    syllables: list[Syllable]
    median_f0: float  # Hz, of the voiced speech
    f0_floor: float  # Praat settings that suit this voice
    f0_ceiling: float
    f0: np.ndarray = field(repr=False, default=None)  # [T] speech F0 on the STEP grid


def voice_range(median_f0: float) -> tuple[float, float]:
    """Praat pitch floor and ceiling (Hz) that suit a voice whose median F0 is ``median_f0``."""
    return float(np.clip(0.5 * median_f0, 50.0, 200.0)), float(np.clip(2.5 * median_f0, 300.0, 900.0))


def analyse_speech(audio: np.ndarray, sr: int, *, source: str | os.PathLike = "the recording") -> SpeechAnalysis:
    """Voice range and syllables of ``[n]`` speech audio; ``source`` names it in messages."""
    import parselmouth

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=sr)
    # Pass 1: a wide search to learn this voice's range (narrow-band speech locks an
    # octave low when the floor does not suit the voice, docs/audio-and-metrics.md).
    wide = snd.to_pitch_ac(time_step=STEP, pitch_floor=50.0, pitch_ceiling=800.0)
    f = wide.selected_array["frequency"]
    if not np.any(f > 0):
        raise AlignSTSError(f"{source}: no voiced speech found (nothing in it has a pitch); give a recording of "
                            "someone speaking aloud, not whispering, music or noise")
    median = float(np.median(f[f > 0]))
    floor, ceiling = voice_range(median)
    pitch = snd.to_pitch_ac(time_step=STEP, pitch_floor=floor, pitch_ceiling=ceiling)
    pf = pitch.selected_array["frequency"]
    if np.any(pf > 0):
        median = float(np.median(pf[pf > 0]))
    intensity = snd.to_intensity(minimum_pitch=max(floor, 50.0), time_step=STEP)
    it = intensity.xs()
    iv = intensity.values[0]
    voiced_at = _sampler(pitch.xs(), pf > 0)
    syllables = _find_syllables(it, iv, voiced_at, len(audio) / sr)
    if not syllables:
        raise AlignSTSError("no syllables found in the speech; give a clear recording of spoken words")
    grid = np.arange(int(math.ceil(len(audio) / sr / STEP))) * STEP
    f0 = np.where(voiced_at(grid), np.interp(grid, pitch.xs(), pf), 0.0) if len(pitch.xs()) else np.zeros(len(grid))
    return SpeechAnalysis(syllables, median, floor, ceiling, f0)


def _sampler(xs: np.ndarray, values: np.ndarray):
    def at(t):
        if len(xs) == 0:
            return np.zeros(np.shape(t), dtype=bool)
        k = np.clip(np.round((np.asarray(t) - xs[0]) / STEP).astype(np.int64), 0, len(xs) - 1)
        return values[k]

    return at


def _find_syllables(t: np.ndarray, db: np.ndarray, voiced_at, duration: float) -> list[Syllable]:
    """Syllable nuclei as in de Jong & Wempe (2009), then segments and vowel cores."""
    if len(db) < 3:
        return []
    loud = np.percentile(db, 99)
    threshold = loud - SILENCE_DB
    peaks = [i for i in range(1, len(db) - 1) if db[i] > threshold and db[i] > db[i - 1] and db[i] >= db[i + 1]]
    kept: list[int] = []
    for p in peaks:
        if not kept:
            kept.append(p)
            continue
        q = kept[-1]
        dip = db[q:p + 1].min()
        if db[q] - dip >= MIN_DIP_DB and db[p] - dip >= MIN_DIP_DB:
            kept.append(p)
        elif db[p] > db[q]:
            kept[-1] = p
    kept = [p for p in kept if voiced_at(t[p])]
    if not kept:
        return []
    # Boundaries: the quietest frame between consecutive nuclei.
    bounds = [0]
    for a, b in zip(kept[:-1], kept[1:]):
        bounds.append(a + int(np.argmin(db[a:b + 1])))
    bounds.append(len(db) - 1)
    sound = db > threshold
    sylls = []
    for k, p in enumerate(kept):
        lo, hi = bounds[k], bounds[k + 1]
        idx = np.nonzero(sound[lo:hi + 1])[0]
        s0 = t[lo + idx[0]] - 0.02 if len(idx) else t[lo]
        s1 = t[lo + idx[-1]] + 0.02 if len(idx) else t[hi]
        if k > 0:
            s0 = max(s0, t[lo])
        if k < len(kept) - 1:
            s1 = min(s1, t[hi])
        s0, s1 = max(0.0, s0), min(duration, s1)
        a = p
        while a - 1 >= lo and db[a - 1] >= db[p] - CORE_DB and voiced_at(t[a - 1]):
            a -= 1
        b = p
        while b + 1 <= hi and db[b + 1] >= db[p] - CORE_DB and voiced_at(t[b + 1]):
            b += 1
        c0, c1 = max(s0, t[a] - STEP / 2), min(s1, t[b] + STEP / 2)
        if c1 - c0 < 0.04:  # a core needs some length to be stretched
            mid = t[p]
            c0, c1 = max(s0, mid - 0.02), min(s1, mid + 0.02)
        if s1 - s0 > 0.02 and c1 > c0:
            sylls.append(Syllable(s0, s1, c0, c1, t[p]))
    return sylls


# --------------------------------------------------------------------------- syllables to notes

def _partition(long_w: np.ndarray, short_w: np.ndarray, penalty: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Split the longer sequence into ``len(short_w)`` contiguous non-empty groups.

    Group k (``[i, j)`` of the long sequence) goes with item k of the short one; the
    cost is the squared log ratio of their shares of the total duration, plus
    ``penalty[i:j-1]`` (a cost for each joint inside a group).
    """
    L, S = len(long_w), len(short_w)
    lw = long_w / long_w.sum()
    sw = short_w / short_w.sum()
    cum = np.concatenate([[0.0], np.cumsum(lw)])
    pen = np.concatenate([[0.0], np.cumsum(penalty if penalty is not None else np.zeros(max(L - 1, 0)))])
    max_group = max(4, 2 * math.ceil(L / S) + 2)
    inf = float("inf")
    cost = np.full((S + 1, L + 1), inf)
    back = np.zeros((S + 1, L + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for k in range(1, S + 1):
        lo_j = k
        hi_j = L - (S - k)
        for j in range(lo_j, hi_j + 1):
            best, arg = inf, -1
            for i in range(max(k - 1, j - max_group), j):
                prev = cost[k - 1, i]
                if prev == inf:
                    continue
                share = cum[j] - cum[i]
                c = prev + math.log(max(share, 1e-9) / sw[k - 1]) ** 2 + (pen[j - 1] - pen[i] if j - 1 > i else 0.0)
                if c < best:
                    best, arg = c, i
            cost[k, j], back[k, j] = best, arg
    if cost[S, L] == inf:  # group limit too tight: fall back to even groups
        edges = np.linspace(0, L, S + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    groups = []
    j = L
    for k in range(S, 0, -1):
        i = int(back[k, j])
        groups.append((i, j))
        j = i
    return groups[::-1]


def assign_syllables(syllables: list[Syllable], notes: list[Note]) -> list[tuple[list[int], list[int]]]:
    """Pair syllables with notes in order: a list of (syllable indices, note indices).

    Equal counts pair one to one; more syllables than notes puts several syllables on
    a note; more notes than syllables sings a syllable over several notes (avoiding
    groups that span long rests).
    """
    S, N = len(syllables), len(notes)
    sd = np.array([s.end - s.start for s in syllables])
    nd = np.array([n.end - n.start for n in notes])
    if S == N:
        return [([k], [k]) for k in range(S)]
    if S > N:
        gaps = np.array([b.start - a.end for a, b in zip(syllables[:-1], syllables[1:])])
        groups = _partition(sd, nd, penalty=np.where(gaps > 0.15, 1.0, 0.0))
        return [(list(range(i, j)), [k]) for k, (i, j) in enumerate(groups)]
    rests = np.array([b.start - a.end for a, b in zip(notes[:-1], notes[1:])])
    groups = _partition(nd, sd, penalty=np.where(rests > 0.1, 1.0, 0.0))
    return [([k], list(range(i, j))) for k, (i, j) in enumerate(groups)]
