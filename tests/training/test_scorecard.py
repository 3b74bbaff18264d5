"""The real-speech scorecard (alignsts_cli/training/scorecard.py): the manifest, the control, the choice, and
`alignsts evaluate --pairs` end to end on espeak speech."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Melody, Note, render_notes
from alignsts_cli.training import metrics
from alignsts_cli.training import scorecard as S
from conftest import espeak, write_midi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_manifest_columns_ids_and_mistakes(tmp_path):
    m = tmp_path / "pairs.csv"
    m.write_text("speech,melody,transcript,language,sex,speaker\n# a comment\n"
                 "a.wav,tunes/a.mid,Hello there.,EN,F,f1\nb.wav,b.f0.csv,,,,\n")
    pairs = S.read_speech_pairs(m)
    assert S.is_speech_manifest(m)
    assert [p.id for p in pairs] == ["a--a", "b--b.f0"]
    a = pairs[0]
    assert a.speech == tmp_path / "a.wav" and a.melody == tmp_path / "tunes" / "a.mid"
    assert (a.transcript, a.language, a.sex, a.speaker) == ("Hello there.", "en", "f", "f1")
    assert pairs[1].transcript is None and pairs[1].language is None
    old = tmp_path / "scored.csv"
    old.write_text("reference,output\nr.wav,o.wav\n")
    assert not S.is_speech_manifest(old)  # the reference,output form of --pairs
    for text, message in (("a.wav,a.mid\n", "name the columns"), ("speech,melody\na.wav,\n", "row 2"),
                          ("id,speech,melody\nx,a.wav,a.mid\nx,b.wav,b.mid\n", "used twice"),
                          ("speech,melody\n", "lists no pairs")):
        m.write_text(text)
        with pytest.raises(AlignSTSError, match=message):
            S.read_speech_pairs(m)


def test_vowel_control_sings_the_melody_in_the_speakers_spectrum_without_words(tmp_path):
    audio, sr = sf.read(espeak(tmp_path / "s.wav", "Four hours of steady work faced us."), dtype="float32")
    notes = [Note(0.1, 0.6, 52), Note(0.6, 1.1, 55), Note(1.3, 2.3, 57)]
    melody = Melody(f0=render_notes(notes), notes=notes)
    ctl = S.vowel_control(audio, sr, melody)
    assert len(ctl) == round(2.3 * sr) and np.all(np.isfinite(ctl))
    acc = metrics.melody_accuracy(ctl, sr, melody)
    assert acc["raw_pitch_accuracy"] > 0.95 and abs(acc["duration_error"]) < 0.01
    t = np.arange(len(ctl)) / sr
    assert np.abs(ctl[(t > 1.12) & (t < 1.28)]).max() < 1e-3  # silent on the rest
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    assert 0.3 < rms(ctl[(t > 0.2) & (t < 1.0)]) / rms(audio[np.abs(audio) > 0.02]) < 3  # the speech's level


def _report(**systems):
    """A report whose means are the given ones: {name: {column: value}} for input, control and systems."""
    rep = S.SpeechReport([n for n in systems if n not in (S.INPUT, S.CONTROL)],
                         strangers={"speaker_similarity": 0.5, "pairs": 3})
    for name, values in systems.items():
        rep.rows.append({"system": name, "id": "x", **values})
    return rep


def test_choice_is_words_and_voice_first_then_quality_then_melody():
    floor_ceiling = dict(input={"closed_set": 1.0, "per": 0.5, "wer": 0.6, "dnsmos": 3.0},
                         control={"closed_set": 0.0, "per": 1.0, "wer": 1.0, "dnsmos": 2.0})
    clear = {"closed_set": 0.8, "per": 0.7, "wer": 0.9, "speaker_similarity": 0.8, "dnsmos": 2.2,
             "raw_chroma_accuracy": 0.8}
    mumbled = {"closed_set": 0.1, "per": 1.0, "wer": 1.1, "speaker_similarity": 0.5, "dnsmos": 3.2,
               "raw_chroma_accuracy": 1.0}
    choice = S.choose(_report(**floor_ceiling, clear=clear, mumbled=mumbled))
    assert choice["system"] == "clear"  # better quality and melody do not buy back lost words and voice
    assert choice["scores"]["clear"]["voice"] == pytest.approx(0.6)  # (0.8 - 0.5) / (1 - 0.5)
    assert choice["scores"]["clear"]["words"] == pytest.approx(np.mean([0.8, 0.6, 0.25]))
    twin = dict(clear, dnsmos=2.9)
    assert S.choose(_report(**floor_ceiling, clear=clear, twin=twin))["system"] == "twin"  # a tie: quality
    pitchy = dict(clear, raw_chroma_accuracy=0.95)
    assert S.choose(_report(**floor_ceiling, clear=clear, pitchy=pitchy))["system"] == "pitchy"  # then melody
    assert "Best by the scorecard" in _report(**floor_ceiling, clear=clear).markdown()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """`alignsts evaluate --pairs` on two espeak speakers, three melodies (MIDI, F0 CSV), psola and the
    bundled voice."""
    d = tmp_path_factory.mktemp("devset")
    espeak(d / "one.wav", "The birch canoe slid on the smooth planks.", voice="en-us")
    espeak(d / "two.wav", "Rice is often served in round bowls.", voice="en-us+f3")
    write_midi(d / "low.mid", [(k, 1, 48 + (0, 2, 4, 5, 7, 5, 4, 2)[k]) for k in range(8)], tempos=((0, 400000),))
    f0 = render_notes([Note(0.1 + 0.4 * k, 0.45 + 0.4 * k, 62 + (k % 3)) for k in range(8)])
    with (d / "high.f0.csv").open("w") as fh:
        fh.write("time,frequency\n" + "".join(f"{k * 0.01:.2f},{v:.2f}\n" for k, v in enumerate(f0)))
    (d / "pairs.csv").write_text(
        "speech,melody,transcript,language,speaker,sex\n"
        "one.wav,low.mid,The birch canoe slid on the smooth planks.,en,a,m\n"
        "two.wav,high.f0.csv,Rice is often served in round bowls.,en,b,f\n"
        "two.wav,low.mid,,,b,f\n")
    out = d / "report"
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNSTS_DEBUG", "ALIGNSTS_WEIGHTS_LOCK")}
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "evaluate", "--pairs", str(d / "pairs.csv"),
                           "-s", "psola", "-s", "alignsts", "-o", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    return proc, out


def test_evaluate_pairs_writes_the_scorecard(scored):
    proc, out = scored
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in ("input (ceiling)", "psola", "alignsts", "control (floor)", "strangers (floor)", "chroma"):
        assert label in proc.stdout
    assert "best by the scorecard:" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "alignsts-scorecard" and report["settings"]["items"] == 3
    rows = {(r["system"], r["id"]): r for r in report["items"]}
    assert len(rows) == 3 * 4  # input, psola, alignsts, control for each pair
    for system in ("psola", "alignsts", "control"):
        r = rows[(system, "one--low")]
        assert sf.info(r["output"]).duration == pytest.approx(8 * 0.4, abs=0.05)  # 8 beats of 0.4 s
        assert 0 <= r["raw_pitch_accuracy"] <= 1 and -1 <= r["speaker_similarity"] <= 1
        assert {"wer", "per", "closed_set", "dnsmos"} <= set(r)
        assert "wer" not in rows[(system, "two--low")]  # no transcript: no word figures
    assert rows[("control", "one--low")]["raw_pitch_accuracy"] > 0.9  # the control follows the melody exactly
    assert rows[("psola", "one--low")]["raw_chroma_accuracy"] > 0.6
    assert "speaker_similarity" not in rows[("input", "one--low")]
    means = report["systems"]
    assert means["input"]["per"] < means["control"]["per"]  # the ceiling and the floor are apart
    assert means["strangers"]["items"] == 0  # no two recordings of different speakers of the same sex
    assert report["choice"]["system"] in ("psola", "alignsts")
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["one--low.png", "two--high.f0.png", "two--low.png"]
    assert (out / "plots" / "one--low.png").read_bytes()[:4] == b"\x89PNG"
    assert "| input (ceiling) |" in (out / "report.md").read_text()


def test_evaluate_pairs_mistakes_are_one_line(tmp_path, scored):
    _, out = scored
    env = {k: v for k, v in os.environ.items() if k != "ALIGNSTS_DEBUG"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "alignsts_cli", "evaluate", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=300)
    pairs = out.parent / "pairs.csv"
    proc = run("--pairs", pairs, "-s", "ground-truth", "-o", tmp_path / "r")
    assert proc.returncode == 1 and "no sung reference" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run("--pairs", pairs, "-o", out)  # an earlier scorecard is kept unless --overwrite
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text(pairs.read_text().replace("one.wav", "gone.wav").replace("low.mid", str(out.parent / "low.mid")))
    proc = run("--pairs", broken, "-o", tmp_path / "r2")  # found before any work, not after an hour
    assert proc.returncode == 1 and "gone.wav: no such file" in proc.stderr and not (tmp_path / "r2").exists()
