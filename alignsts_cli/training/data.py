"""Datasets of paired speech and singing: manifests, GTSinger, and leak-free splits.

Raw datasets
------------
A dataset is a folder with ``manifest.csv`` or ``manifest.json`` (:func:`read_dataset`)::

    id,speaker,speech,singing,lyrics,song,split
    a001,anna,speech/a001.wav,singing/a001.wav,Twinkle twinkle little star,twinkle,

``id``, ``speaker``, ``speech`` and ``singing`` are required (paths relative to the folder); ``lyrics``,
``song`` (default: the singing file's stem), ``split`` (train / valid / test, for all items or none)
and ``melody`` (a MIDI file of the sung notes) are optional; other columns are ignored. JSON holds a
list of objects with the same keys (or ``{"items": [...]}``). GTSinger's own layout is read as it
comes (:func:`read_gtsinger`).

Splits (:func:`split_items`) are by speaker *and* by song: no test item shares its speaker or its song
with a training item. Items that would leak go to valid.

:mod:`alignsts_cli.training.cache` turns a dataset into the prepared cache that training and evaluation read.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from alignsts_cli.errors import AlignSTSError

SPLITS = ("train", "valid", "test")
#: Manifest fields.
REQUIRED_FIELDS = ("id", "speaker", "speech", "singing")
OPTIONAL_FIELDS = ("lyrics", "song", "split", "melody")
#: GTSinger: the group of natural singing paired with the speech, and the words that are not words.
GTSINGER_SPEECH = "Paired_Speech_Group"
GTSINGER_SINGING = "Control_Group"
GTSINGER_SILENCES = {"<SP>", "<AP>", "_NONE", "SP", "AP", ""}


@dataclass
class Item:
    """One pair of recordings: the same words spoken and sung by the same person."""

    id: str
    speaker: str
    speech: Path
    singing: Path
    text: str = ""
    song: str = ""
    split: str | None = None  # "train" / "valid" / "test" when the dataset says so
    melody: Path | None = None  # notes of the singing (MIDI), when the dataset has them
    extra: dict = field(default_factory=dict)  # anything else the reader knows (GTSinger technique, ...)


# --------------------------------------------------------------------------- readers


_BAD_ID = re.compile(r"[/\\\x00]|^\.|^$")


def _resolve(folder: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def _make_item(row: dict, where: str, folder: Path, seen: set) -> Item:
    """An ``Item`` from one manifest row; ``where`` names the row in messages."""
    for key in REQUIRED_FIELDS:
        value = row.get(key)
        if value is None or not str(value).strip():
            raise AlignSTSError(f"{where}: field '{key}' is empty; every row needs {', '.join(REQUIRED_FIELDS)}")
    item_id = str(row["id"]).strip()
    if _BAD_ID.search(item_id):
        raise AlignSTSError(f"{where}: id {item_id!r} cannot name a file; use ids without '/', '\\' or a leading '.'")
    if item_id in seen:
        raise AlignSTSError(f"{where}: id {item_id!r} is used twice; give every item its own id")
    seen.add(item_id)
    paths = {}
    for key in ("speech", "singing"):
        p = _resolve(folder, str(row[key]).strip())
        if not p.is_file():
            raise AlignSTSError(
                f"{where} (id {item_id!r}): {key} file {p} not found; check the path (relative to {folder})"
            )
        paths[key] = p
    split = str(row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise AlignSTSError(f"{where} (id {item_id!r}): split {split!r} is not one of {', '.join(SPLITS)}")
    melody = str(row.get("melody") or "").strip()
    melody_path = _resolve(folder, melody) if melody else None
    if melody_path is not None and not melody_path.is_file():
        raise AlignSTSError(f"{where} (id {item_id!r}): melody file {melody_path} not found; check the path")
    song = str(row.get("song") or "").strip() or paths["singing"].stem
    return Item(item_id, str(row["speaker"]).strip(), paths["speech"], paths["singing"],
                text=str(row.get("lyrics") or "").strip(), song=song, split=split, melody=melody_path)


def read_dataset(folder: str | os.PathLike) -> list[Item]:
    """Items of a dataset folder with ``manifest.csv`` or ``manifest.json`` (see the module docstring).

    Raises ``AlignSTSError`` naming the file, the row and the field for a missing manifest, a
    missing column, an empty field, a missing audio file, a duplicate id or a bad split.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AlignSTSError(f"{folder}: no such folder; give the dataset folder (with manifest.csv or manifest.json)")
    csv_path, json_path = folder / "manifest.csv", folder / "manifest.json"
    if csv_path.exists() and json_path.exists():
        raise AlignSTSError(f"{folder}: has both manifest.csv and manifest.json; keep one of them")
    seen: set[str] = set()
    items: list[Item] = []
    if csv_path.exists():
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise AlignSTSError(f"{csv_path}: is not UTF-8 text; save the manifest as UTF-8 CSV") from None
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [f for f in REQUIRED_FIELDS if f not in header]
        if missing:
            raise AlignSTSError(
                f"{csv_path}: the header lacks {', '.join(missing)}; the first line must name the columns "
                f"{','.join(REQUIRED_FIELDS)} (and optionally {','.join(OPTIONAL_FIELDS)})"
            )
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            if None in row:
                raise AlignSTSError(f"{where}: more fields than the header names; quote fields that contain commas")
            if not any((v or "").strip() for v in row.values()):
                continue
            items.append(_make_item(row, where, folder, seen))
    elif json_path.exists():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise AlignSTSError(f"{json_path}: is not valid JSON ({exc}); fix the file") from None
        if isinstance(data, dict):
            data = data.get("items")
        if not isinstance(data, list):
            raise AlignSTSError(f"{json_path}: must hold a list of items (or {{\"items\": [...]}})")
        for k, row in enumerate(data):
            where = f"{json_path} item {k}"
            if not isinstance(row, dict):
                raise AlignSTSError(f"{where}: must be an object with {', '.join(REQUIRED_FIELDS)}")
            items.append(_make_item(row, where, folder, seen))
    else:
        raise AlignSTSError(
            f"{folder}: no manifest.csv or manifest.json; write one listing id,speaker,speech,singing per item "
            "(or give a GTSinger folder)"
        )
    if not items:
        raise AlignSTSError(f"{csv_path if csv_path.exists() else json_path}: lists no items; add at least one row")
    given = sum(it.split is not None for it in items)
    if 0 < given < len(items):
        raise AlignSTSError(
            f"{folder}: the manifest gives a split for {given} of {len(items)} items; give it for all of them or none"
        )
    return items


def _gtsinger_words(json_path: Path) -> str:
    """The sung words of a GTSinger segment JSON (a list of word entries), silences left out."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict):
        data = data.get("words") or data.get("word") or []
    words = []
    for w in data if isinstance(data, list) else []:
        word = str(w.get("word", "")).strip() if isinstance(w, dict) else ""
        if word not in GTSINGER_SILENCES:
            words.append(word)
    return " ".join(words)


def is_gtsinger(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds GTSinger's layout (a ``Paired_Speech_Group`` folder somewhere below)."""
    folder = Path(folder)
    return folder.is_dir() and next(folder.rglob(GTSINGER_SPEECH), None) is not None


def read_gtsinger(folder: str | os.PathLike, *, groups: Sequence[str] = (GTSINGER_SINGING,)) -> list[Item]:
    """Paired items of a GTSinger tree (the whole corpus, one language or one singer)::

        <Language>/<Singer>/<Technique>/<Song>/Paired_Speech_Group/0000.wav (+ 0000.json)
                                              /Control_Group/0000.wav       (+ 0000.json)
                                              /<Technique>_Group/0000.wav

    Speech ``Paired_Speech_Group/NNNN.wav`` is paired with ``<group>/NNNN.wav`` for each of
    ``groups`` (default: the natural singing of ``Control_Group``; add e.g. ``"Vibrato_Group"`` for
    technique singing). Speaker = the singer folder, song = the song folder (so a song sung by
    several singers counts as one song), text = the words of the singing's JSON without silences.
    Pairs missing either file are left out.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AlignSTSError(f"{folder}: no such folder; give the GTSinger folder")
    items: list[Item] = []
    seen: set[str] = set()
    for speech_dir in sorted(folder.rglob(GTSINGER_SPEECH)):
        if not speech_dir.is_dir():
            continue
        song_dir = speech_dir.parent
        technique_dir = song_dir.parent
        singer_dir = technique_dir.parent
        language = singer_dir.parent.name if singer_dir.parent != singer_dir else ""
        for speech in sorted(speech_dir.glob("*.wav")):
            for group in groups:
                singing = song_dir / group / speech.name
                if not singing.is_file():
                    continue
                parts = [singer_dir.name, technique_dir.name, song_dir.name, group.replace("_Group", ""), speech.stem]
                item_id = re.sub(r"[^\w.-]+", "_", "_".join(parts)).strip("_")
                if item_id in seen:
                    continue
                seen.add(item_id)
                text = _gtsinger_words(singing.with_suffix(".json")) or _gtsinger_words(speech.with_suffix(".json"))
                items.append(Item(item_id, singer_dir.name, speech, singing, text=text, song=song_dir.name,
                                  extra={"language": language, "technique": technique_dir.name, "group": group}))
    if not items:
        raise AlignSTSError(
            f"{folder}: no GTSinger pairs found; expected <Language>/<Singer>/<Technique>/<Song>/"
            f"{GTSINGER_SPEECH}/0000.wav beside {'/'.join(groups)}/0000.wav"
        )
    return items


def read_any(dataset: str | os.PathLike) -> list[Item]:
    """A manifest folder (:func:`read_dataset`), else a GTSinger tree (:func:`read_gtsinger`)."""
    folder = Path(dataset).expanduser()
    if (folder / "manifest.csv").exists() or (folder / "manifest.json").exists() or not is_gtsinger(folder):
        return read_dataset(folder)
    return read_gtsinger(folder)


# --------------------------------------------------------------------------- splits


def _leak_free(items: list[Item], test_speakers: set, test_songs: set) -> dict[str, list[int]]:
    """Indices per split: test = held-out speaker and song, train = neither, valid = one of the two."""
    out = {s: [] for s in SPLITS}
    for k, it in enumerate(items):
        a, b = it.speaker in test_speakers, it.song in test_songs
        out["test" if a and b else "train" if not a and not b else "valid"].append(k)
    return out


def split_items(items: Sequence[Item], *, seed: int = 0, valid_fraction: float = 0.1,
                test_fraction: float = 0.1, trials: int = 64) -> dict[str, list[Item]]:
    """Split items into ``{"train", "valid", "test"}`` so that no test item's speaker or song occurs in train.

    When every item carries a ``split`` (the synthetic corpus's held-out voices, sentences and
    melodies) it is honoured, except that a test item whose speaker or song also occurs in train
    is moved to valid. Otherwise test speakers and test songs are drawn (``seed``) so that their
    shared items make about ``test_fraction`` of the data while leaving as much as possible to
    train (the best of ``trials`` draws); items with a held-out speaker or a held-out song but not
    both go to valid, which is topped up with random training items to ``valid_fraction``.
    """
    items = list(items)
    if not items:
        raise AlignSTSError("no items to split")
    if all(it.split is not None for it in items):
        groups = {s: [it for it in items if it.split == s] for s in SPLITS}
        seen_speakers = {it.speaker for it in groups["train"]}
        seen_songs = {it.song for it in groups["train"]}
        leaks = [it for it in groups["test"] if it.speaker in seen_speakers or it.song in seen_songs]
        if leaks:
            groups["test"] = [it for it in groups["test"] if it not in leaks]
            groups["valid"] = groups["valid"] + leaks
        return groups
    speakers = sorted({it.speaker for it in items})
    songs = sorted({it.song for it in items})
    if len(speakers) < 2 or len(songs) < 2:
        what = "speaker" if len(speakers) < 2 else "song"
        raise AlignSTSError(
            f"all items share one {what}, so no test set of unseen speakers and songs can be made; "
            "add a 'split' column to the manifest or more data"
        )
    rng = np.random.default_rng(seed)
    n = len(items)
    target = max(1, int(round(test_fraction * n)))
    by_speaker: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        by_speaker.setdefault(it.speaker, []).append(k)
    best = None
    for _ in range(max(1, trials)):
        test_speakers: set[str] = set()
        test_songs: set[str] = set()
        spk_order = [speakers[i] for i in rng.permutation(len(speakers))]
        for spk in spk_order[:-1]:  # one speaker always stays for training
            test_speakers.add(spk)
            candidates = sorted({items[k].song for k in by_speaker[spk]})
            for i in rng.permutation(len(candidates)):
                test_songs.add(candidates[i])
                if len(test_songs) >= len(songs):
                    test_songs.discard(candidates[i])
                    break
                if sum(1 for k in _leak_free(items, test_speakers, test_songs)["test"]) >= target:
                    break
            parts = _leak_free(items, test_speakers, test_songs)
            if len(parts["test"]) >= target:
                break
        parts = _leak_free(items, test_speakers, test_songs)
        if not parts["test"] or not parts["train"]:
            continue
        score = (len(parts["train"]), -abs(len(parts["test"]) - target))
        if best is None or score > best[0]:
            best = (score, parts)
    if best is None:
        raise AlignSTSError(
            "could not hold out a test set of unseen speakers and songs; add more data or a 'split' column"
        )
    parts = {s: list(v) for s, v in best[1].items()}
    want_valid = int(round(valid_fraction * n))
    if len(parts["valid"]) < want_valid and len(parts["train"]) > 1:
        extra = min(want_valid - len(parts["valid"]), len(parts["train"]) - 1)
        moved = set(rng.choice(parts["train"], size=extra, replace=False).tolist())
        parts["valid"] += sorted(moved)
        parts["train"] = [k for k in parts["train"] if k not in moved]
    return {s: [items[k] for k in sorted(parts[s])] for s in SPLITS}
