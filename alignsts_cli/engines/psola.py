"""The signal-processing engine: syllables mapped onto notes, then PSOLA.

The classical model-based way of turning speech into singing, with Praat doing
the signal work through parselmouth:

1. find syllable nuclei in the speech (intensity peaks separated by dips, voiced),
   and split the speech into one segment per syllable with a stretchable vowel
   core and consonant edges;
2. assign syllables to notes in order, several notes per syllable or several
   syllables per note when the counts differ (dynamic programming on durations);
3. time-map each group: onset consonants lead into the note, vowel cores are
   stretched to fill it, consonants keep (at most) their natural length;
4. set the pitch to the target contour (optional vibrato) and resynthesise by
   pitch-synchronous overlap-add, one group at a time, joined with short cross-fades.

It keeps the speaker's own voice and words, and needs no model weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Melody, Note

#: Praat analysis step for intensity and pitch of the speech, seconds.
STEP = 0.01
#: Intensity drop below the loudest part (99th percentile) that counts as silence, dB.
SILENCE_DB = 25.0
#: Least intensity dip between two syllable nuclei, dB.
MIN_DIP_DB = 2.0
#: A vowel core spans the frames within this many dB of its peak (and voiced).
CORE_DB = 6.0
#: Longest stretch of consonant kept on either side of a core, seconds (longer ones are compressed).
MAX_CONSONANT = 0.08
#: ... and at most this fraction of the group's output length (short notes, short consonants).
CONSONANT_SHARE = 0.08
#: Cross-fade between consecutive groups, seconds.
XFADE = 0.01
#: Margin of input audio analysed around each group, seconds.
MARGIN = 0.04


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


@dataclass
class PsolaSettings:
    vibrato_cents: float = 0.0  # depth (peak deviation); 0 = none
    vibrato_rate: float = 5.5  # Hz
    vibrato_delay: float = 0.25  # s after the note starts before vibrato fades in


def analyse_speech(audio: np.ndarray, sr: int) -> SpeechAnalysis:
    """Voice range and syllables of ``[n]`` speech audio."""
    import parselmouth

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=sr)
    # Pass 1: a wide search to learn this voice's range (narrow-band speech locks an
    # octave low when the floor does not suit the voice, SPEC.md section 5).
    wide = snd.to_pitch_ac(time_step=STEP, pitch_floor=50.0, pitch_ceiling=800.0)
    f = wide.selected_array["frequency"]
    if not np.any(f > 0):
        raise AlignSTSError("no voiced speech found in the recording; give a recording of someone speaking")
    median = float(np.median(f[f > 0]))
    floor = float(np.clip(0.5 * median, 50.0, 200.0))
    ceiling = float(np.clip(2.5 * median, 300.0, 900.0))
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


# --------------------------------------------------------------------------- synthesis

def consonant_cap(out_len: float) -> float:
    """Longest consonant (either side of a vowel core) in a group sung for ``out_len`` seconds."""
    return min(MAX_CONSONANT, CONSONANT_SHARE * out_len)


def _pieces(sylls: list[Syllable], out_len: float) -> list[tuple[float, float, float]]:
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
) -> tuple[np.ndarray, dict]:
    """Sing ``[n]`` speech audio to ``melody``; returns (audio ``[round(melody.duration·sr)]``, info).

    ``progress(done, total)`` is called after each group when given.
    """
    import parselmouth
    from parselmouth.praat import call

    settings = settings or PsolaSettings()
    analysis = analysis or analyse_speech(audio, sr)
    sylls, notes = analysis.syllables, melody.notes
    groups = assign_syllables(sylls, notes)
    n_out = int(round(melody.duration * sr))
    out = np.zeros(n_out + int(sr * (MARGIN + XFADE)) * 2, dtype=np.float64)
    offset = int(sr * (MARGIN + XFADE))  # out[offset + k] is output sample k
    voiced_melody = melody.f0 > 0

    # Output span of each group: its notes, led in by the onset consonant.
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

    for gi, (s_idx, n_idx) in enumerate(groups):
        g_sylls = [sylls[k] for k in s_idx]
        o0, o1 = spans[gi]
        if o1 - o0 < 0.02:
            continue
        pieces = _pieces(g_sylls, o1 - o0)
        # Knots of the time map, in seconds of the speech (input) and of the song (output).
        x0 = max(0.0, g_sylls[0].start - MARGIN)
        x1 = min(len(audio) / sr, g_sylls[-1].end + MARGIN)
        kin = [x0, g_sylls[0].start]
        kout = [o0 - (g_sylls[0].start - x0), o0]
        for a, b, length in pieces:
            if a > kin[-1] + 1e-6:  # a silent gap inside the group is dropped
                kin.append(a)
                kout.append(kout[-1] + 1e-3 * (a - kin[-2]))
            if b > a:
                kin.append(b)
                kout.append(kout[-1] + length)
        kin.append(x1)
        kout.append(kout[-1] + (x1 - kin[-2]))
        kin, kout = np.array(kin), np.array(kout)

        chunk = audio[int(x0 * sr):int(math.ceil(x1 * sr))].astype(np.float64)
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
        first_pitch = notes[n_idx[0]].pitch
        last_pitch = notes[n_idx[-1]].pitch
        hold = np.where(taus < notes[n_idx[0]].start, 440.0 * 2 ** ((first_pitch - 69) / 12), 0.0)
        hold = np.where((hold == 0) & (taus >= notes[n_idx[-1]].end), 440.0 * 2 ** ((last_pitch - 69) / 12), hold)
        target = np.where(target > 0, target, hold)
        if np.any(target <= 0):  # rests inside a group: hold the last sung pitch
            target = _fill_holes(target)
        if settings.vibrato_cents > 0:
            target = target * _vibrato(taus, melody, notes, n_idx, settings)
        pt = call("Create PitchTier", "p", 0.0, snd.xmax)
        last_x = -1.0
        for x, f in zip(xs, target):
            if x > last_x + 1e-4 and f > 0:
                call(pt, "Add point", float(x), float(f))
                last_x = x
        call([man, pt], "Replace pitch tier")
        res = call(man, "Get resynthesis (overlap-add)").values[0]

        # Cut this group's output (with margins for the cross-fade) and place it.
        a_out = kout[1] - kout[0] - XFADE
        b_out = kout[-2] - kout[0] + XFADE
        ia, ib = int(round(max(a_out, 0.0) * sr)), int(round(b_out * sr))
        piece = res[ia:ib]
        # Rests inside a group stay silent.
        pt_times = kout[0] + (ia + np.arange(len(piece))) / sr
        piece = piece * _gate(pt_times, melody, notes, n_idx, sr)
        fade = max(1, int(XFADE * sr))
        env = np.ones(len(piece))
        k = min(fade, len(piece) // 2)
        if k:
            env[:k] = np.linspace(0, 1, k)
            env[-k:] = np.linspace(1, 0, k)
        pos = offset + int(round((kout[0] + ia / sr) * sr))
        lo, hi = max(pos, 0), min(pos + len(piece), len(out))
        if hi > lo:
            out[lo:hi] += (piece * env)[lo - pos:hi - pos]
        if progress:
            progress(gi + 1, len(groups))

    song = out[offset:offset + n_out].astype(np.float32)
    info = {
        "syllables": len(sylls),
        "notes": len(notes),
        "groups": len(groups),
        "speech_median_f0": analysis.median_f0,
        "voiced_fraction": float(voiced_melody.mean()),
    }
    return song, info


def _fill_holes(f: np.ndarray) -> np.ndarray:
    idx = np.nonzero(f > 0)[0]
    if len(idx) == 0:
        return f
    return np.interp(np.arange(len(f)), idx, f[idx])


def _vibrato(taus, melody: Melody, notes: list[Note], n_idx: list[int], s: PsolaSettings) -> np.ndarray:
    """Pitch factor ``[len(taus)]`` of a vibrato that fades in within each note."""
    factor = np.ones(len(taus))
    for k in n_idx:
        n = notes[k]
        sel = (taus >= n.start) & (taus < n.end)
        age = taus[sel] - n.start - s.vibrato_delay
        depth = s.vibrato_cents * np.clip(age / 0.2, 0.0, 1.0)
        factor[sel] = 2.0 ** (depth * np.sin(2 * np.pi * s.vibrato_rate * np.maximum(age, 0.0)) / 1200.0)
    return factor


def _gate(times: np.ndarray, melody: Melody, notes: list[Note], n_idx: list[int], sr: int) -> np.ndarray:
    """1 where the group should sound, 0 in rests between its notes (15 ms ramps)."""
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
