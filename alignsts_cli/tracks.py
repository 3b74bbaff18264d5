"""Which part of a multi-part score is the tune: parts, what they look like, and the choice.

A *part* is one line of music as a file stores it: one MIDI track on one channel (a type-0 file, with
everything on one track, has one part per channel), or one MusicXML part. The tune is chosen by what a
musician would look at, each a hint with a weight (:func:`rank`):

- lyrics on the part: the strongest hint (karaoke files, vocal exports);
- the name: melody, vocal, voice, lead, soprano, tune, ... for; piano, bass, drums, chords, pad,
  accompaniment, alto, tenor, ... against;
- the General MIDI program: choir and voice programs, then typical lead instruments (brass, reeds,
  pipes, synth leads, violin) for; bass, pads, ensembles, pianos, organs and guitars against;
- the shape: one note at a time beats chords (polyphony), stepwise motion beats arpeggios (the median
  leap), varied note lengths beat a steady accompaniment pattern, and a line above the bass register
  beats a bass line;
- in a choir score (several voice parts), the top voice is the tune;
- a part with only a handful of notes is an ornament, not the tune.

The highest total wins; when the runner-up is close (:data:`CLOSE_CALL`) the choice is called
uncertain, and ``convert`` says which part it took and how to pick another.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from alignsts_cli.melody import Note

#: A runner-up within this many points makes the choice uncertain.
CLOSE_CALL = 1.5
#: General MIDI program families (program // 8), for tables.
GM_FAMILIES = ("piano", "chromatic perc.", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects")
_FOR = re.compile(r"melod|vocal|voice|vox|lead|sing|solo|lyric|tune|soprano|sopran|cantus|canto|chant|topline|"
                  r"air\b|theme", re.IGNORECASE)
_AGAINST = re.compile(r"piano|bass|drum|perc|chord|accomp|comp\b|pad|string|guitar|organ|rhythm|harmon|backing|"
                      r"alto|tenor|baritone|\bbari|contralto|harp|keys|synth|arp|ostinato|click", re.IGNORECASE)
_CHOIR_PART = re.compile(r"soprano|sopran|alto|contralto|tenor|baritone|\bbass\b|\bs\.|\ba\.|\bt\.|\bb\.|choir|"
                         r"chorus|voice|vocal", re.IGNORECASE)
_VOICE_PROGRAMS = {52, 53, 54, 85}  # choir aahs, voice oohs, synth voice, lead 6 (voice)


@dataclass
class Part:
    index: int  # MIDI track (0 = first in the file) or MusicXML part (0 = first)
    channel: int | None  # MIDI channel, 0-based; None for MusicXML
    name: str
    program: int | None  # General MIDI program 0-127, when the file says
    notes: list[Note]
    lyrics: bool = False
    score: float = 0.0  # filled in by rank()
    reasons: list[str] = field(default_factory=list)

    def label(self) -> str:
        where = f"track {self.index}" if self.channel is not None else f"part {self.index}"
        name = f" '{self.name}'" if self.name else ""
        ch = f" (channel {self.channel + 1})" if self.channel is not None else ""
        return where + name + ch

    @property
    def pitches(self) -> np.ndarray:
        return np.array([n.pitch for n in self.notes], dtype=np.float64)

    @property
    def median_pitch(self) -> float:
        return float(np.median(self.pitches)) if self.notes else 0.0

    @property
    def duration(self) -> float:
        return max(n.end for n in self.notes) - min(n.start for n in self.notes) if self.notes else 0.0


def polyphony(notes: list[Note]) -> float:
    """Share of the sounding time during which two or more notes sound at once (0 = a single line)."""
    if len(notes) < 2:
        return 0.0
    edges = sorted([(n.start, 1) for n in notes] + [(n.end, -1) for n in notes])
    sounding = more = 0.0
    active, last = 0, edges[0][0]
    for t, d in edges:
        if active >= 1:
            sounding += t - last
        if active >= 2:
            more += t - last
        active, last = active + d, t
    return more / sounding if sounding > 0 else 0.0


def median_leap(notes: list[Note]) -> float:
    """Median size, in semitones, of the steps between consecutive notes (by start time)."""
    if len(notes) < 2:
        return 0.0
    p = np.array([n.pitch for n in sorted(notes, key=lambda n: n.start)])
    return float(np.median(np.abs(np.diff(p))))


def length_variety(notes: list[Note]) -> float:
    """Coefficient of variation of the notes' lengths (0 = all alike, as in a steady pattern)."""
    d = np.array([n.duration for n in notes])
    return float(d.std() / d.mean()) if len(d) > 1 and d.mean() > 0 else 0.0


def rank(parts: list[Part]) -> list[Part]:
    """Score every part (see the module docstring) and return them best first; ``score`` and
    ``reasons`` are filled in."""
    parts = [p for p in parts if p.notes]
    if not parts:
        return []
    most = max(len(p.notes) for p in parts)
    choir = [p for p in parts if _CHOIR_PART.search(p.name) or p.program in (52, 53, 54)]
    choir = choir if len(choir) >= 2 else []
    top = max(parts, key=lambda p: p.median_pitch)
    for p in parts:
        s, why = 0.0, []

        def hint(points: float, reason: str):
            nonlocal s
            s += points
            why.append(f"{reason} {points:+g}")

        if p.lyrics:
            hint(4, "lyrics")
        if _FOR.search(p.name):
            hint(3, "name")
        elif _AGAINST.search(p.name):
            hint(-2, "name")
        if p.program is not None:
            fam = p.program // 8
            if p.program in _VOICE_PROGRAMS:
                hint(2, "voice program")
            elif fam in (7, 8, 9, 10) or p.program in (40, 41):
                hint(1, "lead program")
            elif fam == 4:
                hint(-2, "bass program")
            elif fam in (6, 11, 12) or p.program in (48, 49, 50, 51):
                hint(-1.5, "pad/ensemble program")
            elif fam in (0, 1, 2, 3):
                hint(-0.5, "accompaniment program")
        poly = polyphony(p.notes)
        if poly > 0.05:
            hint(-round(4 * poly, 2), f"chords ({poly:.0%} of the time)")
        leap = median_leap(p.notes)
        if leap > 2.5:
            hint(-round(1.5 * min(1.0, (leap - 2.5) / 2.5), 2), f"leaps (median {leap:g} semitones)")
        if len(p.notes) >= 16 and length_variety(p.notes) < 0.15:
            hint(-1, "steady pattern")
        if p.median_pitch < 45:
            hint(-2, "bass register")
        elif p is top:
            hint(1, "highest line")
        if choir and p in choir:
            if p is max(choir, key=lambda q: q.median_pitch):
                hint(2, "top voice of the choir")
            else:
                hint(-2, "lower voice of the choir")
        if len(p.notes) < max(4, 0.15 * most):
            hint(-3, "few notes")
        p.score, p.reasons = round(s, 2), why
    return sorted(parts, key=lambda p: (-p.score, -len(p.notes), p.index, p.channel or 0))


def choose(parts: list[Part]) -> tuple[Part, bool, list[Part]]:
    """(the tune, whether the choice is uncertain, all parts best first)."""
    ranked = rank(parts)
    if not ranked:
        raise ValueError("no part has notes")
    uncertain = len(ranked) > 1 and ranked[0].score - ranked[1].score < CLOSE_CALL
    return ranked[0], uncertain, ranked
