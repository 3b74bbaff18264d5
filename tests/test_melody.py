import mido
import numpy as np
import pytest
import soundfile as sf

from alignsts_cli import melody as M
from alignsts_cli.errors import AlignSTSError
from conftest import vowel, write_midi

HOP = M.HOP


def onsets(melody):
    v = melody.f0 > 0
    idx = np.nonzero(v[1:] & ~v[:-1])[0] + 1
    return np.concatenate([[0] if v[0] else [], idx]).astype(int)


def test_tempo_changes_are_honoured(tmp_path):
    # 120 bpm for the first 2 beats (0.5 s each), then 60 bpm (1 s a beat).
    notes = [(b, 0.5, 60 + b) for b in range(5)]
    p = write_midi(tmp_path / "m.mid", notes, tempos=((0, 500000), (960, 1000000)))
    mel = M.load_midi(p)
    expected = [0.0, 0.5, 1.0, 2.0, 3.0]  # note starts in seconds
    assert [round(n.start, 3) for n in mel.notes] == expected
    assert [round(n.end - n.start, 3) for n in mel.notes] == [0.25, 0.25, 0.5, 0.5, 0.5]
    for n, t in zip(mel.notes, expected):
        frame = round(t / HOP)
        assert mel.f0[frame] == pytest.approx(M.midi_to_hz(n.pitch))
        assert frame == 0 or mel.f0[frame - 2] == 0  # rests between notes are unvoiced
    assert abs(mel.duration - 3.5) <= HOP


def test_tempo_change_in_another_track_applies(tmp_path):
    # Type 1 with the tempo change inside the melody track itself.
    mid = mido.MidiFile(type=1, ticks_per_beat=100)
    t0 = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
    t1 = mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("note_off", note=60, velocity=0, time=100),
        mido.MetaMessage("set_tempo", tempo=250000, time=0),
        mido.Message("note_on", note=62, velocity=80, time=0),
        mido.Message("note_off", note=62, velocity=0, time=100),
    ])
    mid.tracks += [t0, t1]
    mid.save(str(tmp_path / "t.mid"))
    mel = M.load_midi(tmp_path / "t.mid")
    assert [(round(n.start, 3), round(n.end, 3)) for n in mel.notes] == [(0.0, 0.5), (0.5, 0.75)]


def test_default_track_is_the_melody(tmp_path):
    melody = [(b, 1, 67 + (b % 3)) for b in range(8)]
    chords = [(b, 1, p) for b in range(8) for p in (48, 52, 55)] + [(b + 0.5, 0.5, 43) for b in range(8)]
    drums = [(b / 2, 0.25, 36) for b in range(16)]
    p = write_midi(tmp_path / "m.mid", melody, extra_tracks=[("Piano", 0, chords), ("Drums", 9, drums)])
    tracks = M.read_midi_tracks(p)
    assert [len(t.notes) for t in tracks] == [0, 8, 32, 0] and tracks[3].drum_notes == 16
    mel = M.load_midi(p)
    assert mel.info["track"] == 1 and [n.pitch for n in mel.notes] == [p for _, _, p in melody]
    piano = M.load_midi(p, track="piano")
    assert piano.info["track"] == 2
    assert M.load_midi(p, track=2).info["track"] == 2
    with pytest.raises(AlignSTSError, match="no track 9"):
        M.load_midi(p, track=9)
    with pytest.raises(AlignSTSError, match="only drum notes"):
        M.load_midi(p, track=3)


def test_default_track_counts_melodic_notes_not_chord_notes(tmp_path):
    tune = [(b * 0.5, 0.5, 60 + b % 5) for b in range(12)]  # 12 notes, one at a time
    chords = [(b, 1, p) for b in range(6) for p in (48, 52, 55, 59)]  # 24 notes, but 6 chords
    p = write_midi(tmp_path / "m.mid", chords, name="", extra_tracks=[("", 0, tune)])
    mel = M.load_midi(p)
    assert mel.info["track"] == 2 and len(mel.notes) == 12


def test_channel_selection_and_drums(tmp_path):
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    trk = mido.MidiTrack()
    for ch, note in ((0, 60), (3, 72), (9, 36)):
        trk.append(mido.Message("note_on", channel=ch, note=note, velocity=80, time=0))
    trk.append(mido.Message("note_off", channel=0, note=60, velocity=0, time=480))
    trk.append(mido.Message("note_off", channel=3, note=72, velocity=0, time=0))
    trk.append(mido.Message("note_off", channel=9, note=36, velocity=0, time=0))
    mid.tracks.append(trk)
    mid.save(str(tmp_path / "c.mid"))
    assert [n.pitch for n in M.load_midi(tmp_path / "c.mid").notes] == [72]  # top line, drums ignored
    assert [n.pitch for n in M.load_midi(tmp_path / "c.mid", channel=1).notes] == [60]
    assert [n.pitch for n in M.load_midi(tmp_path / "c.mid", channel=4).notes] == [72]
    with pytest.raises(AlignSTSError, match="drum channel"):
        M.load_midi(tmp_path / "c.mid", channel=10)
    with pytest.raises(AlignSTSError, match="no notes on channel 5"):
        M.load_midi(tmp_path / "c.mid", channel=5)


def test_overlaps_reduce_to_one_line():
    notes = [M.Note(0.0, 1.0, 60), M.Note(0.5, 1.5, 64), M.Note(0.9, 2.0, 55), M.Note(1.0, 1.01, 50)]
    line = M.skyline(notes)
    assert [(n.start, n.end, n.pitch) for n in line] == [(0.0, 0.5, 60), (0.5, 1.5, 64), (1.5, 2.0, 55)]


def test_pitch_bend(tmp_path):
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    trk = mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("pitchwheel", pitch=4096, time=480),  # +1 semitone (range 2)
        mido.Message("note_off", note=60, velocity=0, time=480),
    ])
    mid.tracks.append(trk)
    mid.save(str(tmp_path / "b.mid"))
    plain = M.load_midi(tmp_path / "b.mid")
    bent = M.load_midi(tmp_path / "b.mid", pitch_bend=True)
    assert plain.f0[75] == pytest.approx(M.midi_to_hz(60))
    assert bent.f0[25] == pytest.approx(M.midi_to_hz(60))
    assert bent.f0[75] == pytest.approx(M.midi_to_hz(61))


def test_bad_midi(tmp_path):
    (tmp_path / "x.mid").write_bytes(b"not a midi file at all")
    with pytest.raises(AlignSTSError, match="not a valid MIDI"):
        M.load_midi(tmp_path / "x.mid")
    empty = mido.MidiFile()
    empty.tracks.append(mido.MidiTrack())
    empty.save(str(tmp_path / "e.mid"))
    with pytest.raises(AlignSTSError, match="no notes"):
        M.load_midi(tmp_path / "e.mid")
    drums = write_midi(tmp_path / "d.mid", [(0, 1, 36), (1, 1, 38)], channel=9)
    with pytest.raises(AlignSTSError, match="only drum"):
        M.load_midi(drums)


@pytest.mark.parametrize("text", [
    "time,frequency,confidence\n0.0,220,0.9\n0.01,220,0.9\n0.02,0,0.1\n0.03,330,0.95\n",
    "0.0,220\n0.01,220\n0.02,0\n0.03,330\n",
    "time\tf0\n0.0\t220\n0.01\t220\n0.02\t\n0.03\t330\n",
    "# from a pitch tracker\ntime,f0\n0.0,220\n0.01,220\n0.02,nan\n0.03,330\n",
    "time,frequency,confidence\n0.0,220,0.9\n0.01,220,0.9\n0.02,180,0.2\n0.03,330,0.95\n",
])
def test_csv_formats(tmp_path, text):
    p = tmp_path / "f0.csv"
    p.write_text(text)
    mel = M.load_f0_csv(p)
    assert mel.f0[:4] == pytest.approx([220, 220, 0, 330])


def test_csv_midi_units_and_resampling(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_text("time,midi\n0.0,69\n0.05,69\n0.1,81\n")
    mel = M.load_f0_csv(p)
    assert mel.f0[0] == pytest.approx(440) and mel.f0[10] == pytest.approx(880)
    assert mel.f0[5] == pytest.approx(440)  # between two 440 Hz samples 50 ms apart
    q = tmp_path / "plain.csv"
    q.write_text("0,57\n0.01,57\n")
    assert M.load_f0_csv(q, units="midi").f0[0] == pytest.approx(220)


@pytest.mark.parametrize("text,match", [
    ("hello world\nfoo bar\n", "not numbers"),
    ("time,f0\n", "no rows"),
    ("time,f0\n0,nan\n0.01,nan\n", "no voiced frames"),
    ("time,f0\n0.1,200\n0.05,200\n", "must increase"),
    ("time,f0\n0.0,200\n0.01\n", "expected time and F0"),
    ("", "empty"),
])
def test_csv_garbage(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(AlignSTSError, match=match):
        M.load_melody(p)


def test_binary_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(AlignSTSError):
        M.load_melody(p)


def test_extracted_f0_round_trips_through_csv(tmp_path):
    sr = 16000
    x = np.concatenate([vowel(220, 0.5, sr), np.zeros(sr // 5, np.float32), vowel(330, 0.5, sr)])
    f0, conf = M.extract_f0(x, sr)
    p = M.write_f0_csv(tmp_path / "r.f0.csv", f0, conf)
    mel = M.load_melody(p)
    n = min(len(f0), len(mel.f0))
    assert np.array_equal(mel.f0[:n] > 0, f0[:n] > 0)
    assert np.max(np.abs(mel.f0[:n] - f0[:n])) < 0.01
    assert [round(nt.pitch) for nt in mel.notes] == [57, 64]  # A3, E4


def test_reference_audio_melody(tmp_path):
    sr = 22050
    x = np.concatenate([vowel(196, 0.6, sr), vowel(262, 0.6, sr)])
    sf.write(tmp_path / "ref.wav", x, sr)
    mel = M.load_melody(tmp_path / "ref.wav")
    assert [round(n.pitch) for n in mel.notes] == [55, 60]
    v = mel.f0 > 0
    assert v.mean() > 0.85
    assert np.median(mel.f0[10:50]) == pytest.approx(196, rel=0.01)


def test_notes_from_contour_keeps_vibrato_as_one_note():
    t = np.arange(100) * HOP
    f0 = 220 * 2 ** (0.4 * np.sin(2 * np.pi * 5.5 * t) / 12)  # ±40 cents vibrato
    notes = M.notes_from_contour(np.concatenate([f0, np.full(50, 330.0)]))
    assert [round(n.pitch) for n in notes] == [57, 64]
    assert notes[1].start == pytest.approx(1.0)


def test_transpose_tempo_auto_key(tmp_path):
    p = write_midi(tmp_path / "m.mid", [(0, 1, 72), (1, 1, 76)])  # C5, E5; 0.5 s a beat
    mel = M.load_midi(p)
    up = M.prepare_melody(mel, transpose=2)
    assert up.f0[10] == pytest.approx(M.midi_to_hz(74)) and up.notes[0].pitch == 74
    fast = M.prepare_melody(mel, tempo=2.0)
    assert fast.duration == pytest.approx(0.5, abs=HOP) and fast.notes[1].start == pytest.approx(0.25)
    # A voice speaking around 110 Hz (A2): the melody comes down two octaves.
    low = M.prepare_melody(mel, auto_key_hz=110.0)
    assert low.info["auto_key_octaves"] == -2 and low.notes[0].pitch == 48


@pytest.mark.parametrize("voice_hz", [80.0, 120.0, 200.0, 300.0])
@pytest.mark.parametrize("away", [-24, -12, 0, 12, 24])
def test_the_singers_octave_by_default(tmp_path, voice_hz, away):
    """A melody two octaves from the voice, either way, is sung in the voice's octave, same key; --exact-octave
    keeps it as written."""
    point = float(M.hz_to_midi(voice_hz)) + M.SINGING_ABOVE_SPEECH
    base = int(round(point)) + away
    mel = M.load_midi(write_midi(tmp_path / "m.mid", [(0, 1, base - 2), (1, 1, base), (2, 1, base + 3)]))
    sung = M.prepare_melody(mel, voice_hz=voice_hz)
    assert abs(sung.median_midi() - point) <= 6.5
    shift = sung.notes[0].pitch - mel.notes[0].pitch
    assert shift == -away and shift % 12 == 0  # whole octaves: the key is kept
    assert ("notices" in sung.info) == (away != 0) and sung.info.get("octave_shift", 0) == -away // 12
    if away:
        assert "--exact-octave" in sung.info["notices"][0]
    hz = M.midi_to_hz([n.pitch for n in mel.notes])
    if hz.min() >= M.MIN_F0_HZ and hz.max() <= M.MAX_F0_HZ:
        exact = M.prepare_melody(mel, voice_hz=voice_hz, exact_octave=True)
        assert exact.notes[0].pitch == mel.notes[0].pitch and "notices" not in exact.info
    else:  # as written, no voice sings it: refused, saying what to do
        with pytest.raises(AlignSTSError, match="leave out --exact-octave"):
            M.prepare_melody(mel, voice_hz=voice_hz, exact_octave=True)
    # --transpose applies on top of the octave chosen for the melody as written.
    assert M.prepare_melody(mel, voice_hz=voice_hz, transpose=2).notes[0].pitch == sung.notes[0].pitch + 2


def test_a_melody_far_from_the_voice_is_refused_only_with_exact_octave(tmp_path):
    from alignsts_cli import api

    mel = M.load_midi(write_midi(tmp_path / "m.mid", [(0, 1, 80), (1, 1, 82)]))  # Ab5: 3 octaves above 100 Hz
    assert api.prepare_for_voice(mel, api.MelodyOptions(), 100.0).notes[0].pitch == 44
    with pytest.raises(AlignSTSError, match="leave out --exact-octave"):
        api.prepare_for_voice(mel, api.MelodyOptions(exact_octave=True), 100.0)
    with pytest.raises(AlignSTSError, match="give one of them"):
        api.prepare_for_voice(mel, api.MelodyOptions(exact_octave=True, auto_key=True), 100.0)


def test_range_and_length_checks(tmp_path):
    mel = M.load_midi(write_midi(tmp_path / "m.mid", [(0, 1, 60)]))
    with pytest.raises(AlignSTSError, match="outside the singable"):
        M.prepare_melody(mel, transpose=40)
    with pytest.raises(AlignSTSError, match="outside the singable"):
        M.prepare_melody(mel, transpose=-35)
    long = M.load_midi(write_midi(tmp_path / "l.mid", [(0, 1200, 60)]))  # 10 minutes
    with pytest.raises(AlignSTSError, match="split the song"):
        M.prepare_melody(long)


def test_melody_kind(tmp_path):
    assert M.melody_kind("a.MID") == "midi" and M.melody_kind("a.csv") == "csv"
    assert M.melody_kind("a.flac") == "audio" and M.melody_kind("a.xyz", "csv") == "csv"
    with pytest.raises(AlignSTSError, match="--melody-type"):
        M.melody_kind("a.xyz")


def test_a_legato_glide_is_not_a_note():
    # 62 -> 66 with a 60 ms glide through 64 (what a tracker reports for a singer's slide): two notes.
    seg = np.r_[np.full(50, 62.0), np.linspace(62, 66, 8)[1:-1], np.full(50, 66.0)]
    notes = M.notes_from_contour(M.midi_to_hz(seg), 0.01)
    assert [round(n.pitch) for n in notes] == [62, 66]
    assert abs(notes[1].start - 0.5) < 0.04
    # a 100 ms note between two others is a note
    run = np.r_[np.full(30, 60.0), np.full(10, 64.0), np.full(30, 67.0)]
    assert [round(n.pitch) for n in M.notes_from_contour(M.midi_to_hz(run), 0.01)] == [60, 64, 67]
