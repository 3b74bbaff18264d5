"""Datasets, splits, the prepared cache and its torch batches."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.training import data as D
from alignsts_cli.errors import AlignSTSError
from conftest import vowel


def wav(path, f0=200.0, seconds=0.6, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, vowel(f0, seconds, sr), sr)
    return path


def write_csv(folder, rows, header=("id", "speaker", "speech", "singing", "lyrics", "song")):
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_read_csv_manifest(tmp_path):
    wav(tmp_path / "sp" / "a.wav"), wav(tmp_path / "si" / "tune-a.wav"), wav(tmp_path / "sp" / "b.wav")
    write_csv(tmp_path, [("a", "anna", "sp/a.wav", "si/tune-a.wav", "hello there", ""),
                         ("b", "ben", "sp/b.wav", str(tmp_path / "si" / "tune-a.wav"), "", "twinkle"),
                         ("", "", "", "", "", "")])  # blank rows are skipped
    items = D.read_dataset(tmp_path)
    assert [it.id for it in items] == ["a", "b"]
    a, b = items
    assert a.speaker == "anna" and a.speech == tmp_path / "sp" / "a.wav" and a.text == "hello there"
    assert a.song == "tune-a" and b.song == "twinkle" and a.split is None
    assert D.read_any(tmp_path)[0].id == "a"


def test_read_json_manifest(tmp_path):
    wav(tmp_path / "s.wav"), wav(tmp_path / "g.wav")
    row = {"id": "x1", "speaker": "zoe", "speech": "s.wav", "singing": "g.wav", "lyrics": "la la", "split": "test"}
    (tmp_path / "manifest.json").write_text(json.dumps({"items": [row]}))
    (it,) = D.read_dataset(tmp_path)
    assert (it.id, it.speaker, it.text, it.split, it.song) == ("x1", "zoe", "la la", "test", "g")
    (tmp_path / "manifest.json").write_text(json.dumps([row]))
    assert D.read_dataset(tmp_path)[0].id == "x1"


@pytest.mark.parametrize("rows,header,message", [
    ([("a", "anna", "s.wav", "g.wav")], ("id", "speaker", "speech"), r"lacks singing"),
    ([("a", "anna", "missing.wav", "g.wav")], None, r"line 2 \(id 'a'\): speech file .*missing.wav not found"),
    ([("a", "", "s.wav", "g.wav")], None, r"line 2: field 'speaker' is empty"),
    ([("a", "anna", "s.wav", "g.wav"), ("a", "anna", "s.wav", "g.wav")], None, r"line 3: id 'a' is used twice"),
    ([("a/b", "anna", "s.wav", "g.wav")], None, r"cannot name a file"),
    ([("a", "anna", "s.wav", "g.wav", "train"), ("b", "anna", "s.wav", "g.wav", "")],
     ("id", "speaker", "speech", "singing", "split"), r"split for 1 of 2 items"),
    ([("a", "anna", "s.wav", "g.wav", "dev")], ("id", "speaker", "speech", "singing", "split"), r"split 'dev'"),
])
def test_manifest_errors_name_the_problem(tmp_path, rows, header, message):
    wav(tmp_path / "s.wav"), wav(tmp_path / "g.wav")
    write_csv(tmp_path, rows, header or ("id", "speaker", "speech", "singing"))
    with pytest.raises(AlignSTSError, match=message):
        D.read_dataset(tmp_path)


def test_missing_or_double_manifest(tmp_path):
    with pytest.raises(AlignSTSError, match="no manifest.csv or manifest.json"):
        D.read_dataset(tmp_path)
    write_csv(tmp_path, [])
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(AlignSTSError, match="both manifest.csv and manifest.json"):
        D.read_dataset(tmp_path)
    (tmp_path / "manifest.csv").unlink()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(AlignSTSError, match="not valid JSON"):
        D.read_dataset(tmp_path)


def gtsinger_tree(root):
    """A small tree laid out like GTSinger: Language/Singer/Technique/Song/<Group>/NNNN.wav + .json."""
    words = [{"word": "<SP>"}, {"word": "my"}, {"word": "love"}, {"word": "<AP>"}]
    layout = {
        ("English", "EN-Alto-1", "Breathy", "my love"): ["0000", "0001"],
        ("English", "EN-Alto-1", "Vibrato", "far away"): ["0000"],
        ("English", "EN-Tenor-1", "Breathy", "my love"): ["0000"],
    }
    for (lang, singer, tech, song), idx in layout.items():
        base = root / lang / singer / tech / song
        for i in idx:
            for group in ("Control_Group", f"{tech}_Group", "Paired_Speech_Group"):
                wav(base / group / f"{i}.wav")
                (base / group / f"{i}.json").write_text(json.dumps(words))
    wav(root / "English" / "EN-Tenor-1" / "Breathy" / "my love" / "Paired_Speech_Group" / "0005.wav")  # no singing
    (root / "English" / "EN-Tenor-1" / "Breathy" / "my love" / "Control_Group" / "0000.TextGrid").write_text("")
    return root


def test_read_gtsinger(tmp_path):
    root = gtsinger_tree(tmp_path / "GTSinger")
    items = D.read_gtsinger(root)
    assert len(items) == 4
    assert D.is_gtsinger(root) and [it.id for it in D.read_any(root)] == [it.id for it in items]
    first = items[0]
    assert first.id == "EN-Alto-1_Breathy_my_love_Control_0000"
    assert first.speaker == "EN-Alto-1" and first.song == "my love" and first.text == "my love"
    assert first.speech.parent.name == "Paired_Speech_Group" and first.singing.parent.name == "Control_Group"
    assert first.speech.name == first.singing.name
    assert first.extra == {"language": "English", "technique": "Breathy", "group": "Control_Group"}
    assert {it.speaker for it in items} == {"EN-Alto-1", "EN-Tenor-1"}
    both = D.read_gtsinger(root / "English" / "EN-Alto-1", groups=("Control_Group", "Breathy_Group"))
    assert len(both) == 5 and sum(it.singing.parent.name == "Breathy_Group" for it in both) == 2
    with pytest.raises(AlignSTSError, match="no GTSinger pairs"):
        D.read_gtsinger(tmp_path / "GTSinger" / "English" / "EN-Alto-1" / "Vibrato" / "far away" / "Control_Group")


def fake_items(n_speakers=8, n_songs=12, per=40, seed=0):
    rng = np.random.default_rng(seed)
    return [D.Item(f"i{k}", f"spk{rng.integers(n_speakers)}", D.Path("s.wav"), D.Path("g.wav"),
                   song=f"song{rng.integers(n_songs)}") for k in range(per * 5)]


def test_split_has_no_leaks():
    items = fake_items()
    parts = D.split_items(items, seed=1, valid_fraction=0.1, test_fraction=0.1)
    assert sorted(it.id for p in parts.values() for it in p) == sorted(it.id for it in items)
    train, test = parts["train"], parts["test"]
    assert test and train and parts["valid"]
    assert not {it.speaker for it in test} & {it.speaker for it in train}
    assert not {it.song for it in test} & {it.song for it in train}
    assert len(test) >= 0.1 * len(items) - 1
    assert len(parts["valid"]) >= 0.1 * len(items) - 1
    again = D.split_items(items, seed=1)
    assert [it.id for it in again["test"]] == [it.id for it in test]
    assert [it.id for it in D.split_items(items, seed=2)["test"]] != [it.id for it in test]


def test_split_honours_the_manifest_but_never_leaks():
    mk = lambda i, spk, song, split: D.Item(i, spk, D.Path("s"), D.Path("g"), song=song, split=split)  # noqa: E731
    items = [mk("a", "x", "s1", "train"), mk("b", "y", "s2", "test"), mk("c", "x", "s3", "test"),
             mk("d", "z", "s1", "test"), mk("e", "y", "s4", "valid")]
    parts = D.split_items(items)
    assert [it.id for it in parts["test"]] == ["b"]  # c shares its speaker, d its song with train
    assert [it.id for it in parts["valid"]] == ["e", "c", "d"]
    with pytest.raises(AlignSTSError, match="one speaker"):
        D.split_items([mk(str(i), "x", f"s{i}", None) for i in range(5)])


