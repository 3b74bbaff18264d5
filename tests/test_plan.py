"""The editable syllable-to-note plan (alignsts_cli/plan.py): saved, edited, sung, and refused when wrong."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.melody import extract_f0, midi_to_hz
from conftest import espeak, write_midi

PITCHES = (50, 53, 57, 55)


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "ALIGNSTS_DEBUG"}
    return subprocess.run([sys.executable, "-m", "alignsts_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def brightness(x, sr):
    """Energy at 1.6-3 kHz over energy at 200-1000 Hz, dB: high for 'ee' (F2 about 2.3 kHz), low for 'oo'."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return 10 * np.log10(spec[(f > 1600) & (f < 3000)].sum() / spec[(f > 200) & (f < 1000)].sum())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    espeak(d / "bb.wav", "bee, boo, bee, boo.", speed=120)
    write_midi(d / "m.mid", [(2 * k, 1.8, p) for k, p in enumerate(PITCHES)])  # 0.9 s notes, 0.1 s rests
    proc = run("convert", d / "bb.wav", "-m", d / "m.mid", "-o", d / "plain.wav", "--save-plan", d / "plan.json")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "--plan" in proc.stdout
    return d


def note_middle(x, sr, k):
    a, b = int((k + 0.25) * sr), int((k + 0.7) * sr)  # note k runs from k s to k + 0.9 s
    return x[a:b]


def test_a_saved_plan_edited_is_sung_as_edited(saved):
    d = saved
    plan = json.loads((d / "plan.json").read_text())
    assert plan["format"] == "alignsts-plan" and len(plan["syllables"]) == 4 and len(plan["notes"]) == 4
    assert [e["syllables"] for e in plan["plan"]] == [[0], [1], [2], [3]]
    assert [n["name"] for n in plan["notes"]] == ["D3", "F3", "A3", "G3"]
    s = plan["syllables"][1]
    assert s["start"] < s["vowel"][0] < s["vowel"][1] <= s["end"]
    plan["plan"][1]["syllables"], plan["plan"][2]["syllables"] = [2], [1]  # "boo" and "bee" change notes
    (d / "swapped.json").write_text(json.dumps(plan))
    proc = run("convert", d / "bb.wav", "-m", d / "m.mid", "-o", d / "swapped.wav", "--plan", d / "swapped.json",
               "--plot", d / "swapped.png")
    assert proc.returncode == 0, proc.stderr
    plain, sr = sf.read(d / "plain.wav")
    swapped, _ = sf.read(d / "swapped.wav")
    assert len(plain) == len(swapped)
    # Before: note 1 sings "boo" (dark), note 2 "bee" (bright); after the edit, the other way round.
    b = {name: [brightness(note_middle(x, sr, k), sr) for k in (1, 2)] for name, x in (("plain", plain),
                                                                                       ("swapped", swapped))}
    assert b["plain"][1] > b["plain"][0] + 3 and b["swapped"][0] > b["swapped"][1] + 3, b
    assert b["swapped"][0] > b["plain"][0] + 3 and b["plain"][1] > b["swapped"][1] + 3, b
    # The pitch still follows the notes, on their timing.
    for x in (plain, swapped):
        f0, _ = extract_f0(x.astype(np.float32), sr)
        for k, pitch in enumerate(PITCHES):
            mid = f0[int((k + 0.3) / 0.01):int((k + 0.6) / 0.01)]
            assert np.median(mid) == pytest.approx(midi_to_hz(pitch), rel=0.03)
    assert (d / "swapped.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["plan"][1].update(syllables=[3, 1]), "entry 1: syllables [3, 1] must be consecutive"),
    (lambda p: p["plan"][2].update(notes=[0]), "entry 2: notes [0] come before"),
    (lambda p: p["plan"][0].update(syllables=[7]), "entry 0: syllables [7] go past the 4"),
    (lambda p: p["syllables"][0].update(vowel=[9.0, 9.5]), "syllable 0: start"),
    (lambda p: p["notes"].pop(), "made for a melody of 3 notes"),
    (lambda p: p.update(plan=[]), "no entries"),
])
def test_a_bad_plan_names_the_entry_and_writes_nothing(saved, tmp_path, edit, message):
    plan = json.loads((saved / "plan.json").read_text())
    edit(plan)
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    out = tmp_path / "o.wav"
    proc = run("convert", saved / "bb.wav", "-m", saved / "m.mid", "-o", out, "--plan", tmp_path / "bad.json")
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
    (tmp_path / "junk.json").write_text("{not json")
    proc = run("convert", saved / "bb.wav", "-m", saved / "m.mid", "-o", out, "--plan", tmp_path / "junk.json")
    assert proc.returncode == 1 and "not a readable plan" in proc.stderr


def test_the_neural_engine_cuts_long_songs_where_the_plan_allows():
    from alignsts_cli.analysis import Syllable
    from alignsts_cli.engines.alignsts import plan_chunks
    from alignsts_cli.melody import Melody, Note, render_notes

    notes = [Note(2.0 * k, 2.0 * k + 1.8, 50) for k in range(20)]  # 40 s: must be cut
    sylls = [Syllable(0.3 * k, 0.3 * k + 0.3, 0.3 * k + 0.1, 0.3 * k + 0.2, 0.3 * k + 0.15) for k in range(20)]
    melody = Melody(f0=render_notes(notes), notes=notes)
    in_order = [([k], [k]) for k in range(20)]
    assert len(plan_chunks(melody, sylls, 6.0, groups=in_order)) >= 3
    crossed = [([k], [k]) for k in range(20)]
    crossed[1], crossed[18] = ([18], [1]), ([1], [18])  # syllable 18 sung second: no cut between notes 1 and 18
    chunks = plan_chunks(melody, sylls, 6.0, groups=crossed)
    assert not any(2.0 < c.t1 < 36.0 for c in chunks[:-1])
