"""Datasets of paired speech and singing, and the prepared cache that training and evaluation read.

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

The prepared cache (:func:`prepare`)
------------------------------------
::

    cache/cache.json          {"format": "alignsts-cache", "version": 1, "profile", "content_kind",
                               "content_dim", "speaker_dim": 256, "source", "items": count, ...}
    cache/items.json          [{"id", "speaker", "song", "text", "split", "frames", "content_frames",
                                "sing_content_frames", "speech", "singing"}, ...]
    cache/items/<id>.npz      float32 arrays:
        content      [T_c, D]   content features of the pitch-flattened speech (features.py)
        sing_content [T_cs, D]  the same of the pitch-flattened singing (zero-shot mode)
        speaker      [256]      Resemblyzer embedding of the speech
        sing_speaker [256]      Resemblyzer embedding of the singing
        mel          [T, 80]    singing mel, profiles.mel_spectrogram at the profile's rate
        f0           [T]        singing F0 in Hz (0 = unvoiced), f0[t] at time t·hop (the grid the
                                engine feeds the model at inference), Praat singing settings
        speech_mel   [T_s, 80]  speech mel (its rhythm curve is the "w/o rhythm adaptor" source)

Each item file is written atomically, so an interrupted ``prepare`` resumes where it stopped.
:class:`CacheDataset` and :func:`collate` turn a split of the cache into padded torch batches.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output, check_output_path

SPLITS = ("train", "valid", "test")
CACHE_FORMAT = "alignsts-cache"
CACHE_VERSION = 1
SPEAKER_DIM = 256
#: Arrays of an item file and their shapes (T: mel frames of the singing, T_s: of the speech).
ITEM_ARRAYS = ("content", "sing_content", "speaker", "sing_speaker", "mel", "f0", "speech_mel")
#: Manifest fields.
REQUIRED_FIELDS = ("id", "speaker", "speech", "singing")
OPTIONAL_FIELDS = ("lyrics", "song", "split", "melody")
#: GTSinger: the group of natural singing paired with the speech, and the words that are not words.
GTSINGER_SPEECH = "Paired_Speech_Group"
GTSINGER_SINGING = "Control_Group"
GTSINGER_SILENCES = {"<SP>", "<AP>", "_NONE", "SP", "AP", ""}
#: Accepted audio of the speech and singing files (the tool's own limits).
MIN_WORK_SR, MAX_WORK_SR = 8000, 48000

ProgressFn = Callable[[int, int, str], None]


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


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    cache: Path
    items: int  # items in the cache
    computed: int  # items whose features were computed by this run
    reused: int  # items found done from an earlier (interrupted) run
    failed: list[tuple[str, str]]  # (id, reason) of items left out
    splits: dict[str, int]
    hours: float  # of singing in the cache


def _load_work_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 at the file's own rate, kept within 8-48 kHz (as the engines take speech)."""
    from alignsts_cli.audio import load_audio, resample

    audio, sr = load_audio(path)
    if sr > MAX_WORK_SR:
        audio, sr = resample(audio, sr, MAX_WORK_SR), MAX_WORK_SR
    elif sr < MIN_WORK_SR:
        audio, sr = resample(audio, sr, MIN_WORK_SR), MIN_WORK_SR
    return audio, sr


def singing_f0(audio: np.ndarray, sr: int, profile) -> np.ndarray:
    """Singing F0 ``[T]`` (Hz, 0 = unvoiced) of ``[n]`` audio at the profile's rate, on its mel grid.

    ``f0[t]`` is Praat's F0 (singing settings) at time ``t·hop``, as the engine samples a melody for
    frame ``t``; ``T = profile.num_frames(n)``.
    """
    from alignsts_cli.melody import extract_f0

    n_frames = profile.num_frames(len(audio))
    f0, _ = extract_f0(audio, sr, hop=profile.hop_length / profile.sample_rate)
    f0 = f0[:n_frames] if len(f0) >= n_frames else np.pad(f0, (0, n_frames - len(f0)))
    return f0.astype(np.float32)


def _singing_range(f0: np.ndarray) -> tuple[float, float, float]:
    """(median, floor, ceiling) of a sung F0 contour, Praat settings that suit it (as for speech)."""
    voiced = f0[f0 > 0]
    median = float(np.median(voiced)) if len(voiced) else 200.0
    return median, float(np.clip(0.5 * median, 50.0, 200.0)), float(np.clip(2.5 * median, 300.0, 900.0))


def compute_item(item: Item, extractor, profile) -> dict[str, np.ndarray]:
    """Every array of one cache item (see the module docstring for names and shapes)."""
    from alignsts_cli.audio import check_speech, resample
    from alignsts_cli.engines.psola import analyse_speech
    from alignsts_cli.features import CONTENT_SR, flatten_pitch
    from alignsts_cli.profiles import mel_spectrogram

    speech, s_sr = _load_work_audio(item.speech)
    check_speech(speech, s_sr, item.speech)
    singing, g_sr = _load_work_audio(item.singing)
    check_speech(singing, g_sr, item.singing)
    sr = profile.sample_rate
    sing_p = resample(singing, g_sr, sr)
    speech_p = resample(speech, s_sr, sr)

    # Speech: flattened to its median F0 with the voice's own Praat range, as the engine does at inference.
    analysis = analyse_speech(speech, s_sr)
    flat = flatten_pitch(speech, s_sr, analysis.median_f0, analysis.f0_floor, analysis.f0_ceiling)
    content = extractor.content(resample(flat, s_sr, CONTENT_SR))  # [T_c, D]
    speaker = extractor.speaker(speech, s_sr)  # [256]

    f0 = singing_f0(sing_p, sr, profile)  # [T]
    median, floor, ceiling = _singing_range(f0)
    sing_flat = flatten_pitch(singing, g_sr, median, floor, ceiling)
    sing_content = extractor.content(resample(sing_flat, g_sr, CONTENT_SR))  # [T_cs, D]
    sing_speaker = extractor.speaker(singing, g_sr)  # [256]

    arrays = {
        "content": content,
        "sing_content": sing_content,
        "speaker": speaker,
        "sing_speaker": sing_speaker,
        "mel": mel_spectrogram(sing_p, profile),  # [T, 80]
        "f0": f0,
        "speech_mel": mel_spectrogram(speech_p, profile),  # [T_s, 80]
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a name
            np.savez(fh, **arrays)


def _record(item: Item, split: str, shapes: dict[str, tuple]) -> dict:
    return {
        "id": item.id, "speaker": item.speaker, "song": item.song, "text": item.text, "split": split,
        "frames": int(shapes["mel"][0]), "content_frames": int(shapes["content"][0]),
        "sing_content_frames": int(shapes["sing_content"][0]), "speech_frames": int(shapes["speech_mel"][0]),
        "speech": str(item.speech), "singing": str(item.singing),
        **({"melody": str(item.melody)} if item.melody else {}),
    }


def _write_json(path: Path, data) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def prepare(
    dataset: str | os.PathLike | Sequence[Item],
    out: str | os.PathLike,
    *,
    profile: str = "compact-16k",
    content_kind: str = "mfcc",
    content_dim: int = 20,
    content_model: str | os.PathLike | None = None,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    progress: ProgressFn | None = None,
    device: str = "cpu",
) -> PrepareResult:
    """Extract everything training needs from ``dataset`` into the cache folder ``out``, once.

    ``dataset``: a folder with a manifest, a GTSinger tree, or a list of ``Item``. Items are split by
    :func:`split_items` (``seed``, fractions). Item files already in ``out`` are kept (an interrupted
    run resumes); a cache made with other settings is refused. ``content_model``: the wav2vec2
    folder for ``content_kind="wav2vec2-ctc"``. ``progress(done, total, item_id)`` is called after
    each item. An item whose audio is unusable (silent, too short, unreadable) is left out and
    listed in ``cache.json`` under ``failed``; the library never prints.
    """
    from alignsts_cli.features import FeatureExtractor
    from alignsts_cli.profiles import get_profile

    p = get_profile(profile)
    out = Path(out).expanduser()
    if isinstance(dataset, (str, os.PathLike)):
        items = read_any(dataset)
        source = str(Path(dataset).expanduser().resolve())
    else:
        items = list(dataset)
        source = "(items)"
    if not items:
        raise AlignSTSError("the dataset has no items")
    info = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "profile": p.name, "content_kind": content_kind,
        "content_dim": int(content_dim), "speaker_dim": SPEAKER_DIM, "source": source, "items": 0,
    }
    info_path = out / "cache.json"
    if info_path.exists():
        old = _read_json(info_path)
        if not isinstance(old, dict) or old.get("format") != CACHE_FORMAT:
            raise AlignSTSError(f"{out}: holds a cache.json that is not an alignsts cache; choose an empty folder")
        for key in ("profile", "content_kind", "content_dim", "source"):
            if old.get(key) != info[key]:
                raise AlignSTSError(
                    f"{out}: was prepared with {key} {old.get(key)!r}, not {info[key]!r}; use another output folder "
                    "or delete this one"
                )
    check_output_path(info_path, overwrite=True, suffixes=(".json",))
    (out / "items").mkdir(parents=True, exist_ok=True)
    splits = split_items(items, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction)
    split_of = {it.id: s for s, group in splits.items() for it in group}
    order = [it for it in items if it.id in split_of]
    _write_json(info_path, {**info, "complete": False})

    extractor = None
    records, failed = [], []
    computed = reused = 0
    with _one_torch_thread(device):
        for k, item in enumerate(order):
            path = out / "items" / f"{item.id}.npz"
            shapes = _npz_shapes(path) if path.exists() else None
            if shapes is not None:
                reused += 1
            else:
                if extractor is None:
                    extractor = FeatureExtractor(content_kind, content_dim, content_model=content_model, device=device)
                try:
                    arrays = compute_item(item, extractor, p)
                except AlignSTSError as exc:
                    failed.append((item.id, str(exc)))
                    arrays = None
                if arrays is not None:
                    _save_npz(path, arrays)
                    shapes = {name: a.shape for name, a in arrays.items()}
                    computed += 1
            if shapes is not None:
                records.append(_record(item, split_of[item.id], shapes))
            if progress is not None:
                progress(k + 1, len(order), item.id)
    if not records:
        reason = failed[0][1] if failed else "no items"
        raise AlignSTSError(f"no item of the dataset could be prepared (first problem: {reason})")
    counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    hours = sum(r["frames"] for r in records) / p.frames_per_second / 3600
    _write_json(out / "items.json", records)
    _write_json(info_path, {
        **info, "items": len(records), "complete": True, "splits": counts, "seed": seed,
        "hours": round(hours, 4), "failed": [{"id": i, "reason": r} for i, r in failed],
    })
    return PrepareResult(out, len(records), computed, reused, failed, counts, hours)


class _one_torch_thread:
    """Run torch on one CPU thread: the per-utterance models here are small, and with several
    threads on a busy machine Resemblyzer's LSTM was measured 10-100x slower (threads wait on each other)."""

    def __init__(self, device: str):
        self.active = device == "cpu"

    def __enter__(self):
        if self.active:
            import torch

            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            import torch

            torch.set_num_threads(self.saved)


def _npz_shapes(path: Path) -> dict[str, tuple] | None:
    """Shapes of a finished item file, or None when it is unreadable (it is then computed again)."""
    try:
        with np.load(path) as z:
            if not all(name in z.files for name in ITEM_ARRAYS):
                return None
            return {name: z[name].shape for name in ITEM_ARRAYS}
    except Exception:  # a damaged file from outside the tool: compute it again
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise AlignSTSError(f"{path}: cannot be read as JSON; prepare the cache again") from None


# --------------------------------------------------------------------------- reading the cache


def load_cache(folder: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(cache.json, items.json)`` of a finished cache; ``AlignSTSError`` when it is not one."""
    folder = Path(folder).expanduser()
    info_path = folder / "cache.json"
    if not info_path.exists():
        raise AlignSTSError(
            f"{folder}: not a prepared cache (no cache.json); run `alignsts prepare DATASET -o {folder}`"
        )
    info = _read_json(info_path)
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        raise AlignSTSError(f"{info_path}: not an alignsts cache; run `alignsts prepare` again")
    if info.get("version") != CACHE_VERSION:
        raise AlignSTSError(
            f"{info_path}: cache version {info.get('version')} is not {CACHE_VERSION}; prepare it again"
        )
    if not info.get("complete", True) or not (folder / "items.json").exists():
        raise AlignSTSError(f"{folder}: the cache is unfinished; run `alignsts prepare` again to complete it")
    items = _read_json(folder / "items.json")
    return info, items


class CacheDataset:
    """One split of a prepared cache as a torch ``Dataset`` of dicts of tensors.

    ``dataset[i]`` = {"id": str, "content": [T_c, D], "sing_content": [T_cs, D], "speaker": [256],
    "sing_speaker": [256], "mel": [T, 80], "f0": [T], "speech_mel": [T_s, 80]} (float32).
    ``max_frames`` leaves out items longer than that many mel frames. Batch with
    ``DataLoader(ds, collate_fn=ds.collate)``, which pads with the profile's silent mel value.
    """

    def __init__(self, folder: str | os.PathLike, split: str | Iterable[str] = "train", *,
                 max_frames: int | None = None):
        from alignsts_cli.profiles import get_profile

        self.folder = Path(folder).expanduser()
        self.info, all_items = load_cache(self.folder)
        wanted = {split} if isinstance(split, str) else set(split)
        unknown = wanted - set(SPLITS)
        if unknown:
            raise AlignSTSError(f"unknown split {', '.join(sorted(unknown))}; use {', '.join(SPLITS)}")
        self.items = [r for r in all_items if r["split"] in wanted
                      and (max_frames is None or r["frames"] <= max_frames)]
        self.profile = get_profile(self.info["profile"])
        self.collate = functools.partial(collate, mel_pad=self.profile.log_floor)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import torch

        rec = self.items[index]
        path = self.folder / "items" / f"{rec['id']}.npz"
        try:
            with np.load(path) as z:
                sample = {name: torch.from_numpy(np.array(z[name], dtype=np.float32)) for name in ITEM_ARRAYS}
        except (OSError, KeyError, ValueError):
            raise AlignSTSError(f"{path}: missing or damaged; run `alignsts prepare` again to redo it") from None
        sample["id"] = rec["id"]
        return sample


def _pad(tensors: list, value: float = 0.0):
    """Stack ``[T_i, ...]`` tensors into ``[B, max T_i, ...]`` filled with ``value``; also ``[B]`` lengths."""
    import torch

    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    out = torch.full((len(tensors), int(lengths.max()), *tensors[0].shape[1:]), float(value), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, lengths


def collate(batch: list[dict], *, mel_pad: float = 0.0) -> dict:
    """Pad a list of ``CacheDataset`` samples to the longest of each kind.

    Returns content [B, T_c, D] + content_lengths [B], sing_content [B, T_cs, D] +
    sing_content_lengths [B], mel [B, T, 80] (padded with ``mel_pad``) + lengths [B], f0 [B, T]
    (0 padded), speaker / sing_speaker [B, 256], speech_mel [B, T_s, 80] + speech_lengths [B], ids.
    """
    import torch

    content, content_lengths = _pad([b["content"] for b in batch])
    sing_content, sing_content_lengths = _pad([b["sing_content"] for b in batch])
    mel, lengths = _pad([b["mel"] for b in batch], mel_pad)
    f0, _ = _pad([b["f0"] for b in batch])
    speech_mel, speech_lengths = _pad([b["speech_mel"] for b in batch], mel_pad)
    return {
        "content": content, "content_lengths": content_lengths,
        "sing_content": sing_content, "sing_content_lengths": sing_content_lengths,
        "mel": mel, "lengths": lengths, "f0": f0,
        "speaker": torch.stack([b["speaker"] for b in batch]),
        "sing_speaker": torch.stack([b["sing_speaker"] for b in batch]),
        "speech_mel": speech_mel, "speech_lengths": speech_lengths,
        "ids": [b["id"] for b in batch],
    }
