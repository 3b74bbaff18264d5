"""Which part of a score is the tune (alignsts_cli/tracks.py), on MIDI files laid out the way editors export them."""
import mido
import pytest

from alignsts_cli.melody import load_midi
from alignsts_cli.tracks import Part, choose, polyphony
from alignsts_cli.melody import Note

TPB = 480
# "Frère Jacques"-like tune: stepwise, varied lengths, with rests (start beat, beats, pitch).
TUNE = [(0, 1, 60), (1, 1, 62), (2, 1, 64), (3, 1, 60), (4, 1, 60), (5, 1, 62), (6, 1, 64), (7, 1, 60),
        (8, 1, 64), (9, 1, 65), (10, 2, 67), (12, 1, 64), (13, 1, 65), (14, 2, 67), (16, 0.5, 67), (16.5, 0.5, 69),
        (17, 0.5, 67), (17.5, 0.5, 65), (18, 1, 64), (19, 1, 60)]
BEATS = 20


def chords(low=48):
    """Block chords, one per bar, above ``low``."""
    out = []
    for bar in range(BEATS // 4):
        root = low + (0, 5, 7, 0, 5)[bar]
        out += [(4 * bar, 4, root + k) for k in (0, 4, 7, 12)]
    return out


def arpeggio(low=48):
    """Eighth-note arpeggios: far more notes than the tune, all alike."""
    return [(k / 2, 0.5, low + (0, 4, 7, 12)[k % 4]) for k in range(2 * BEATS)]


def bassline():
    return [(2 * k, 2, 36 + (0, 7)[k % 2]) for k in range(BEATS // 2)]


def drums():
    return [(k, 0.5, 36 + (k % 2) * 2) for k in range(BEATS)]


def track(notes, channel=0, name=None, program=None, lyrics=False):
    msgs = [mido.MetaMessage("track_name", name=name, time=0)] if name is not None else []
    if program is not None:
        msgs.append(mido.Message("program_change", channel=channel, program=program, time=0))
    events = []
    for start, beats, pitch in notes:
        events += [(round(start * TPB), 1, pitch), (round((start + beats) * TPB), 0, pitch)]
    now = 0
    for tick, on, pitch in sorted(events, key=lambda e: (e[0], e[1])):
        if lyrics and on:
            msgs.append(mido.MetaMessage("lyrics", text="la", time=tick - now))
            now = tick
        msgs.append(mido.Message("note_on" if on else "note_off", channel=channel, note=pitch,
                                 velocity=80 if on else 0, time=tick - now))
        now = tick
    return mido.MidiTrack(msgs)


def save(path, *tracks, type_=1):
    mid = mido.MidiFile(type=type_, ticks_per_beat=TPB)
    mid.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)]))
    mid.tracks.extend(tracks)
    mid.save(str(path))
    return path


def merged(*tracks):
    """One type-0 track holding every message of ``tracks`` (each as a MidiTrack)."""
    events = []
    for t in tracks:
        tick = 0
        for m in t:
            tick += m.time
            if not m.is_meta or m.type == "set_tempo":
                events.append((tick, m))
    out, now = mido.MidiTrack(), 0
    for tick, m in sorted(events, key=lambda e: e[0]):
        out.append(m.copy(time=tick - now))
        now = tick
    return out


def sang(melody):
    return [int(n.pitch) for n in melody.notes]


TUNE_PITCHES = [p for _, _, p in TUNE]


def test_accompaniment_before_the_tune(tmp_path):
    """The issue's case: block chords stand first, neither track named; the tune, not the chords' top line."""
    m = load_midi(save(tmp_path / "a.mid", track(chords(55)), track(TUNE)))
    assert sang(m) == TUNE_PITCHES and m.info["track"] == 2


def test_lead_sheet_with_piano_bass_and_drums_in_any_order(tmp_path):
    parts = [track(arpeggio(), 1, "Piano", 0), track(bassline(), 2, "Bass", 33), track(drums(), 9, "Drums"),
             track(TUNE, 0, "Flute", 73)]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        m = load_midi(save(tmp_path / "b.mid", *[parts[k] for k in order]))
        assert sang(m) == TUNE_PITCHES, order
    # No names at all: the arpeggio has more notes than the tune, the bass is lower; the tune still wins.
    bare = [track(arpeggio(60), 1), track(bassline(), 2), track(TUNE, 0)]
    assert sang(load_midi(save(tmp_path / "c.mid", *bare))) == TUNE_PITCHES


def test_choir_score_sings_the_top_voice(tmp_path):
    alto = [(s, b, p - 4) for s, b, p in TUNE]
    tenor = [(s, b, p - 9) for s, b, p in TUNE]
    bass = [(s, b, p - 17) for s, b, p in TUNE]
    named = [track(bass, 3, "Bass", 52), track(tenor, 2, "Tenor", 52), track(alto, 1, "Alto", 52),
             track(TUNE, 0, "Soprano", 52)]
    assert sang(load_midi(save(tmp_path / "satb.mid", *named))) == TUNE_PITCHES
    unnamed = [track(alto, 1, None, 52), track(TUNE, 0, None, 52), track(tenor, 2, None, 53)]
    assert sang(load_midi(save(tmp_path / "choir.mid", *unnamed))) == TUNE_PITCHES


def test_type_0_file_with_every_channel_on_one_track(tmp_path):
    one = merged(track(chords(60), 1, program=0), track(bassline(), 2, program=33), track(drums(), 9),
                 track(TUNE, 3, program=56))
    m = load_midi(save(tmp_path / "t0.mid", one, type_=1))  # conductor + one track holding four channels
    assert sang(m) == TUNE_PITCHES and m.info["channel"] == 4
    assert sang(load_midi(tmp_path / "t0.mid", channel=3)) == [p for _, _, p in bassline()]  # 1-based


def test_lyrics_and_names_are_hints_and_a_close_call_is_said(tmp_path):
    other = [(s, b, p + 2) for s, b, p in TUNE]
    m = load_midi(save(tmp_path / "k.mid", track(other, 1), track(TUNE, 0, lyrics=True)))
    assert sang(m) == TUNE_PITCHES and "notices" not in m.info  # karaoke-style lyrics decide it
    m = load_midi(save(tmp_path / "v.mid", track(other, 1, "Strings"), track(TUNE, 0, "Lead Vocal")))
    assert sang(m) == TUNE_PITCHES and "notices" not in m.info
    # Two unnamed lines alike in every way: a choice is made and said, with the way to pick the other.
    m = load_midi(save(tmp_path / "u.mid", track(TUNE, 0), track(other, 1)))
    (notice,) = m.info["notices"]
    assert "close call" in notice and "alignsts inspect u.mid" in notice and "--track" in notice
    assert "notices" not in load_midi(tmp_path / "u.mid", track=2).info  # asked for: nothing to say


def test_polyphony_and_ranking_by_hand():
    line = [Note(0, 1, 60), Note(1, 2, 62)]
    stack = [Note(0, 2, 60), Note(0, 2, 64), Note(2, 4, 62)]
    assert polyphony(line) == 0.0 and polyphony(stack) == pytest.approx(0.5)
    best, uncertain, ranked = choose([Part(0, 0, "Piano", 0, stack), Part(1, 1, "", None, line * 3)])
    assert best.index == 1 and not uncertain and ranked[1].reasons


def test_inspect_lists_every_part_and_convert_says_a_close_call(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import EXAMPLES

    env = {k: v for k, v in os.environ.items() if k != "ALIGNSTS_DEBUG"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "alignsts_cli", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=300)
    song = save(tmp_path / "lead.mid", track(arpeggio(), 1, "Piano", 0), track(bassline(), 2, "Bass", 33),
                track(drums(), 9, "Drums"), track(TUNE, 0, "Melody", 73, lyrics=True))
    proc = run("inspect", song)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "│" in ln]
    assert len(lines) == 3 and "Melody" in lines[0] and "<- sung" in lines[0] and "73 pipe" in lines[0]
    assert "C4-A4" in lines[0] and "yes" in lines[0] and "Bass" in lines[2]
    assert "track 3 'Drums': 20 drum notes" in proc.stdout and "convert sings track 4 channel 1" in proc.stdout
    close = save(tmp_path / "close.mid", track(TUNE, 0), track([(s, b, p + 2) for s, b, p in TUNE], 1))
    proc = run("convert", EXAMPLES / "speech.wav", "-m", close, "-o", tmp_path / "o.wav", "--exact-octave")
    assert proc.returncode == 0 and proc.stderr.startswith("note: close.mid: sang track 2 (channel 2)"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "inspect reads scores" in run("inspect", EXAMPLES / "speech.wav").stderr
