"""The syllable-to-note plan as a file a user can edit: which stretch of the speech goes on which note(s).

``convert --save-plan plan.json`` writes it; ``convert --plan plan.json`` sings an edited one. The file:

.. code-block:: json

    {"format": "alignsts-plan", "version": 1, "speech": "take1.wav", "melody": "song.mid",
     "syllables": [{"index": 0, "start": 0.12, "vowel": [0.2, 0.35], "end": 0.4}, ...],
     "notes": [{"index": 0, "start": 0.0, "end": 0.5, "pitch": 60, "name": "C4"}, ...],
     "plan": [{"syllables": [0], "notes": [0]}, {"syllables": [1, 2], "notes": [1]}, ...]}

A syllable runs from ``start`` to ``end`` in the speech (seconds); its ``vowel`` is the stretchable
core, the parts before and after it are consonants, kept at their natural length. Each entry of
``plan`` sings a run of consecutive syllables on a run of consecutive notes; entries go in the
melody's order and use each note once; a note no entry uses is a rest. Editing means moving
syllables between entries (even out of speech order: a swapped pair is sung swapped), moving a
syllable's boundaries, or dropping one. The notes are the melody's and are only listed to read; the
plan must have been made for a melody with as many notes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from alignsts_cli.analysis import Syllable
from alignsts_cli.errors import AlignSTSError

FORMAT = "alignsts-plan"
Groups = list[tuple[list[int], list[int]]]


def plan_dict(syllables: list[Syllable], notes, groups: Groups, *, speech: str = "", melody: str = "") -> dict:
    """The plan as plain JSON data (see the module docstring)."""
    from alignsts_cli.melody import note_name

    r = lambda x: round(float(x), 3)  # noqa: E731
    return {
        "format": FORMAT, "version": 1, "speech": speech, "melody": melody,
        "syllables": [{"index": k, "start": r(s.start), "vowel": [r(s.core_start), r(s.core_end)], "end": r(s.end)}
                      for k, s in enumerate(syllables)],
        "notes": [{"index": k, "start": r(n.start), "end": r(n.end), "pitch": r(n.pitch), "name": note_name(n.pitch)}
                  for k, n in enumerate(notes)],
        "plan": [{"syllables": list(map(int, s)), "notes": list(map(int, n))} for s, n in groups],
    }


def write_plan(path: str | os.PathLike, syllables, notes, groups: Groups, **names) -> Path:
    from alignsts_cli.files import write_json

    return write_json(Path(path), plan_dict(syllables, notes, groups, **names))


def read_plan(path: str | os.PathLike, notes, speech_seconds: float) -> tuple[list[Syllable], Groups]:
    """The syllables and groups of an (edited) plan file, checked against ``notes`` (the melody's) and the
    speech's length; a mistake raises ``AlignSTSError`` naming the entry."""
    from alignsts_cli.files import read_json

    p = Path(path).expanduser()
    data = read_json(p, missing="no such plan file; write one with convert --save-plan",
                     unreadable="not a readable plan", fix="write one with convert --save-plan")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AlignSTSError(f"{p}: not an alignsts plan (no \"format\": \"{FORMAT}\"); write one with convert --save-plan")
    if len(data.get("notes", [])) != len(notes):
        raise AlignSTSError(f"{p}: the plan was made for a melody of {len(data.get('notes', []))} notes, this one has "
                            f"{len(notes)}; save a plan for this melody with --save-plan")
    sylls = []
    for k, s in enumerate(data.get("syllables") or []):
        try:
            a, (v0, v1), b = float(s["start"]), map(float, s["vowel"]), float(s["end"])
        except (KeyError, TypeError, ValueError):
            raise AlignSTSError(f"{p}: syllable {k}: give start, vowel [from, to] and end in seconds") from None
        if not (0.0 <= a <= v0 < v1 <= b <= speech_seconds + 0.05) or not all(map(math.isfinite, (a, v0, v1, b))):
            raise AlignSTSError(f"{p}: syllable {k}: start {a} <= vowel {v0}-{v1} <= end {b} must lie within the "
                                f"speech's {speech_seconds:.2f} s, in that order")
        sylls.append(Syllable(a, b, v0, v1, (v0 + v1) / 2))
    if not sylls:
        raise AlignSTSError(f"{p}: the plan lists no syllables")
    groups: Groups = []
    last_note = -1
    for e, entry in enumerate(data.get("plan") or []):
        try:
            s_idx, n_idx = [int(x) for x in entry["syllables"]], [int(x) for x in entry["notes"]]
        except (KeyError, TypeError, ValueError):
            raise AlignSTSError(f"{p}: plan entry {e}: give \"syllables\": [...] and \"notes\": [...]") from None
        for what, idx, count in (("syllables", s_idx, len(sylls)), ("notes", n_idx, len(notes))):
            if not idx:
                raise AlignSTSError(f"{p}: plan entry {e}: lists no {what}")
            if any(i < 0 or i >= count for i in idx):
                raise AlignSTSError(f"{p}: plan entry {e}: {what} {idx} go past the {count} there are (numbered from 0)")
            if idx != list(range(idx[0], idx[0] + len(idx))):
                raise AlignSTSError(f"{p}: plan entry {e}: {what} {idx} must be consecutive and ascending")
        if n_idx[0] <= last_note:
            raise AlignSTSError(f"{p}: plan entry {e}: notes {n_idx} come before or on a note of an earlier entry; "
                                "entries go in the melody's order, each note once")
        last_note = n_idx[-1]
        groups.append((s_idx, n_idx))
    if not groups:
        raise AlignSTSError(f"{p}: the plan has no entries; nothing would be sung")
    return sylls, groups
