"""Melody input: a MIDI file, an F0 contour (CSV) or a reference singing recording,
turned into one target F0 contour that every engine uses.

A ``Melody`` is an F0 contour on a fixed grid (``f0[i]`` is the pitch in Hz at time
``i * hop`` seconds, 0 = unvoiced / rest) plus the list of notes it is made of. For
MIDI the notes come from the file; for a contour they are segmented from it.
"""
from __future__ import annotations

import heapq
import io
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output, check_output_path

#: Grid of every melody contour, in seconds (10 ms, the CREPE convention).
HOP = 0.01
#: Sane range of a sung melody after transposition, in Hz.
MIN_F0_HZ = 50.0
MAX_F0_HZ = 1100.0
#: Longest melody accepted, in seconds.
MAX_MELODY_SECONDS = 360.0
#: ``--tempo`` factors accepted (2 = twice as fast).
MIN_TEMPO, MAX_TEMPO = 0.1, 10.0
#: Largest ``--transpose``, semitones (four octaves: the melody's range is checked after it too).
MAX_TRANSPOSE = 48.0
#: Shortest sung time accepted, seconds: the notes together, after ``--tempo``.
MIN_SUNG_SECONDS = 0.1
#: Longest melody file read, in seconds: what ``MAX_TEMPO`` brings down to ``MAX_MELODY_SECONDS``. Checked on
#: the notes' or contour's end time before anything is rendered, so a tiny file with one note of 2^28 ticks or
#: a CSV row at 1e7 s is refused at once instead of filling the memory.
MAX_READ_SECONDS = MAX_MELODY_SECONDS * MAX_TEMPO
#: Praat autocorrelation settings for singing (docs/audio-and-metrics.md).
SINGING_F0_FLOOR = 80.0
SINGING_F0_CEILING = 750.0
SINGING_VOICING_THRESHOLD = 0.6
#: Pitch trackers for reference singing (``--f0-method``), and the default: SwiftF0 tracked sung audio with
#: known notes best of the trackers that install with this torch (``benchmarks/f0_trackers.py``, README).
F0_METHODS = ("swift", "praat")
REFERENCE_F0_METHOD = "swift"
#: SwiftF0's search range for singing, Hz (its model covers 46.875-2093.75): a bass's low notes to a soprano's.
SWIFT_F0_FLOOR = 50.0
SWIFT_F0_CEILING = 1100.0
#: SwiftF0 frames at or above this confidence are voiced (its documented calibration).
SWIFT_VOICED = 0.5
#: MIDI channel that General MIDI reserves for drums (0-based; "channel 10" to a musician).
DRUM_CHANNEL = 9
#: Pitch-bend range assumed for MIDI files, in semitones (the General MIDI default).
PITCH_BEND_RANGE = 2.0

MIDI_EXTENSIONS = (".mid", ".midi", ".kar", ".smf")
MUSICXML_EXTENSIONS = (".musicxml", ".mxl", ".xml")
CSV_EXTENSIONS = (".csv", ".tsv", ".txt", ".f0")


def midi_to_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(f):
    return 69.0 + 12.0 * np.log2(np.asarray(f, dtype=np.float64) / 440.0)


def note_name(pitch: float) -> str:
    """MIDI note number -> name with octave (60 -> C4)."""
    k = int(round(float(pitch)))
    return ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")[k % 12] + str(k // 12 - 1)


@dataclass
class Note:
    start: float  # seconds
    end: float  # seconds
    pitch: float  # MIDI note number (may be fractional for notes found in a contour)
    channel: int | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Melody:
    f0: np.ndarray  # [T] Hz on the HOP grid, 0 = unvoiced
    notes: list[Note]
    source: str = ""
    hop: float = HOP
    info: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.f0) * self.hop

    @property
    def times(self) -> np.ndarray:  # [T]
        return np.arange(len(self.f0)) * self.hop

    @property
    def voiced(self) -> np.ndarray:  # [T] bool
        return self.f0 > 0

    def f0_at(self, times: np.ndarray) -> np.ndarray:
        """Contour value at arbitrary times (nearest frame; 0 outside)."""
        idx = np.round(np.asarray(times) / self.hop).astype(np.int64)
        out = np.zeros(idx.shape, dtype=np.float64)
        ok = (idx >= 0) & (idx < len(self.f0))
        out[ok] = self.f0[idx[ok]]
        return out

    def frames(self, hop: float, n_frames: int | None = None) -> np.ndarray:
        """The contour on another grid of ``hop`` seconds, ``[n_frames]`` (nearest frame)."""
        n = n_frames if n_frames is not None else int(math.ceil(self.duration / hop))
        return self.f0_at(np.arange(n) * hop)

    def median_midi(self) -> float:
        return float(np.median(hz_to_midi(self.f0[self.voiced])))

    def transposed(self, semitones: float) -> "Melody":
        if semitones == 0:
            return self
        ratio = 2.0 ** (semitones / 12.0)
        notes = [replace(n, pitch=n.pitch + semitones) for n in self.notes]
        return replace(self, f0=self.f0 * ratio, notes=notes)

    def stretched(self, tempo: float) -> "Melody":
        """Play at ``tempo`` times the speed (2.0 = twice as fast, half as long)."""
        if tempo == 1.0:
            return self
        n = int(math.ceil(self.duration / tempo / self.hop))
        f0 = self.f0_at(np.arange(n) * self.hop * tempo)
        notes = [replace(x, start=x.start / tempo, end=x.end / tempo) for x in self.notes]
        return replace(self, f0=f0, notes=notes)


# --------------------------------------------------------------------------- MIDI

@dataclass
class MidiTrack:
    index: int
    name: str
    notes: list[Note]  # melodic notes, drums excluded
    drum_notes: int
    has_lyrics: bool
    bends: dict  # channel -> list of (seconds, semitones)
    programs: dict = field(default_factory=dict)  # channel -> General MIDI program (the first set)

    def parts(self, fallback_programs: dict | None = None) -> list:
        """One ``tracks.Part`` per channel this track plays on (drums excluded)."""
        from alignsts_cli.tracks import Part

        fallback = fallback_programs or {}
        out = []
        for ch in sorted({n.channel for n in self.notes}):
            out.append(Part(self.index, ch, self.name, self.programs.get(ch, fallback.get(ch)),
                            [n for n in self.notes if n.channel == ch], self.has_lyrics))
        return out


def _tempo_map(p: Path, mid, track_indices) -> list[tuple[int, int]]:
    changes = []
    for i in track_indices:
        tick = 0
        for msg in mid.tracks[i]:
            tick += msg.time
            if msg.type == "set_tempo":
                if msg.tempo <= 0:
                    raise AlignSTSError(f"{p}: track {i} sets a tempo of 0 at tick {tick}, which MIDI does not allow; "
                                        "fix the tempo in your editor and export the file again")
                changes.append((tick, msg.tempo))
    changes.sort(key=lambda c: c[0])
    return changes


def _smpte_seconds_per_tick(division: int) -> float | None:
    """Seconds per tick of an SMPTE-timed file (a negative division as mido reads it: -frames per second in
    the high byte, ticks per frame in the low), or None for the usual ticks-per-beat division."""
    if division >= 0:
        return None
    raw = division & 0xFFFF
    fps, per_frame = 256 - (raw >> 8), raw & 0xFF
    fps = 29.97 if fps == 29 else float(fps)  # "29" is drop-frame 30 fps
    return 1.0 / (fps * per_frame) if fps > 0 and per_frame > 0 else 0.0


def _clock(p: Path, mid, track_indices):
    """A function mapping absolute ticks of these tracks to seconds: the tempo map over ticks per beat, or the
    fixed tick of an SMPTE-timed file (which ignores tempo changes, as the standard says)."""
    smpte = _smpte_seconds_per_tick(mid.ticks_per_beat)
    if mid.ticks_per_beat == 0 or smpte == 0.0:
        raise AlignSTSError(f"{p}: the header gives 0 ticks per beat, so no note has a time; "
                            "export the melody from your editor again")
    if smpte is not None:
        return lambda tick: tick * smpte
    return _tick_to_seconds(_tempo_map(p, mid, track_indices), mid.ticks_per_beat)


def _tick_to_seconds(tempo_changes, ticks_per_beat: int):
    """Return a function mapping absolute ticks to seconds under a tempo map."""
    points = [(0, 0.0, 500000)]  # (tick, seconds at tick, tempo from tick on)
    for tick, tempo in tempo_changes:
        t0, s0, tempo0 = points[-1]
        sec = s0 + (tick - t0) * tempo0 / 1e6 / ticks_per_beat
        if tick == t0:
            points[-1] = (t0, s0, tempo)
        else:
            points.append((tick, sec, tempo))
    starts = np.array([p[0] for p in points])

    def convert(tick: int) -> float:
        k = int(np.searchsorted(starts, tick, side="right") - 1)
        t0, s0, tempo = points[k]
        return s0 + (tick - t0) * tempo / 1e6 / ticks_per_beat

    return convert


def read_midi_tracks(path: str | os.PathLike) -> list[MidiTrack]:
    """Every track of a MIDI file with its notes in seconds (tempo map honoured)."""
    import mido

    p = _existing(path, "MIDI")
    try:
        # From memory: a header that declares a chunk larger than the file then reads what there is, where a
        # read from disk would first allocate all it declares (200 MB for an 8-byte file).
        mid = mido.MidiFile(file=io.BytesIO(p.read_bytes()), clip=True)
    except Exception as exc:
        raise AlignSTSError(
            f"{p}: not a valid MIDI file ({str(exc) or type(exc).__name__}); export the melody from your editor again"
        ) from None
    if mid.type == 2:  # independent songs: each track keeps its own tempo map
        maps = {i: _clock(p, mid, [i]) for i in range(len(mid.tracks))}
    else:
        shared = _clock(p, mid, range(len(mid.tracks)))
        maps = {i: shared for i in range(len(mid.tracks))}
    tracks = []
    for i, trk in enumerate(mid.tracks):
        sec = maps[i]
        tick = 0
        name = ""
        open_notes: dict[tuple[int, int], deque[int]] = {}
        spans: list[tuple[int, int, int, int]] = []  # start tick, end tick, note, channel
        bends: dict[int, list[tuple[float, float]]] = {}
        programs: dict[int, int] = {}
        lyrics = False
        for msg in trk:
            tick += msg.time
            if msg.type == "track_name" and not name:
                name = msg.name.strip()
            elif msg.type == "lyrics":
                lyrics = True
            elif msg.type == "program_change":
                programs.setdefault(msg.channel, msg.program)
            elif msg.type == "note_on" and msg.velocity > 0:
                open_notes.setdefault((msg.channel, msg.note), deque()).append(tick)
            elif msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
                starts = open_notes.get((msg.channel, msg.note))
                if starts:
                    spans.append((starts.popleft(), tick, msg.note, msg.channel))
            elif msg.type == "pitchwheel":
                bends.setdefault(msg.channel, []).append((sec(tick), msg.pitch / 8192.0 * PITCH_BEND_RANGE))
        for (ch, note), starts in open_notes.items():  # notes never released end with the track
            spans.extend((s, tick, note, ch) for s in starts)
        timed = ((sec(a), sec(b), n, ch) for a, b, n, ch in sorted(spans) if ch != DRUM_CHANNEL)
        notes = [Note(a, b, float(n), ch) for a, b, n, ch in timed if b > a]
        drums = sum(1 for s in spans if s[3] == DRUM_CHANNEL)
        tracks.append(MidiTrack(i, name, notes, drums, lyrics, bends, programs))
    return tracks


def describe_tracks(tracks: list[MidiTrack]) -> str:
    parts = [f"{t.index} '{t.name or 'unnamed'}' ({len(t.notes)} notes)" for t in tracks if t.notes]
    return ", ".join(parts) if parts else "none"


def skyline(notes: list[Note], min_piece: float = 0.02) -> list[Note]:
    """Reduce overlapping notes to one line: the highest sounding note wins.

    Returns non-overlapping notes sorted by time. Pieces shorter than ``min_piece``
    left over from brief overlaps are dropped.
    """
    if not notes:
        return []
    bounds = sorted({n.start for n in notes} | {n.end for n in notes})
    order = sorted(range(len(notes)), key=lambda k: notes[k].start)
    # The sounding notes, highest (then latest) first; notes that have ended leave when they reach the top, so
    # a thick chord costs log time per note instead of a pass over all it holds at every boundary.
    sounding: list[tuple[float, float, int]] = []
    nxt = 0
    pieces: list[tuple[float, float, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        while nxt < len(order) and notes[order[nxt]].start <= a:
            k = order[nxt]
            heapq.heappush(sounding, (-notes[k].pitch, -notes[k].start, nxt))
            nxt += 1
        while sounding and notes[order[sounding[0][2]]].end <= a:
            heapq.heappop(sounding)
        if not sounding:
            continue
        best = order[sounding[0][2]]
        if pieces and pieces[-1][2] == best and abs(pieces[-1][1] - a) < 1e-9:
            pieces[-1] = (pieces[-1][0], b, best)
        else:
            pieces.append((a, b, best))
    out = []
    for a, b, k in pieces:
        if b - a < min_piece and b - a < notes[k].duration:
            continue
        out.append(Note(a, b, notes[k].pitch, notes[k].channel))
    return out


def load_midi(
    path: str | os.PathLike,
    *,
    track: str | int | None = None,
    channel: int | None = None,
    pitch_bend: bool = False,
    hop: float = HOP,
) -> Melody:
    """A melody from a MIDI file.

    ``track``: index (0-based, file order) or part of a track name; ``channel``: 1-16; by default
    the part (a track on one channel) a user would mean (``tracks.choose``: lyrics, names, programs,
    a single line above the bass; a choir's top voice), and ``info["notices"]`` says so when that
    was a close call. Drums (channel 10) are ignored, overlapping notes are reduced to their top
    line, rests are unvoiced.
    """
    p = Path(path).expanduser()
    tracks = read_midi_tracks(p)
    if channel is not None and not 1 <= channel <= 16:
        raise AlignSTSError(f"--channel {channel}: MIDI channels are numbered 1 to 16")
    if channel is not None and channel - 1 == DRUM_CHANNEL:
        raise AlignSTSError("--channel 10 is the drum channel, which has no melody; choose another channel")

    if track is not None:
        pool = [_find_track(tracks, track, p)]
    else:
        pool = tracks
    programs: dict[int, int] = {}
    for t in tracks:  # a program set on another track (a conductor track, say) still names the channel
        for ch, prog in t.programs.items():
            programs.setdefault(ch, prog)
    parts = [part for t in pool for part in t.parts(programs) if channel is None or part.channel == channel - 1]
    if not parts:
        if track is not None:
            chosen = pool[0]
            where = f"track {chosen.index} '{chosen.name or 'unnamed'}'" + (f" on channel {channel}" if channel else "")
            if chosen.drum_notes and not chosen.notes:
                raise AlignSTSError(f"{p}: {where} has only drum notes (channel 10); tracks with notes: {describe_tracks(tracks)}")
            raise AlignSTSError(f"{p}: {where} has no notes; tracks with notes: {describe_tracks(tracks)}")
        if channel is not None and any(t.notes for t in tracks):
            raise AlignSTSError(f"{p}: no notes on channel {channel}; tracks with notes: {describe_tracks(tracks)}")
        if any(t.drum_notes for t in tracks):
            raise AlignSTSError(f"{p}: the file has only drum notes (channel 10); give a MIDI file with a melody")
        raise AlignSTSError(f"{p}: the MIDI file has no notes; give a file with a melody")
    bends = {t.index: t.bends for t in tracks} if pitch_bend else None
    return melody_from_parts(p, parts, asked=track is not None or channel is not None, hop=hop, bends=bends)


def melody_from_parts(p: Path, parts: list, *, asked: bool, hop: float = HOP, bends: dict | None = None) -> Melody:
    """The melody of the part (``tracks.choose``) that is the tune, its chords reduced to the top line;
    a close call not ``asked`` for (no --track/--channel) leaves a line in ``info["notices"]``.
    ``bends``: {track index: pitch bends} to apply."""
    from alignsts_cli.tracks import choose

    chosen, uncertain, ranked = choose(parts)
    notes = skyline(chosen.notes)
    if not notes:
        raise AlignSTSError(f"{p}: every note of {chosen.label()} is shorter than 20 ms; check the file's tempo")
    check_read_length(p, max(n.end for n in notes))
    f0 = render_notes(notes, hop, bends=bends.get(chosen.index) if bends else None)
    info = {"track": chosen.index, "track_name": chosen.name, "notes": len(notes)}
    if chosen.channel is not None:
        info["channel"] = chosen.channel + 1
    if uncertain and not asked:
        how = "--track/--channel" if chosen.channel is not None else "--track"
        info["notices"] = [
            f"note: {p.name}: sang {chosen.label()} as the melody, a close call over {ranked[1].label()}; "
            f"`alignsts inspect {p.name}` lists them, {how} picks another"
        ]
    return Melody(f0=f0, notes=notes, source=str(p), hop=hop, info=info)


def _find_track(tracks: list[MidiTrack], track: str | int, p: Path) -> MidiTrack:
    key = str(track).strip()
    if re.fullmatch(r"\d+", key):
        i = int(key)
        if i >= len(tracks):
            raise AlignSTSError(
                f"{p}: there is no track {i} (the file has {len(tracks)}, numbered from 0); "
                f"tracks with notes: {describe_tracks(tracks)}"
            )
        return tracks[i]
    matches = [t for t in tracks if key.lower() in t.name.lower()]
    if not matches:
        raise AlignSTSError(f"{p}: no track named like '{key}'; tracks with notes: {describe_tracks(tracks)}")
    return max(matches, key=lambda t: len(t.notes))


def render_notes(notes: list[Note], hop: float = HOP, *, bends: dict | None = None) -> np.ndarray:
    """F0 contour ``[T]`` (Hz) of non-overlapping notes; T ends with the last note."""
    end = max(n.end for n in notes)
    n_frames = int(math.ceil(end / hop - 1e-9))
    midi = np.zeros(n_frames)
    t = np.arange(n_frames) * hop
    # Frames t with start - 1e-9 <= t < end - 1e-9, found by bisection: linear in notes plus frames.
    starts = np.searchsorted(t, np.array([n.start for n in notes]) - 1e-9, side="left")
    stops = np.searchsorted(t, np.array([n.end for n in notes]) - 1e-9, side="left")
    curves = {ch: (np.array([e[0] for e in ev]), np.array([e[1] for e in ev])) for ch, ev in (bends or {}).items() if ev}
    for n, a, b in zip(notes, starts, stops):
        midi[a:b] = n.pitch
        if n.channel in curves and b > a:
            bt, bv = curves[n.channel]
            k = np.searchsorted(bt, t[a:b], side="right") - 1
            midi[a:b] += np.where(k >= 0, bv[np.maximum(k, 0)], 0.0)
    return np.where(midi > 0, midi_to_hz(np.maximum(midi, 1)), 0.0)


def check_read_length(source: str | os.PathLike, end_seconds: float) -> None:
    """Refuse a melody file that ends after ``MAX_READ_SECONDS``, before its contour is made."""
    if not end_seconds <= MAX_READ_SECONDS:  # NaN too
        raise AlignSTSError(
            f"{source}: the melody lasts {end_seconds / 60:.4g} min, more than the {MAX_MELODY_SECONDS / 60:.0f} min "
            f"this tool converts at once (even at --tempo {MAX_TEMPO:g}); split the song into sections and convert each"
        )


# --------------------------------------------------------------------------- CSV

#: Largest F0 value a contour file may hold: the top of hearing, in Hz or as a MIDI note number.
MAX_CSV_HZ = 20000.0
MAX_CSV_MIDI = 135.0

_TIME_NAMES = ("time", "times", "t", "timestamp", "seconds", "sec", "s")
_F0_NAMES = ("frequency", "f0", "pitch", "freq", "hz", "f0_hz", "midi", "note", "midi_note")
_CONF_NAMES = ("confidence", "conf", "periodicity", "voicing", "probability", "prob", "activation")


def _num(field_: str) -> float | None:
    field_ = field_.strip().strip('"').strip("'")
    if field_ == "":
        return None
    return float(field_)


def _csv_lines(p: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank, non-comment lines of an F0 CSV."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AlignSTSError(f"{p}: not a text file; an F0 CSV has lines like 'time,frequency,confidence'") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise AlignSTSError(f"{p}: the CSV is empty; it needs lines like 'time,frequency'")
    return lines


def _csv_split(line: str) -> list[str]:
    for sep in (",", "\t", ";"):
        if sep in line:
            return line.split(sep)
    return line.split()


def _csv_columns(p: Path, first: list[str], header: list[str] | None, units: str):
    """(time column, F0 column, confidence column or None, units "hz" | "midi") from the header, if any."""
    if header is not None:
        t_col = next((header.index(n) for n in _TIME_NAMES if n in header), 0)
        f_col = next((header.index(n) for n in _F0_NAMES if n in header), 1 if len(header) > 1 else None)
        c_col = next((header.index(n) for n in _CONF_NAMES if n in header), None)
        if f_col is None:
            raise AlignSTSError(f"{p}: no F0 column in the header {first}; name it 'frequency' or 'f0'")
        if units == "auto" and header[f_col] in ("midi", "note", "midi_note"):
            units = "midi"
    else:
        t_col, f_col, c_col = 0, 1, (2 if len(first) >= 3 else None)
    if units == "auto":
        units = "hz"
    if units not in ("hz", "midi"):
        raise AlignSTSError(f"--f0-units {units}: use 'hz' or 'midi'")
    return t_col, f_col, c_col, units


def _csv_rows(p: Path, lines, t_col: int, f_col: int, c_col: int | None):
    """(times, F0 values with NaN for empty, confidences with 1 where absent) of the data lines."""
    times, values, confs = [], [], []
    for lineno, line in lines:
        fields = _csv_split(line)
        need = max(t_col, f_col, c_col or 0)
        if len(fields) <= max(t_col, f_col):
            raise AlignSTSError(f"{p}: line {lineno} has {len(fields)} field(s), expected time and F0; fix or remove it")
        try:
            t = _num(fields[t_col])
            f = _num(fields[f_col])
            c = _num(fields[c_col]) if c_col is not None and len(fields) > need else None
        except ValueError:
            raise AlignSTSError(
                f"{p}: line {lineno} is not numbers ({line.strip()[:40]!r}); an F0 CSV holds time,frequency[,confidence]"
            ) from None
        if t is None or not math.isfinite(t):
            raise AlignSTSError(f"{p}: line {lineno} has no valid time; every row needs a time in seconds")
        times.append(t)
        values.append(np.nan if f is None else f)
        confs.append(1.0 if c is None or not math.isfinite(c) else c)
    return times, values, confs


def load_f0_csv(
    path: str | os.PathLike,
    *,
    units: str = "auto",
    confidence_threshold: float = 0.5,
    hop: float = HOP,
) -> Melody:
    """A melody from an F0 contour file.

    Accepts CREPE/PESTO (``time,frequency,confidence``) and plain ``time,f0`` with
    or without a header; commas, tabs, semicolons or spaces; unvoiced frames as 0,
    empty, NaN or low confidence. ``units``: ``hz``, ``midi`` (note numbers) or
    ``auto`` (MIDI when the header says ``midi``/``note``).
    """
    p = _existing(path, "F0 CSV")
    lines = _csv_lines(p)
    first = _csv_split(lines[0][1])
    header = None
    try:
        [_num(x) for x in first]
    except ValueError:
        header = [h.strip().strip('"').lower() for h in first]
        lines = lines[1:]
    t_col, f_col, c_col, units = _csv_columns(p, first, header, units)
    times, values, confs = _csv_rows(p, lines, t_col, f_col, c_col)
    if not times:
        raise AlignSTSError(f"{p}: the CSV has a header but no rows of data; add rows of time,frequency")
    t = np.asarray(times)
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(confs)
    if np.any(np.diff(t) <= 0):
        k = int(np.nonzero(np.diff(t) <= 0)[0][0])
        raise AlignSTSError(f"{p}: times must increase, but row {k + 2} ({t[k + 1]}) does not; sort the file by time")
    if t[-1] < 0:
        raise AlignSTSError(f"{p}: every row is before time 0 (the last at {t[-1]:g} s); times are seconds from the "
                            "start of the song")
    check_read_length(p, float(t[-1]))
    voiced = np.isfinite(v) & (v > 0) & (c >= confidence_threshold)
    top = MAX_CSV_MIDI if units == "midi" else MAX_CSV_HZ
    if np.any(voiced & (v > top)):
        bad = float(v[np.nonzero(voiced & (v > top))[0][0]])
        raise AlignSTSError(
            f"{p}: an F0 of {bad:g} {'(MIDI note)' if units == 'midi' else 'Hz'} is no pitch a voice has; "
            + ("give MIDI note numbers (0-127) or pass --f0-units hz" if units == "midi"
               else "give frequencies in Hz, or pass --f0-units midi for note numbers"))
    if units == "midi":
        hz = np.where(voiced, midi_to_hz(np.where(voiced, v, 69.0)), 0.0)
    else:
        hz = np.where(voiced, v, 0.0)
    if not voiced.any():
        raise AlignSTSError(
            f"{p}: no voiced frames (every F0 is 0, empty, NaN or below confidence {confidence_threshold}); "
            "check the file or lower --confidence"
        )
    f0 = contour_to_grid(t, hz, hop)
    return Melody(f0=f0, notes=notes_from_contour(f0, hop), source=str(p), hop=hop, info={"units": units})


def contour_to_grid(times: np.ndarray, f0: np.ndarray, hop: float = HOP) -> np.ndarray:
    """Resample an F0 contour sampled at ``times`` onto the grid 0, hop, 2·hop, ...

    Voiced stretches are interpolated in log-frequency; a grid point is voiced
    only when the nearest input samples on both sides are voiced.
    """
    end = float(times[-1])
    n = int(round(end / hop)) + 1
    grid = np.arange(n) * hop
    step = float(np.median(np.diff(times))) if len(times) > 1 else hop
    k = np.clip(np.searchsorted(times, grid), 1, max(len(times) - 1, 1))
    if len(times) == 1:
        return np.where(np.abs(grid - times[0]) <= hop, f0[0], 0.0)
    left, right = k - 1, k
    t0, t1 = times[left], times[right]
    voiced = (f0[left] > 0) & (f0[right] > 0) & (t1 - t0 <= 2.5 * step + 1e-9)
    # Exact or nearly exact hits on a voiced sample count too.
    near = np.where(np.abs(grid - t0) <= np.abs(grid - t1), left, right)
    hit = np.abs(times[near] - grid) <= 0.25 * step
    w = np.clip((grid - t0) / np.maximum(t1 - t0, 1e-12), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logf = (1 - w) * np.log(np.maximum(f0[left], 1e-9)) + w * np.log(np.maximum(f0[right], 1e-9))
    out = np.where(voiced, np.exp(logf), 0.0)
    out = np.where(~voiced & hit & (f0[near] > 0), f0[near], out)
    out[(grid < times[0] - 0.5 * step) | (grid > end + 0.5 * step)] = 0.0
    return out


class _GrowingMedian:
    """The median of a sequence that only grows (two heaps): the same value as ``np.median``, in log time
    per value, so a long note is segmented in linear-logarithmic time rather than quadratic."""

    def __init__(self):
        self.low: list[float] = []  # max-heap (negated) of the lower half
        self.high: list[float] = []  # min-heap of the upper half

    def add(self, x: float) -> None:
        if self.low and x > -self.low[0]:
            heapq.heappush(self.high, x)
        else:
            heapq.heappush(self.low, -x)
        if len(self.low) > len(self.high) + 1:
            heapq.heappush(self.high, -heapq.heappop(self.low))
        elif len(self.high) > len(self.low):
            heapq.heappush(self.low, -heapq.heappop(self.high))

    def value(self) -> float:
        if len(self.low) > len(self.high):
            return -self.low[0]
        return (-self.low[0] + self.high[0]) / 2.0


def _note_cuts(run: np.ndarray, jump: float, need: int) -> list[int]:
    """Where notes start in a voiced ``run`` (MIDI numbers), the end included: where the pitch leaves the
    current note's median by more than ``jump`` for ``need`` frames, the note being at least ``need`` long."""
    cuts = [0]
    median = _GrowingMedian()
    median.add(float(run[0]))
    for k in range(1, len(run)):
        ref = median.value()
        if abs(run[k] - ref) > jump and k - cuts[-1] >= need:
            stop = min(k + need, len(run))
            if stop - k >= need and np.all(np.abs(run[k:stop] - ref) > jump):
                cuts.append(k)
                median = _GrowingMedian()
        median.add(float(run[k]))
    cuts.append(len(run))
    return cuts


#: How much of a neighbouring note a glide is compared with: its frames nearest the glide, seconds.
GLIDE_NEIGHBOURHOOD = 0.3


def _join_glides(run: np.ndarray, cuts: list[int], glide: int, near: int) -> list[int]:
    """Join each note shorter than ``glide`` frames (shortest first) to the neighbour nearer in pitch (the
    first to the next, the last to the previous): a short step between two notes sung legato is the glide
    from one to the other. A neighbour's pitch is the median of its ``near`` frames next to the glide, and
    the notes are a linked list under a heap of lengths, so the joins take linear-logarithmic time however
    many there are (a median over whole notes made a chain of joins quadratic)."""
    starts = cuts[:-1]
    end = dict(zip(starts, cuts[1:]))
    prev = dict(zip(starts[1:], starts[:-1]))
    nxt = dict(zip(starts[:-1], starts[1:]))
    def median(x: np.ndarray) -> float:  # np.median's value at a tenth of its cost on these few frames
        x = np.sort(x)
        h = len(x) // 2
        return float(x[h]) if len(x) % 2 else float(x[h - 1] + x[h]) / 2.0

    heap = [(end[a] - a, a) for a in starts if end[a] - a < glide]
    heapq.heapify(heap)
    while heap and len(end) > 1:
        length, a = heapq.heappop(heap)
        if a not in end or end[a] - a != length:
            continue  # joined or grown since it was pushed
        here = median(run[a:end[a]])
        b, before = nxt.get(a), prev.get(a)
        into_next = before is None or (
            b is not None and abs(median(run[b:min(end[b], b + near)]) - here)
            < abs(median(run[max(before, a - near):a]) - here))
        keep, gone = (a, b) if into_next else (before, a)
        end[keep] = end.pop(gone)  # ``keep`` now spans both
        after = nxt.pop(gone, None)
        prev.pop(gone, None)
        if after is not None:
            nxt[keep], prev[after] = after, keep
        else:
            nxt.pop(keep, None)
        if end[keep] - keep < glide:
            heapq.heappush(heap, (end[keep] - keep, keep))
    return sorted(end) + [len(run)]


def notes_from_contour(
    f0: np.ndarray, hop: float = HOP, *, min_note: float = 0.05, jump: float = 0.8, glide: float = 0.08
) -> list[Note]:
    """Segment an F0 contour ``[T]`` (Hz) into notes.

    A note ends at an unvoiced gap, or where the pitch leaves the note's running
    median by more than ``jump`` semitones for at least ``min_note`` seconds. A step shorter
    than ``glide`` seconds between two notes with no gap is the glide between them and joins
    the nearer in pitch. Notes shorter than ``min_note`` are dropped. Pitches are medians (fractional).
    """
    voiced = f0 > 0
    midi = np.where(voiced, hz_to_midi(np.where(voiced, f0, 1.0)), 0.0)
    need = max(1, int(round(min_note / hop)))
    notes: list[Note] = []
    i, n = 0, len(f0)
    while i < n:
        if not voiced[i]:
            i += 1
            continue
        j = i
        while j < n and voiced[j]:
            j += 1
        run = midi[i:j]
        if len(run) >= 5:  # median filter removes single-frame glitches
            pad = np.pad(run, 2, mode="edge")
            run = np.median(np.lib.stride_tricks.sliding_window_view(pad, 5), axis=1)
        cuts = _note_cuts(run, jump, need)
        cuts = _join_glides(run, cuts, max(1, int(math.ceil(glide / hop - 1e-9))),
                            max(1, int(round(GLIDE_NEIGHBOURHOOD / hop))))
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b - a >= need:
                notes.append(Note((i + a) * hop, (i + b) * hop, float(np.median(run[a:b]))))
        i = j
    return notes


# --------------------------------------------------------------------------- reference audio

def f0_range(method: str, floor: float | None = None, ceiling: float | None = None) -> tuple[float, float]:
    """The F0 search range of a tracker: ``floor``/``ceiling`` where given, else its singing defaults."""
    if method not in F0_METHODS:
        raise AlignSTSError(f"--f0-method {method}: use one of {', '.join(F0_METHODS)}")
    lo, hi = (SWIFT_F0_FLOOR, SWIFT_F0_CEILING) if method == "swift" else (SINGING_F0_FLOOR, SINGING_F0_CEILING)
    return (lo if floor is None else float(floor)), (hi if ceiling is None else float(ceiling))


def extract_f0(
    audio: np.ndarray,
    sr: int,
    *,
    hop: float = HOP,
    floor: float | None = None,
    ceiling: float | None = None,
    voicing_threshold: float = SINGING_VOICING_THRESHOLD,
    method: str = "praat",
) -> tuple[np.ndarray, np.ndarray]:
    """F0 of ``[n]`` audio on the grid 0, hop, ... by ``method`` (``praat`` or ``swift``).

    Returns ``(f0, confidence)``, both ``[T]`` with T = ceil(duration / hop); f0 in Hz, 0 = unvoiced.
    Praat (autocorrelation, the default here, so every measurement in the package stays comparable)
    returns its voicing strength; SwiftF0 its confidence (voiced from ``SWIFT_VOICED``). Reference
    singing uses ``REFERENCE_F0_METHOD``.
    """
    floor, ceiling = f0_range(method, floor, ceiling)
    n = int(math.ceil(len(audio) / sr / hop))
    grid = np.arange(n) * hop
    if method == "swift":
        return _swift_f0(audio, sr, grid, floor, ceiling)
    import parselmouth

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=sr)
    pitch = snd.to_pitch_ac(
        time_step=hop, pitch_floor=floor, pitch_ceiling=ceiling, voicing_threshold=voicing_threshold
    )
    freq = pitch.selected_array["frequency"]
    strength = pitch.selected_array["strength"]
    xs = pitch.xs()
    if len(xs) == 0:
        return np.zeros(n), np.zeros(n)
    idx = np.clip(np.round((grid - xs[0]) / hop).astype(np.int64), 0, len(xs) - 1)
    inside = (grid >= xs[0] - hop / 2) & (grid <= xs[-1] + hop / 2)
    f0 = np.where(inside, freq[idx], 0.0)
    conf = np.where(inside & (f0 > 0), strength[idx], 0.0)
    return f0, conf


_SWIFT = None


def _swift_f0(audio, sr, grid, floor, ceiling):
    """SwiftF0 (16 ms frames at their centres) resampled onto ``grid``: confidence linearly, pitch in
    log frequency between voiced frames only, so no pitch is invented across a rest."""
    global _SWIFT
    try:
        from swift_f0 import SwiftF0
    except ImportError:
        raise AlignSTSError("the swift pitch tracker needs the swift-f0 package: pip install swift-f0 "
                            "(or use --f0-method praat)") from None
    if _SWIFT is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _SWIFT = SwiftF0(threads=max(1, min(cores, 6)), spin=False)  # more than ~6 threads do not help it
    lo, hi = max(floor, 46.875), min(ceiling, 2093.75)
    if not lo * 1.05 < hi:
        raise AlignSTSError(f"F0 range {floor:g}-{ceiling:g} Hz: the swift tracker searches 47-2093 Hz")
    x = np.asarray(audio, dtype=np.float32)
    if len(x) < sr * 0.02:
        return np.zeros(len(grid)), np.zeros(len(grid))
    r = _SWIFT.detect(x, sr, fmin=lo, fmax=hi)
    conf = np.interp(grid, r.timestamps, r.confidence, left=0.0, right=0.0)
    voiced = r.confidence >= SWIFT_VOICED
    f0 = np.zeros(len(grid))
    if voiced.any():
        logf = np.interp(grid, r.timestamps[voiced], np.log(r.pitch_hz[voiced]))
        on = conf >= SWIFT_VOICED
        f0[on] = np.exp(logf[on])
    return f0, np.where(f0 > 0, conf, 0.0)


def melody_from_audio(
    path: str | os.PathLike,
    *,
    hop: float = HOP,
    floor: float | None = None,
    ceiling: float | None = None,
    method: str = REFERENCE_F0_METHOD,
) -> Melody:
    """A melody from a reference singing recording (F0 by ``method``, singing settings)."""
    from alignsts_cli.audio import load_audio, loudest_dbfs, SILENCE_DBFS

    audio, sr = load_audio(path, what="reference singing")
    if loudest_dbfs(audio, sr) < SILENCE_DBFS:
        raise AlignSTSError(f"{path}: the reference recording is silent; give a recording of the melody being sung")
    f0, _ = extract_f0(audio, sr, hop=hop, floor=floor, ceiling=ceiling, method=method)
    if not (f0 > 0).any():
        raise AlignSTSError(
            f"{path}: no pitch found in the reference recording; give a recording of a single voice singing"
        )
    return Melody(f0=f0, notes=notes_from_contour(f0, hop), source=str(path), hop=hop, info={"f0_method": method})


# --------------------------------------------------------------------------- dispatch and checks

def melody_kind(path: str | os.PathLike, kind: str = "auto") -> str:
    """``midi``, ``musicxml``, ``csv`` or ``audio``: from ``kind`` when given, else by extension."""
    if kind != "auto":
        if kind not in ("midi", "musicxml", "csv", "audio"):
            raise AlignSTSError(f"--melody-type {kind}: use auto, midi, musicxml, csv or audio")
        return kind
    from alignsts_cli.audio import AUDIO_EXTENSIONS

    ext = Path(path).suffix.lower()
    if ext in MIDI_EXTENSIONS:
        return "midi"
    if ext in MUSICXML_EXTENSIONS:
        return "musicxml"
    if ext in CSV_EXTENSIONS:
        return "csv"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    raise AlignSTSError(
        f"{path}: cannot tell the melody type from the extension '{ext}'; use .mid, .musicxml, .csv or an audio "
        "file, or pass --melody-type midi|musicxml|csv|audio"
    )


def load_melody(
    path: str | os.PathLike,
    kind: str = "auto",
    *,
    track: str | int | None = None,
    channel: int | None = None,
    pitch_bend: bool = False,
    f0_units: str = "auto",
    confidence: float = 0.5,
    f0_method: str = REFERENCE_F0_METHOD,
) -> Melody:
    """Load a melody of any supported kind (see ``melody_kind``); ``f0_method`` tracks reference singing."""
    try:
        kind = melody_kind(path, kind)
    except AlignSTSError:
        _existing(path, "melody")  # a missing file is the first thing to say
        raise
    _existing(path, {"midi": "MIDI", "musicxml": "MusicXML", "csv": "F0 CSV", "audio": "reference singing"}[kind])
    if kind == "midi":
        return load_midi(path, track=track, channel=channel, pitch_bend=pitch_bend)
    if kind == "musicxml":
        from alignsts_cli.musicxml import load_musicxml

        return load_musicxml(path, part=track)
    if kind == "csv":
        return load_f0_csv(path, units=f0_units, confidence_threshold=confidence)
    return melody_from_audio(path, method=f0_method)


#: The singing point of a voice: this many semitones above its median speaking pitch.
SINGING_ABOVE_SPEECH = 5.0
#: A melody whose median is further than this from the singing point is moved by octaves (unless exact).
OCTAVE_FIT = 9.0


def check_tempo(tempo: float) -> None:
    if not (MIN_TEMPO <= tempo <= MAX_TEMPO):  # NaN too
        raise AlignSTSError(f"--tempo {tempo}: use a factor between {MIN_TEMPO:g} and {MAX_TEMPO:g} (2 = twice as fast)")


def check_transpose(semitones: float) -> None:
    if not abs(semitones) <= MAX_TRANSPOSE:  # NaN too
        raise AlignSTSError(f"--transpose {semitones}: give semitones from -{MAX_TRANSPOSE:g} to {MAX_TRANSPOSE:g} "
                            "(12 = an octave up)")


def prepare_melody(
    melody: Melody,
    *,
    transpose: float = 0.0,
    tempo: float = 1.0,
    auto_key_hz: float | None = None,
    voice_hz: float | None = None,
    exact_octave: bool = False,
) -> Melody:
    """Apply ``--tempo``, the octave, then ``--transpose``, and check the result.

    The octave is chosen on the melody as written, for a voice whose median speaking F0 is
    ``auto_key_hz`` or ``voice_hz``; its singing point is ``SINGING_ABOVE_SPEECH`` semitones above that:

    - ``auto_key_hz`` (``--auto-key``): whole octaves to sit as near the singing point as it can;
    - ``voice_hz`` (the default): the same move, only when the melody's median lies more than
      ``OCTAVE_FIT`` semitones from the singing point (a female-range tune for a low male voice,
      say), with a line in ``info["notices"]``; ``exact_octave`` keeps the melody as written.

    The key is kept (whole octaves only), so the song still fits a backing track; ``transpose`` then
    moves it by that many semitones.
    """
    check_tempo(tempo)
    check_transpose(transpose)
    if not np.any(melody.voiced) or not melody.notes:
        raise AlignSTSError(f"{melody.source}: the melody has no notes; give a melody with at least one note")
    m = melody.stretched(tempo)
    octaves = 0
    speaking = auto_key_hz or (None if exact_octave else voice_hz)
    if speaking:
        point = float(hz_to_midi(speaking)) + SINGING_ABOVE_SPEECH
        gap = m.median_midi() - point
        if auto_key_hz or abs(gap) > OCTAVE_FIT:
            octaves = -int(np.sign(gap)) * int(math.ceil(abs(gap) / 12.0 - 0.5))  # a tie: the smaller move
    m = m.transposed(12.0 * octaves + transpose)
    if auto_key_hz:
        m.info = {**m.info, "auto_key_octaves": octaves}
    elif octaves:
        name = Path(melody.source).name or "the melody"
        where = "above" if octaves < 0 else "below"
        m.info = {**m.info, "octave_shift": octaves, "notices": m.info.get("notices", []) + [
            f"note: {name} sits {abs(gap):.0f} semitones {where} where this voice sings; singing it "
            f"{abs(octaves)} octave{'s' if abs(octaves) > 1 else ''} {'lower' if octaves < 0 else 'higher'}, "
            "in the same key (--exact-octave sings it as written)"]}
    if m.duration > MAX_MELODY_SECONDS:
        raise AlignSTSError(
            f"{melody.source}: the melody lasts {m.duration / 60:.1f} min, more than the {MAX_MELODY_SECONDS / 60:.0f} min "
            "this tool converts at once; split the song into sections and convert each"
        )
    sung = float(np.count_nonzero(m.voiced)) * m.hop
    if sung < MIN_SUNG_SECONDS:
        raise AlignSTSError(f"{melody.source}: the notes last only {sung:.2f} s in all, too short to sing; "
                            "check the file's tempo (and --tempo)")
    lo, hi = float(m.f0[m.voiced].min()), float(m.f0[m.voiced].max())
    if lo < MIN_F0_HZ or hi > MAX_F0_HZ:
        shift = transpose + 12.0 * octaves
        raise AlignSTSError(
            f"{melody.source}: the melody spans {lo:.0f}-{hi:.0f} Hz after transposing by {shift:+g} semitones, outside "
            f"the singable {MIN_F0_HZ:.0f}-{MAX_F0_HZ:.0f} Hz; "
            + ("leave out --exact-octave to sing it in the voice's octave, or use --transpose" if exact_octave
               else "use --transpose or --auto-key to move it")
        )
    return m


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise AlignSTSError(f"{p}: no such {what} file; check the path")
    if p.is_dir():
        raise AlignSTSError(f"{p}: is a folder, not a {what} file; give one of the files in it")
    if p.stat().st_size == 0:
        raise AlignSTSError(f"{p}: the {what} file is empty (0 bytes); export the melody again")
    return p


# --------------------------------------------------------------------------- writers

def write_f0_csv(path: str | os.PathLike, f0: np.ndarray, confidence: np.ndarray, hop: float = HOP, **check) -> Path:
    """Write a contour in CREPE format: ``time,frequency,confidence`` (unvoiced: 0,0)."""
    out = check_output_path(path, suffixes=(".csv",), **check)
    rows = ["time,frequency,confidence"]
    for i, (f, c) in enumerate(zip(f0, confidence)):
        rows.append(f"{i * hop:.3f},{f:.3f},{c if f > 0 else 0.0:.3f}")
    with atomic_output(out) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return out


def write_midi(path: str | os.PathLike, notes: list[Note], *, bpm: float = 120.0, **check) -> Path:
    """Write notes (pitches rounded to semitones) as a one-track MIDI file."""
    import mido

    out = check_output_path(path, suffixes=MIDI_EXTENSIONS, **check)
    tpb = 480
    mid = mido.MidiFile(type=0, ticks_per_beat=tpb)
    trk = mido.MidiTrack()
    mid.tracks.append(trk)
    tempo = mido.bpm2tempo(bpm)
    trk.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    trk.append(mido.MetaMessage("track_name", name="melody", time=0))
    events = []
    for n in notes:
        pitch = int(np.clip(round(n.pitch), 0, 127))
        events.append((round(mido.second2tick(n.start, tpb, tempo)), 1, pitch))
        events.append((round(mido.second2tick(n.end, tpb, tempo)), 0, pitch))
    events.sort()
    now = 0
    for tick, on, pitch in events:
        msg = "note_on" if on else "note_off"
        trk.append(mido.Message(msg, note=pitch, velocity=80 if on else 0, time=tick - now))
        now = tick
    with atomic_output(out) as tmp:
        mid.save(str(tmp))
    return out
