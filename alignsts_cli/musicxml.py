"""MusicXML (``.musicxml``, ``.mxl``, ``.xml``: what notation programs save) as a melody, through music21.

Every part of the score becomes a ``tracks.Part`` (its name, its instrument's General MIDI program,
whether it has lyrics), so the tune is chosen as for MIDI (``--track`` takes a part's number, from 0,
or part of its name). Tied notes are one note; rests are rests; the pickup bar starts the song at
its first note; tempo marks (metronome marks, anywhere in the score) set the seconds. music21 is the
optional ``musicxml`` extra; without it a file is refused in one line naming the extra.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import HOP, Melody, Note, melody_from_parts


def _music21():
    try:
        import music21
    except ImportError:
        raise AlignSTSError("reading MusicXML needs music21: pip install 'alignsts[musicxml]' "
                            "(or export the melody as MIDI)") from None
    return music21


def _seconds(score):
    """quarter-note offset -> seconds under the score's metronome marks (120 per quarter before any)."""
    spans = [(float(a), float(b), float(mm.getQuarterBPM() or 120.0)) for a, b, mm in score.metronomeMarkBoundaries()]

    def at(q: float) -> float:
        t = 0.0
        for a, b, qpm in spans:
            if q <= a:
                break
            t += (min(q, b) - a) * 60.0 / qpm
        if spans and q > spans[-1][1]:
            t += (q - spans[-1][1]) * 60.0 / spans[-1][2]
        return t

    return at


def read_parts(path: str | os.PathLike) -> list:
    """The parts of a MusicXML file as ``tracks.Part`` (notes in seconds from the score's first note)."""
    from alignsts_cli.tracks import Part

    m21 = _music21()
    p = Path(path)
    try:
        score = m21.converter.parse(str(p))
    except Exception as exc:  # music21 raises many kinds on a broken file
        raise AlignSTSError(f"{p}: not a readable MusicXML file ({str(exc)[:120] or type(exc).__name__}); "
                            "save it from your notation program again") from None
    at = _seconds(score)
    parts = []
    for k, part in enumerate(score.parts):
        tied = part.stripTies(inPlace=False)
        notes, lyrics = [], False
        for el in tied.recurse().notes:  # notes and chords, ties already joined
            start = float(el.getOffsetInHierarchy(tied))
            end = start + float(el.duration.quarterLength)
            if end <= start:
                continue  # grace notes
            lyrics = lyrics or bool(getattr(el, "lyrics", None))
            for pitch in (el.pitches if el.isChord else [el.pitch]):
                notes.append(Note(at(start), at(end), float(pitch.midi)))
        inst = part.getInstrument(returnDefault=False)
        program = getattr(inst, "midiProgram", None) if inst is not None else None
        name = (part.partName or (inst.instrumentName if inst is not None else "") or "").strip()
        parts.append(Part(k, None, name, program, sorted(notes, key=lambda n: (n.start, n.pitch)), lyrics))
    if parts:
        first = min((n.start for pt in parts for n in pt.notes), default=0.0)
        for pt in parts:  # the song starts with its first note (a pickup bar is not a rest)
            pt.notes = [Note(n.start - first, n.end - first, n.pitch) for n in pt.notes]
    return parts


def load_musicxml(path: str | os.PathLike, *, part: str | int | None = None, hop: float = HOP) -> Melody:
    """A melody from a MusicXML file: the part a user would mean (``tracks.choose``), or ``part`` (its
    number from 0, or part of its name)."""
    p = Path(path).expanduser()
    parts = read_parts(p)
    with_notes = [pt for pt in parts if pt.notes]
    listed = ", ".join(f"{pt.index} '{pt.name or 'unnamed'}' ({len(pt.notes)} notes)" for pt in with_notes) or "none"
    if not with_notes:
        raise AlignSTSError(f"{p}: the score has no notes; give a score with a melody")
    if part is not None:
        key = str(part).strip()
        if re.fullmatch(r"\d+", key):
            pool = [pt for pt in parts if pt.index == int(key)]
        else:
            pool = [pt for pt in parts if key.lower() in pt.name.lower()]
        pool = [pt for pt in pool if pt.notes]
        if not pool:
            raise AlignSTSError(f"{p}: no part '{key}' with notes; parts: {listed}")
        with_notes = pool
    return melody_from_parts(p, with_notes, asked=part is not None, hop=hop)
