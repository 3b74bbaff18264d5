"""MusicXML as a melody (alignsts_cli/musicxml.py): part choice, ties, rests, a pickup bar and a tempo change."""
import pytest

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import load_melody

music21 = pytest.importorskip("music21", reason="the musicxml extra (music21) is part of .[test]")


def score(path, *, voice_first=False):
    """4/4, a one-beat pickup, quarter = 60 then 120 from bar 2; the voice's bar 1 ends with a note tied
    into bar 2; the piano plays block chords."""
    from music21 import chord, meter, note, stream, tempo

    voice, piano = stream.Part(), stream.Part()
    voice.partName, piano.partName = "Voice", "Piano"
    bars = {0: [("G4", 1)], 1: [("C5", 1), ("rest", 1), ("D5", 1), ("E5", 1)], 2: [("E5", 2), ("F5", 2)]}
    for number, content in bars.items():
        m = stream.Measure(number=number)
        if number == 0:
            m.append(meter.TimeSignature("4/4"))
            m.append(tempo.MetronomeMark(number=60))
            m.paddingLeft = 3.0  # the pickup: one beat of a 4-beat bar
        if number == 2:
            m.insert(0, tempo.MetronomeMark(number=120))
        for name, beats in content:
            el = note.Rest(quarterLength=beats) if name == "rest" else note.Note(name, quarterLength=beats)
            m.append(el)
        voice.append(m)
        pm = stream.Measure(number=number)
        if number == 0:
            pm.append(meter.TimeSignature("4/4"))
            pm.paddingLeft = 3.0
            pm.append(chord.Chord(["C4", "E4", "G4"], quarterLength=1))
        else:
            pm.append(chord.Chord(["C4", "E4", "G4", "C5"], quarterLength=4))
        piano.append(pm)
    voice.measure(1).notes[-1].tie = music21.tie.Tie("start")  # E5 at the end of bar 1 ...
    voice.measure(2).notes[0].tie = music21.tie.Tie("stop")  # ... tied into bar 2
    s = stream.Score([voice, piano] if voice_first else [piano, voice])
    s.write("musicxml", fp=str(path))
    return path


def test_the_tune_with_ties_rests_pickup_and_tempo(tmp_path):
    m = load_melody(score(tmp_path / "song.musicxml"))
    assert m.info["track_name"] == "Voice"
    got = [(round(n.start, 3), round(n.end, 3), int(n.pitch)) for n in m.notes]
    # Pickup G4 (1 s at 60), bar 1: C5 1 s, rest, D5, E5 tied over the bar line into 2 beats at 120 (1 s), F5 1 s.
    assert got == [(0.0, 1.0, 67), (1.0, 2.0, 72), (3.0, 4.0, 74), (4.0, 6.0, 76), (6.0, 7.0, 77)]
    assert m.duration == pytest.approx(7.0, abs=0.01)
    assert not m.f0[int(2.5 / m.hop)]  # the rest is unvoiced
    piano = load_melody(tmp_path / "song.musicxml", track="piano")
    assert [int(n.pitch) for n in piano.notes][:2] == [67, 72]  # asked for: its chords' top line
    assert load_melody(tmp_path / "song.musicxml", track=1).info["track_name"] == "Voice"


def test_musicxml_mistakes(tmp_path, monkeypatch):
    bad = tmp_path / "bad.musicxml"
    bad.write_text("<score-partwise><part id='P1'><measure")
    with pytest.raises(AlignSTSError, match="not a readable MusicXML"):
        load_melody(bad)
    path = score(tmp_path / "s.mxl")
    with pytest.raises(AlignSTSError, match="no part 'flute'"):
        load_melody(path, track="flute")
    import sys

    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(AlignSTSError, match=r"pip install 'alignsts\[musicxml\]'"):
        load_melody(path)


def test_inspect_lists_the_parts_of_a_score(tmp_path):
    import subprocess
    import sys

    song = score(tmp_path / "song.musicxml")
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "inspect", str(song)], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "150"})
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "Voice" in line or "Piano" in line]
    assert len(rows) == 2 and "<- sung" in rows[0] and "Voice" in rows[0] and "Piano" in rows[1]
    assert "G4-F5" in rows[0]
