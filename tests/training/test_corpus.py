"""The synthetic paired corpus: Festival speech and singing of the same sentence to music21 melodies."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.training import corpus as C
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import extract_f0, hz_to_midi, load_midi

TINY = dict(seed=7, voices=4, sentences=6, melodies=4, items=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    if C.shutil.which("festival") is None:
        pytest.fail("Festival is not installed; run `bash scripts/install-festival.sh`")
    C.make_corpus(out, **TINY)
    return out


def rows(folder):
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifest_and_files(tiny):
    with open(tiny / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(C.MANIFEST_FIELDS)
    rs = rows(tiny)
    assert len(rs) == TINY["items"]
    assert {r["split"] for r in rs} == {"train", "valid", "test"}
    names = {v.name for v in C.VOICES[:4]}
    for r in rs:
        assert r["speaker"] in names and r["id"].endswith(r["speaker"])
        assert r["lyrics"] in C.SENTENCES
        for key in ("speech", "singing"):
            info = sf.info(str(tiny / r[key]))
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert 1.0 < info.duration < 15.0
        assert (tiny / r["melody"]).is_file()
    info = json.loads((tiny / "corpus.json").read_text())
    assert info["seed"] == TINY["seed"] and len(info["items"]) == TINY["items"]


def test_sung_f0_follows_the_melody(tiny):
    """Praat F0 in the middle half of every note against the note (the MIDI written beside it)."""
    errors, female, male = [], [], []
    for r in rs_sorted(tiny):
        song, sr = sf.read(str(tiny / r["singing"]), dtype="float32")
        notes = load_midi(tiny / r["melody"]).notes
        f0, _ = extract_f0(song, sr, hop=0.01)
        t = np.arange(len(f0)) * 0.01
        assert notes[0].start == pytest.approx(C.PAD_SECONDS, abs=0.01)
        assert len(song) / sr == pytest.approx(notes[-1].end + C.PAD_SECONDS, abs=0.06)
        for n in notes:
            sel = (t > n.start + 0.25 * n.duration) & (t < n.end - 0.25 * n.duration) & (f0 > 0)
            if sel.sum():
                errors.append(abs(float(np.median(100 * (hz_to_midi(f0[sel]) - n.pitch)))))
        (female if "-f" in r["speaker"] else male).append(np.median([n.pitch for n in notes]))
        speech, sr = sf.read(str(tiny / r["speech"]), dtype="float32")
        s0, _ = extract_f0(speech, sr, floor=60, ceiling=500)
        median_speech = np.median(s0[s0 > 0])
        assert (median_speech > 160) if "-f" in r["speaker"] else (median_speech < 150)
    errors = np.array(errors)
    print(f"\nsung F0 vs notes: median {np.median(errors):.1f} cents, {np.mean(errors < 50):.1%} of "
          f"{len(errors)} notes within 50 cents")
    assert np.median(errors) < 10
    assert np.mean(errors < 50) >= 0.95
    assert female and male and min(female) > max(male) - 3  # female range sits higher (about an octave)
    assert np.median(female) - np.median(male) > 8


def rs_sorted(folder):
    return sorted(rows(folder), key=lambda r: r["id"])


def test_held_out_voices_sentences_and_melodies(tiny):
    rs = rows(tiny)
    train = [r for r in rs if r["split"] == "train"]
    for split in ("valid", "test"):
        held = [r for r in rs if r["split"] == split]
        assert held
        assert not {r["lyrics"] for r in held} & {r["lyrics"] for r in train}
        assert not {r["song"] for r in held} & {r["song"] for r in train}
    test = [r for r in rs if r["split"] == "test"]
    assert not {r["speaker"] for r in test} & {r["speaker"] for r in train}
    info = json.loads((tiny / "corpus.json").read_text())
    assert set(info["held_out"]["test"]["voices"]) == {r["speaker"] for r in test}
    assert len(info["held_out"]["test"]["voices"]) == 2  # one male and one female range
    ranges = {v["name"]: v["range"] for v in info["voices"]}
    assert {ranges[v] for v in info["held_out"]["test"]["voices"]} == {"male", "female"}


def test_same_seed_same_corpus(tiny, tmp_path):
    again = C.make_corpus(tmp_path / "again", **TINY).parent
    assert (again / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()
    assert (again / "corpus.json").read_bytes() == (tiny / "corpus.json").read_bytes()
    for r in rows(tiny):
        for key in ("speech", "singing", "melody"):
            assert (again / r[key]).read_bytes() == (tiny / r[key]).read_bytes(), r[key]
    other = C.plan_corpus(**{**TINY, "seed": 8}, workdir=tmp_path)
    mine = C.plan_corpus(**TINY, workdir=tmp_path)
    triples = lambda plan: [(p.voice.name, p.sentence, p.melody) for p in plan[-1]]  # noqa: E731
    assert triples(other) != triples(mine)


def test_fit_phrase_fits_the_sentence():
    src = C.MelodySource("test", midi=[72, 74, 76, 77, 79, 77, 76, 74, 72, 71, 72, 74, 76, 74],
                         beats=[1, 1, 1, 1, 2, 0.25, 0.25, 0.5, 1, 1, 1, 1, 3, 1],
                         rest_before=[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                         phrase_start=[True] + [False] * 13)
    voice = C.VOICES[0]
    rng = np.random.default_rng(0)
    for syllables in (5, 9, 20):
        ends = {1, 3, syllables - 1}
        ph = C.fit_phrase(src, syllables, voice, rng, ends)
        assert len(ph.midi) == len(ph.durations) == len(ph.rests) == syllables
        assert all(C.MIN_NOTE_SECONDS <= d <= C.MAX_NOTE_SECONDS for d in ph.durations)
        assert abs(np.median(ph.midi) - voice.sing_center) <= 3
        assert all(r == 0 or k in ends for k, r in enumerate(ph.rests)) and ph.rests[-1] == 0
        notes = ph.notes(offset=0.1)
        assert notes[0].start == pytest.approx(0.1)
        assert notes[-1].end == pytest.approx(0.1 + sum(ph.durations) + sum(ph.rests), abs=1e-3)


def test_singing_score_gives_one_value_per_syllable():
    ph = C.Phrase([60, 62, 64, 65], [0.5, 0.4, 0.4, 0.6], [0.0, 0.0, 0.3, 0.0], 0, 0, 0.5)
    xml = C.singing_score(["the", "morning", "sun"], [1, 2, 1], ph, pitch_factor=2.0)
    assert '<PITCH FREQ="130.813"><DURATION SECONDS="0.500">the</DURATION></PITCH>' in xml
    assert 'FREQ="146.832,164.814"><DURATION SECONDS="0.400,0.400">morning<' in xml
    assert '<REST SECONDS="0.300"></REST>' in xml and xml.index("REST") > xml.index("morning")


def test_refusals(tiny, tmp_path, monkeypatch):
    with pytest.raises(AlignSTSError, match="already holds a corpus"):
        C.make_corpus(tiny, **TINY)
    with pytest.raises(AlignSTSError, match="unknown voice"):
        C.make_corpus(tmp_path / "a", voices=["nobody"], sentences=4, melodies=3, items=4)
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(AlignSTSError, match="install-festival.sh"):
        C.make_corpus(tmp_path / "b", sentences=4, melodies=3, items=4)
