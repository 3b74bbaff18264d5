"""The model-based singing engine after Saitou et al. (2004, 2007), on the WORLD vocoder.

WORLD (through ``pyworld``) splits the speech into F0, spectral envelope (CheapTrick) and aperiodicity (D4C).
The song is made from those, frame by frame (:data:`FRAME` apart, twice as fine as the analysis), following the same syllable-to-note plan as
psola (:mod:`alignsts_cli.engines.timing`), with the three controls of Saitou et al.:

- **duration**: each output frame reads the speech at the time the group's time map gives; envelope and
  aperiodicity are interpolated between the two nearest speech frames, so a stretched vowel changes smoothly
  and repeats no frame; consonants keep their length (shortened only on short notes) and onset consonants
  lead into the beat; the notes of one syllable are sung legato; rests are silent.
- **F0** (:func:`sung_f0`), on melodies written as notes: the note steps through a second-order system that
  overshoots after each change (:data:`OVERSHOOT`), the same system run backwards for the preparation before
  it (:data:`PREPARATION`), a vibrato that starts late in long notes, and low-pass noise as fine
  fluctuation; portamento optional. A contour melody (F0 CSV, reference singing) is sung as it is.
- **spectrum** (:func:`shape_envelope`): the singer's formant (a bump near 3 kHz), amplitude modulation in step
  with the vibrato, and the envelope kept as it is across pitch shifts (WORLD changes F0 alone), or moved
  by ``formant_shift`` semitones when asked.

Unvoiced consonants and breathiness come from the speech's own aperiodicity (on voiced frames at most
:data:`VOICED_APERIODICITY`): the song is voiced only where the speech was, by Harvest or Praat.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from alignsts_cli.analysis import SpeechAnalysis, analyse_speech, assign_syllables
from alignsts_cli.engines.timing import MAX_VIBRATO_CENTS, group_spans, plan_info, rest_gate, time_map, vibrato_cents
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Melody, Note, hz_to_midi, render_notes

#: WORLD analysis frame period of the speech, seconds (WORLD's usual 5 ms; D4C misjudges 8 kHz speech at 2.5 ms).
ANALYSIS_FRAME = 0.005
#: Frame period of the song, seconds: finer than the analysis, because a consonant squeezed 4x onto a short note
#: read at 5 ms steps of the song would skip three of every four speech frames (its bursts among them).
FRAME = 0.0025
#: Second-order F0 systems of Saitou et al. 2007: (natural frequency in rad/s, damping).
OVERSHOOT = (34.8, 0.5422)
PREPARATION = (29.2, 0.6681)
#: Vibrato rate (Hz: Saitou's 0.0345 rad/ms), default depth (peak cents) and delay into a note (s).
VIBRATO_RATE = 5.5
VIBRATO_DEPTH = 30.0
VIBRATO_DELAY = 0.3
#: Fine fluctuation: white noise low-passed at this frequency (Hz), scaled to this standard deviation (cents).
FINE_CUTOFF = 10.0
FINE_CENTS = 4.0
#: Singer's formant: a bump of this gain (dB) centred at this frequency (Hz), this wide (Hz, standard deviation).
SINGERS_FORMANT = (6.0, 3000.0, 500.0)
#: Amplitude modulation in step with the vibrato: peak dB at full vibrato depth.
AM_DB = 1.5
#: WORLD works at this rate or above: D4C measures aperiodicity in bands up to (rate/2 - 3 kHz), so below
#: 12 kHz it has none and returns whatever its memory held (different on every call). Slower speech
#: (8 and 11.025 kHz telephone and voice-prompt audio) is analysed and sung at this rate, then brought back.
MIN_RATE = 16000
#: The speech's analysis is cut into parts of at least this many seconds (at most MAX_PARTS, one per core), each
#: analysed with this much speech either side of it (seconds; WORLD's windows reach about 3 periods of the F0 floor).
PART_SECONDS = 2.0
MAX_PARTS = 4
PART_OVERLAP = 0.2
#: Fade at the edges of each sung span, seconds.
EDGE_FADE = 0.01
#: Most aperiodicity a sung voiced frame keeps (in every band): sung vowels are more periodic than spoken ones, and
#: a voiced frame left as noisy as a breathy or creaky spoken one is heard (and tracked) as unvoiced.
VOICED_APERIODICITY = 0.5


@dataclass
class WorldSettings:
    vibrato_cents: float | None = None  # peak deviation; None = VIBRATO_DEPTH on a score, none on a contour
    vibrato_rate: float = VIBRATO_RATE  # Hz
    vibrato_delay: float = VIBRATO_DELAY  # s into a note before the vibrato fades in
    portamento: float = 0.0  # s of glide into each note that follows another without a rest; 0 = none
    formant_shift: float = 0.0  # semitones the envelope is moved (+ smaller, brighter; - larger, darker)
    singers_formant_db: float = SINGERS_FORMANT[0]
    fluctuation_cents: float = FINE_CENTS
    seed: int = 0  # of the fine fluctuation

    def depth(self, score: bool) -> float:
        """The vibrato depth sung: as set, else the default for a score and none for a contour."""
        if self.vibrato_cents is not None:
            return self.vibrato_cents
        return VIBRATO_DEPTH if score else 0.0

    def check(self) -> "WorldSettings":
        limits = {"vibrato": (self.vibrato_cents, 0.0, MAX_VIBRATO_CENTS), "vibrato-rate": (self.vibrato_rate, 0.5, 12.0),
                  "portamento": (self.portamento, 0.0, 0.5), "formant-shift": (self.formant_shift, -12.0, 12.0)}
        for name, (value, lo, hi) in limits.items():
            if value is not None and not (math.isfinite(value) and lo <= value <= hi):
                raise AlignSTSError(f"--{name} {value}: use a value from {lo:g} to {hi:g}")
        return self


def _pyworld():
    try:
        with warnings.catch_warnings():  # pyworld imports pkg_resources, which warns about itself
            warnings.simplefilter("ignore")
            import pyworld
    except ImportError as exc:
        raise AlignSTSError("the world engine needs pyworld: pip install 'alignsts[world]' (a C++ compiler builds it), "
                            "or use --engine psola") from exc
    return pyworld


# --------------------------------------------------------------------------- F0

def _second_order(x: np.ndarray, omega: float, zeta: float, dt: float) -> np.ndarray:
    """``x`` through omega^2 / (s^2 + 2 zeta omega s + omega^2), discretised by the bilinear transform,
    starting at rest at ``x[0]``. (Written out rather than taken from scipy.signal, whose import alone costs a
    first conversion 0.6 s.)"""
    k = 2.0 / dt
    d = k * k + 2.0 * zeta * omega * k + omega * omega
    b0 = omega * omega / d
    a1 = 2.0 * (omega * omega - k * k) / d
    a2 = (k * k - 2.0 * zeta * omega * k + omega * omega) / d
    u = np.asarray(x, dtype=np.float64) - x[0]
    v = b0 * (u + 2.0 * np.concatenate([[0.0], u[:-1]]) + np.concatenate([[0.0, 0.0], u[:-2]]))[:len(u)]
    y = np.empty(len(u))
    y1 = y2 = 0.0
    for i, vi in enumerate(v.tolist()):
        y0 = vi - a1 * y1 - a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y + x[0]


def settle_time(omega: float, zeta: float) -> float:
    """Seconds a second-order system takes to settle within 2 % of a step (4 / (zeta omega))."""
    return 4.0 / (zeta * omega)


def is_score(melody: Melody) -> bool:
    """True when the melody is its notes as written (MIDI, MusicXML), not a sung or drawn contour."""
    if not melody.notes:
        return False
    rendered = render_notes(melody.notes, melody.hop)
    n = min(len(rendered), len(melody.f0))
    a, b = rendered[:n], melody.f0[:n]
    both = (a > 0) & (b > 0)
    if np.any((a > 0) != (b > 0)) or not np.any(both):
        return False
    return bool(np.max(np.abs(hz_to_midi(a[both]) - hz_to_midi(b[both]))) < 0.01)


def sung_f0(melody: Melody, times: np.ndarray, settings: WorldSettings, score: bool | None = None) -> np.ndarray:
    """The F0 (Hz) to sing at ``times`` (seconds of the song; rests filled, the caller voices it).

    A score gets Saitou's controls: the note steps smoothed by the overshoot system, then by the
    preparation system run backwards, plus vibrato and fine fluctuation; a contour is followed as it is,
    with vibrato only when asked for.
    """
    score = is_score(melody) if score is None else score
    base = _hold_next(melody.f0_at(times))
    if not np.any(base > 0):
        return base
    cents = 1200.0 * np.log2(base / 440.0)
    notes = melody.notes
    dt = float(times[1] - times[0]) if len(times) > 1 else FRAME
    if score:
        if settings.portamento > 0:
            cents = _portamento(cents, times, notes, settings.portamento)
        cents = _second_order(cents, *OVERSHOOT, dt)
        cents = _second_order(cents[::-1], *PREPARATION, dt)[::-1]
        if settings.fluctuation_cents > 0:
            cents = cents + _fluctuation(len(times), dt, settings.fluctuation_cents, settings.seed)
    if settings.depth(score) > 0:
        cents = cents + _vibrato(times, notes, settings, score)
    return 440.0 * 2.0 ** (cents / 1200.0)


def _hold_next(f: np.ndarray) -> np.ndarray:
    """Rests filled with the pitch of the note after them (a lead-in consonant sings the coming note), the
    end with the last note's."""
    voiced = np.nonzero(f > 0)[0]
    if len(voiced) == 0:
        return f
    nxt = voiced[np.minimum(np.searchsorted(voiced, np.arange(len(f))), len(voiced) - 1)]
    return f[nxt]


def _vibrato(times, notes: list[Note], settings: WorldSettings, score: bool) -> np.ndarray:
    return vibrato_cents(times, notes, list(range(len(notes))), settings.depth(score), settings.vibrato_rate,
                         settings.vibrato_delay)


def _portamento(cents: np.ndarray, times: np.ndarray, notes: list[Note], glide: float) -> np.ndarray:
    """Linear glides (in cents) of ``glide`` seconds into each note that follows another without a rest."""
    out = cents.copy()
    for prev, nxt in zip(notes[:-1], notes[1:]):
        if nxt.start - prev.end > 0.02 or nxt.pitch == prev.pitch:
            continue
        span = min(glide, 0.5 * nxt.duration)
        sel = (times >= nxt.start) & (times < nxt.start + span)
        a, b = 100.0 * (prev.pitch - 69.0), 100.0 * (nxt.pitch - 69.0)  # cents from A4, as above
        out[sel] = a + (b - a) * (times[sel] - nxt.start) / span
    return out


def _fluctuation(n: int, dt: float, std: float, seed: int) -> np.ndarray:
    """Seeded white noise through a second-order Butterworth low-pass at :data:`FINE_CUTOFF`, forward and back."""
    noise = np.random.default_rng(seed).standard_normal(n + 200)
    omega = 2.0 * math.pi * FINE_CUTOFF
    low = _second_order(_second_order(noise, omega, math.sqrt(0.5), dt)[::-1], omega, math.sqrt(0.5), dt)[::-1]
    low = low[100:100 + n]
    return std * low / max(float(np.std(low)), 1e-9)


# --------------------------------------------------------------------------- spectrum

def shape_envelope(sp: np.ndarray, sr: int, voiced: np.ndarray, vib: np.ndarray, settings: WorldSettings) -> np.ndarray:
    """The spectral controls on a WORLD power envelope ``[frames, bins]``: formant shift, the singer's formant on
    voiced frames, and amplitude modulation following ``vib`` (the vibrato's deviation, -1..1)."""
    bins = sp.shape[1]
    freqs = np.linspace(0.0, sr / 2.0, bins)
    if settings.formant_shift:
        ratio = 2.0 ** (settings.formant_shift / 12.0)
        src = freqs / ratio
        log_sp = np.log(sp)
        sp = np.exp(np.stack([np.interp(src, freqs, row) for row in log_sp]))
    gain_db = np.zeros_like(sp)
    if settings.singers_formant_db:
        _, centre, width = SINGERS_FORMANT
        bump = settings.singers_formant_db * np.exp(-0.5 * ((freqs - centre) / width) ** 2)
        gain_db += voiced[:, None] * bump[None, :]
    gain_db += (AM_DB * vib)[:, None]
    return sp * 10.0 ** (gain_db / 10.0)


# --------------------------------------------------------------------------- the engine

def analyse(audio: np.ndarray, sr: int, analysis: SpeechAnalysis):
    """WORLD parameters of the speech (at :data:`MIN_RATE` or above) on the :data:`ANALYSIS_FRAME` grid:
    (times, f0, envelope, aperiodicity).

    F0 and voicing by Harvest, WORLD's own tracker, searched within the voice's range from the shared analysis;
    frames Harvest leaves unvoiced and Praat's analysis voices take Praat's F0 (on the development set this raises
    the share of judged note frames sung voiced from 0.958 to 0.972, with the voiced-aperiodicity cap).
    Resynthesised unchanged, the 19 development recordings keep a Resemblyzer similarity of 0.954 to themselves
    with Harvest, against 0.922 with Praat's F0 (refined by StoneMask) and 0.936 with DIO + StoneMask.

    Harvest is most of a conversion's time and runs on one core, so speech of more than :data:`PART_SECONDS` is
    cut into parts analysed at once on the cores this process may use, each with :data:`PART_OVERLAP` of speech
    around it that WORLD's windows see but whose frames are taken from the neighbouring part."""
    if sr < MIN_RATE:
        raise ValueError(f"WORLD analysis needs {MIN_RATE} Hz or more (D4C has no band below 12 kHz); got {sr}")
    x = audio.astype(np.float64)
    per_frame = Fraction(sr) * Fraction(ANALYSIS_FRAME).limit_denominator(100000)  # samples per frame
    grid = per_frame.denominator  # frames between the frame starts that fall on a whole sample
    total = 1 + int(len(x) / sr / ANALYSIS_FRAME)  # Harvest's frame count for the whole speech
    parts = max(1, min(_cores(), MAX_PARTS, int(len(x) / sr / PART_SECONDS)))
    edges = [total * i // parts // grid * grid for i in range(parts)] + [total]
    pad = int(math.ceil(PART_OVERLAP / ANALYSIS_FRAME / grid)) * grid

    def part(i: int):
        first = max(0, edges[i] - pad)
        end = len(x) if i == parts - 1 else min(len(x), int((edges[i + 1] + pad) * per_frame))
        f0, sp, ap = _analyse_span(x[int(first * per_frame):end], sr, analysis, first)
        keep = slice(edges[i] - first, edges[i + 1] - first)
        return f0[keep], sp[keep], ap[keep]

    if parts == 1:
        done = [part(0)]
    else:
        from concurrent.futures import ThreadPoolExecutor  # pyworld lets go of the GIL

        with ThreadPoolExecutor(parts) as pool:
            done = list(pool.map(part, range(parts)))
    f0, sp, ap = (np.concatenate(arrays) for arrays in zip(*done))
    return np.arange(total) * ANALYSIS_FRAME, f0, sp, ap


def _analyse_span(x: np.ndarray, sr: int, analysis: SpeechAnalysis, first: int):
    """Harvest (with Praat's voicing added), CheapTrick and D4C of one stretch of speech whose first frame is the
    speech's frame ``first``."""
    pw = _pyworld()
    f0, t = pw.harvest(x, sr, f0_floor=analysis.f0_floor, f0_ceil=analysis.f0_ceiling,
                       frame_period=ANALYSIS_FRAME * 1000.0)
    if analysis.f0 is not None:  # voiced where either tracker hears voice: Harvest drops some that Praat keeps
        from alignsts_cli.analysis import STEP

        at = np.round((t + first * ANALYSIS_FRAME) / STEP).astype(np.int64)
        f0 = np.where(f0 > 0, f0, analysis.f0[np.minimum(at, len(analysis.f0) - 1)])
    sp = pw.cheaptrick(x, f0, t, sr)
    # threshold 0: no voicing decision of D4C's own (the trackers' is used).
    ap = pw.d4c(x, f0, t, sr, threshold=0.0)
    return f0, sp, ap


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def sing(
    audio: np.ndarray,
    sr: int,
    melody: Melody,
    settings: WorldSettings | None = None,
    analysis: SpeechAnalysis | None = None,
    progress=None,
    groups=None,
) -> tuple[np.ndarray, dict]:
    """Sing ``[n]`` speech audio to ``melody``; returns (audio ``[round(melody.duration·sr)]``, info).

    The arguments are psola's (:func:`alignsts_cli.engines.psola.sing`). The same input and settings give
    the same output.
    """
    settings = (settings or WorldSettings()).check()
    analysis = analysis or analyse_speech(audio, sr)
    groups = groups if groups is not None else assign_syllables(analysis.syllables, melody.notes)
    if sr < MIN_RATE:
        from alignsts_cli.audio import resample

        song, info = sing(resample(audio, sr, MIN_RATE), MIN_RATE, melody, settings, analysis, progress, groups)
        n_out = int(round(melody.duration * sr))
        song = resample(song, MIN_RATE, sr)
        return np.pad(song, (0, max(0, n_out - len(song))))[:n_out], info
    pw = _pyworld()
    sylls, notes = analysis.syllables, melody.notes
    n_out = int(round(melody.duration * sr))
    t_in, f0_in, sp_in, ap_in = analyse(audio, sr, analysis)
    if progress:
        progress(1, 3)

    # Duration: every output frame's place in the speech (nan = silent).
    taus = np.arange(int(math.ceil(n_out / sr / FRAME)) + 1) * FRAME
    pos = np.full(len(taus), np.nan)
    gate = np.zeros(len(taus))
    for (s_idx, n_idx), (o0, o1) in zip(groups, group_spans(groups, sylls, notes)):
        if o1 - o0 < 0.02:
            continue
        kin, kout = time_map([sylls[k] for k in s_idx], o0, o1, len(audio) / sr)
        sel = (taus >= o0) & (taus < o1)
        pos[sel] = np.interp(taus[sel], kout, kin)
        gate[sel] = rest_gate(taus[sel], notes, n_idx)
    sounding = ~np.isnan(pos)
    frame = np.clip(np.nan_to_num(pos) / ANALYSIS_FRAME, 0.0, len(t_in) - 1.0)
    lo = np.floor(frame).astype(np.int64)
    hi = np.minimum(lo + 1, len(t_in) - 1)
    w = (frame - lo)[:, None]
    sp = np.exp((1 - w) * np.log(sp_in[lo] + 1e-16) + w * np.log(sp_in[hi] + 1e-16))
    ap = np.clip((1 - w) * ap_in[lo] + w * ap_in[hi], 0.0, 1.0)
    voiced = sounding & ((1 - w[:, 0]) * (f0_in[lo] > 0) + w[:, 0] * (f0_in[hi] > 0) >= 0.5)
    ap = np.where(voiced[:, None], np.minimum(ap, VOICED_APERIODICITY), ap)

    # F0 and spectrum.
    score = is_score(melody)
    f0 = sung_f0(melody, taus, settings, score)
    depth = settings.depth(score)
    vib = _vibrato(taus, notes, settings, score) / depth if depth > 0 else np.zeros(len(taus))
    f0 = np.where(voiced & (f0 > 0), f0, 0.0)
    sp = shape_envelope(sp, sr, voiced.astype(np.float64), vib, settings)
    if progress:
        progress(2, 3)
    song = pw.synthesize(np.ascontiguousarray(f0), np.ascontiguousarray(sp), np.ascontiguousarray(ap), sr,
                         FRAME * 1000.0)
    song = np.pad(song, (0, max(0, n_out - len(song))))[:n_out]
    env = _sample_gate(gate * sounding, sr, n_out)
    song = (song * env).astype(np.float32)
    if progress:
        progress(3, 3)
    info = plan_info(analysis, melody, groups) | {"f0_control": "score" if score else "contour"}
    return song, info


def _sample_gate(frame_gate: np.ndarray, sr: int, n: int) -> np.ndarray:
    """Frame gate -> per-sample gain, ramped over :data:`EDGE_FADE` inside every sounding stretch."""
    inside = _distance_to_shut(frame_gate > 0) * FRAME  # seconds to the nearest shut frame
    ramped = frame_gate * np.clip(inside / EDGE_FADE, 0.0, 1.0)
    return np.interp(np.arange(n) / sr, np.arange(len(frame_gate)) * FRAME, ramped)


def _distance_to_shut(open_: np.ndarray) -> np.ndarray:
    """Frames from each frame to the nearest shut one (``open_`` False), the frames beyond both ends counted shut."""
    shut = np.concatenate([[-1], np.flatnonzero(~open_), [len(open_)]])
    idx = np.arange(len(open_))
    after = np.searchsorted(shut, idx)
    return np.minimum(idx - shut[after - 1], shut[after] - idx).astype(np.float64) * open_
