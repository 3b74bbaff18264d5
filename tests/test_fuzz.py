"""Fuzzing the melody readers and ``prepare_melody`` with hypothesis: whatever the file holds, the result is a
melody or an ``AlignSTSError`` (the one-line user error), within a time and memory bound per example.

``ALIGNSTS_FUZZ_EXAMPLES`` sets the examples per reader (3,000 by default; the closing note of the hardening
issue quotes a run of 10,000). The draws are derandomised, so a failure is the same on every run.
"""
import os
import struct
import tempfile
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import (MAX_MELODY_SECONDS, MAX_READ_SECONDS, Melody, Note, load_f0_csv, load_midi,
                                 prepare_melody, render_notes)

# A numeric warning would be a stray line before the CLI's one error line: each fails the example.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

EXAMPLES = int(os.environ.get("ALIGNSTS_FUZZ_EXAMPLES", "3000"))
#: Per example: hypothesis fails one slower than this, and the peak allocation must stay under the bound.
DEADLINE = timedelta(seconds=5)
PEAK_MB = 200.0

FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="alignsts-fuzz-"))


def user_error_or(fn):
    """``fn()``'s result, or None when it raised the user-error type; any other exception fails the example.
    The peak allocation is checked too."""
    tracemalloc.start()
    try:
        return fn()
    except AlignSTSError as exc:
        assert str(exc) and "\n" not in str(exc)  # one line
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_MB * 1e6, f"peak {peak / 1e6:.0f} MB"


def check_melody(m: Melody | None, *, read: bool) -> None:
    if m is None:
        return
    assert np.all(np.isfinite(m.f0)) and np.all(m.f0 >= 0)
    assert read or m.notes  # a reader may find no notes in a contour (prepare_melody then says so)
    assert m.duration <= (MAX_READ_SECONDS if read else MAX_MELODY_SECONDS) + 1.0


# --------------------------------------------------------------------------- MIDI

def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


deltas = st.one_of(st.integers(0, 960), st.integers(0, 0x0FFFFFFF), st.just(0))
channels = st.integers(0, 15)
events = st.one_of(
    st.tuples(st.just("on"), channels, st.integers(0, 127), st.integers(0, 127)),
    st.tuples(st.just("off"), channels, st.integers(0, 127), st.integers(0, 127)),
    st.tuples(st.just("tempo"), st.integers(0, 0xFFFFFF)),
    st.tuples(st.just("bend"), channels, st.integers(0, 0x3FFF)),
    st.tuples(st.just("program"), channels, st.integers(0, 127)),
    st.tuples(st.just("name"), st.binary(max_size=12)),
    st.tuples(st.just("lyric"), st.binary(max_size=8)),
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=6)),
)


def encode(event) -> bytes:
    kind = event[0]
    if kind == "on":
        return bytes([0x90 | event[1], event[2], event[3]])
    if kind == "off":
        return bytes([0x80 | event[1], event[2], event[3]])
    if kind == "tempo":
        return b"\xff\x51\x03" + event[1].to_bytes(3, "big")
    if kind == "bend":
        return bytes([0xE0 | event[1], event[2] & 0x7F, event[2] >> 7])
    if kind == "program":
        return bytes([0xC0 | event[1], event[2]])
    if kind in ("name", "lyric"):
        return (b"\xff\x03" if kind == "name" else b"\xff\x05") + vlq(len(event[1])) + event[1]
    return event[1]


tracks = st.lists(st.lists(st.tuples(deltas, events), max_size=40), min_size=1, max_size=3)


@st.composite
def midi_files(draw) -> bytes:
    division = draw(st.one_of(st.integers(1, 960), st.integers(-32768, 32767), st.sampled_from([0, -6360, 0xE728 - 65536])))
    kind = draw(st.integers(0, 2))
    body = b""
    chosen = draw(tracks)
    for trk in chosen:
        data = b"".join(vlq(d) + encode(e) for d, e in trk)
        if draw(st.booleans()):
            data += b"\x00\xff\x2f\x00"
        body += b"MTrk" + struct.pack(">I", len(data)) + data
    declared = draw(st.one_of(st.just(len(chosen)), st.integers(0, 5)))
    raw = b"MThd" + struct.pack(">IHHh", 6, kind, declared, division) + body
    if draw(st.booleans()):  # damage: flip bytes and/or cut the file short
        raw = bytearray(raw)
        for at, value in draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=4)):
            raw[at] = value
        raw = bytes(raw[:draw(st.integers(1, len(raw)))])
    return raw


@FUZZ
@given(data=midi_files(), bend=st.booleans())
def test_midi_reader(data, bend):
    path = WORK / "fuzz.mid"
    path.write_bytes(data)
    check_melody(user_error_or(lambda: load_midi(path, pitch_bend=bend)), read=True)


# --------------------------------------------------------------------------- CSV

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 400, allow_nan=False).map(lambda x: f"{x:.3f}"),
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e300", "-1e300", "1e-320", "0", "-0", '"220"', "'1'", "abc",
                     "1,5", "0x10", "1e", "—", "\x00"]),
)
separators = st.sampled_from([",", "\t", ";", " ", ", "])
headers = st.sampled_from(["", "time,frequency,confidence", "time,f0", "t\tmidi", "seconds;pitch;prob", "a,b",
                           "frequency", "time", "# comment", "\ufefftime,f0"])


@st.composite
def csv_texts(draw) -> bytes:
    sep = draw(separators)
    rows = draw(st.lists(st.lists(numbers, min_size=0, max_size=4), max_size=60))
    if draw(st.booleans()):  # a plausible increasing contour, with bad values mixed in
        start = draw(st.floats(-5, 1e4, allow_nan=False))
        step = draw(st.floats(1e-4, 50, allow_nan=False))
        rows = [[f"{start + i * step:.6g}", r[0] if r else "220"] + r[1:2] for i, r in enumerate(rows)]
    text = "\n".join([draw(headers)] + [sep.join(r) for r in rows])
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw += draw(st.binary(max_size=16))
    return raw


@FUZZ
@given(data=csv_texts(), units=st.sampled_from(["auto", "hz", "midi"]), confidence=st.floats(0, 1))
def test_csv_reader(data, units, confidence):
    path = WORK / "fuzz.csv"
    path.write_bytes(data)
    check_melody(user_error_or(lambda: load_f0_csv(path, units=units, confidence_threshold=confidence)), read=True)


# --------------------------------------------------------------------------- prepare_melody

floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def melodies(draw) -> Melody:
    notes, t = [], draw(st.floats(0, 5))
    for _ in range(draw(st.integers(1, 12))):
        t += draw(st.floats(0, 2))
        length = draw(st.one_of(st.floats(0.001, 3), st.floats(3, 400)))
        notes.append(Note(t, t + length, draw(st.floats(0, 127))))
        t += length
    notes = [n for n in notes if n.end <= MAX_READ_SECONDS]
    if not notes:
        notes = [Note(0.0, 0.5, 60.0)]
    return Melody(f0=render_notes(notes), notes=notes, source="fuzz.mid")


@FUZZ
@given(melody=melodies(), transpose=st.one_of(floats, st.floats(-30, 30)), tempo=st.one_of(floats, st.floats(0.05, 12)),
       voice=st.one_of(st.none(), st.floats(50, 800)), auto_key=st.booleans(), exact=st.booleans())
def test_prepare_melody(melody, transpose, tempo, voice, auto_key, exact):
    out = user_error_or(lambda: prepare_melody(melody, transpose=transpose, tempo=tempo, voice_hz=voice,
                                               auto_key_hz=voice if auto_key else None, exact_octave=exact))
    check_melody(out, read=False)
