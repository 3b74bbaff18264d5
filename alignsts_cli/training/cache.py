"""The prepared cache: what training and evaluation read, computed once from a dataset by :func:`prepare`.

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

Each item file is written atomically, so an interrupted ``prepare`` resumes where it stopped, and
several runs can fill one cache at once: ``workers`` processes on one machine, and ``shard`` (I of N,
shards.py) for one machine of many. A sharded run writes only its items' files; one run without a
shard then finishes the cache (``items.json``), reusing every file the shards wrote.
The one reader is :func:`read_cache` (a :class:`Cache`); :class:`CacheDataset` and :func:`collate` turn a
split of it into padded torch batches.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output, check_output_path, write_json
from alignsts_cli.runtime import one_thread
from alignsts_cli.shards import Shard
from alignsts_cli.training.data import SPLITS, Item, read_any, split_items

CACHE_FORMAT = "alignsts-cache"
CACHE_VERSION = 1
SPEAKER_DIM = 256
#: Arrays of an item file and their shapes (T: mel frames of the singing, T_s: of the speech).
ITEM_ARRAYS = ("content", "sing_content", "speaker", "sing_speaker", "mel", "f0", "speech_mel")
PREPARE_HINT = "prepare one with `alignsts prepare DATASET -o CACHE`"

ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    cache: Path
    items: int  # items in the cache (in this shard, for a sharded run)
    computed: int  # items whose features were computed by this run
    reused: int  # items found done from an earlier (interrupted) run
    failed: list[tuple[str, str]]  # (id, reason) of items left out
    splits: dict[str, int]
    hours: float  # of singing in the cache
    shard: "Shard | None" = None  # a sharded run: the cache is left for a run without a shard to finish


def _load_work_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 at the file's own rate, kept within 8-48 kHz (as the engines take speech), checked."""
    from alignsts_cli.audio import check_speech, load_audio, to_work_rate

    audio, sr = to_work_rate(*load_audio(path))
    check_speech(audio, sr, path)
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
    from alignsts_cli.analysis import voice_range

    voiced = f0[f0 > 0]
    median = float(np.median(voiced)) if len(voiced) else 200.0
    return (median, *voice_range(median))


def compute_item(item: Item, extractor, profile) -> dict[str, np.ndarray]:
    """Every array of one cache item (see the module docstring for names and shapes)."""
    from alignsts_cli.analysis import analyse_speech
    from alignsts_cli.audio import resample
    from alignsts_cli.profiles import mel_spectrogram

    speech, s_sr = _load_work_audio(item.speech)
    singing, g_sr = _load_work_audio(item.singing)
    sr = profile.sample_rate
    sing_p = resample(singing, g_sr, sr)
    speech_p = resample(speech, s_sr, sr)

    # Speech: flattened to its median F0 with the voice's own Praat range, as the engine does at inference.
    analysis = analyse_speech(speech, s_sr)
    content = extractor.content_of(speech, s_sr, analysis.median_f0, analysis.f0_floor, analysis.f0_ceiling)  # [T_c, D]
    speaker = extractor.speaker(speech, s_sr)  # [256]

    f0 = singing_f0(sing_p, sr, profile)  # [T]
    sing_content = extractor.content_of(singing, g_sr, *_singing_range(f0))  # [T_cs, D]
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
    workers: int = 1,
    shard: Shard | None = None,
) -> PrepareResult:
    """Extract everything training needs from ``dataset`` into the cache folder ``out``, once.

    ``dataset``: a folder with a manifest, a GTSinger tree, or a list of ``Item``. Items are split by
    :func:`split_items` (``seed``, fractions). Item files already in ``out`` are kept (an interrupted
    run resumes); a cache made with other settings is refused. ``content_model``: the wav2vec2
    folder for ``content_kind="wav2vec2-ctc"``. ``progress(done, total, item_id)`` is called after
    each item. An item whose audio is unusable (silent, too short, unreadable) is left out and
    listed in ``cache.json`` under ``failed``; the library never prints.

    ``workers``: item features computed in that many processes at once (each loads the feature models
    once, and runs torch on one thread). ``shard``: compute only that shard's items and leave the cache
    unfinished; a later run without a shard finishes it. Either way the files are the same as one
    process would write.
    """
    from alignsts_cli.profiles import get_profile

    if workers < 1:
        raise AlignSTSError(f"--workers {workers}: give 1 or more processes")
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
    _check_resumable(out, info)
    check_output_path(info_path, overwrite=True, suffixes=(".json",))
    (out / "items").mkdir(parents=True, exist_ok=True)
    splits = split_items(items, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction)
    split_of = {it.id: s for s, group in splits.items() for it in group}
    order = [it for it in items if it.id in split_of and (shard is None or shard.holds(it.id))]
    if shard is None or not info_path.exists():  # shards running at once write the same unfinished info
        write_json(info_path, {**info, "complete": False})
    features = (content_kind, content_dim, content_model, device)
    records, failed = [], []
    computed = reused = 0
    for k, (item, (shapes, done_before, reason)) in enumerate(_item_files(out, order, features, p, workers)):
        if shapes is not None:
            reused, computed = (reused + 1, computed) if done_before else (reused, computed + 1)
            records.append(_record(item, split_of[item.id], shapes))
        else:
            failed.append((item.id, reason))
        if progress is not None:
            progress(k + 1, len(order), item.id)
    counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    hours = sum(r["frames"] for r in records) / p.frames_per_second / 3600
    if shard is not None:
        return PrepareResult(out, len(records), computed, reused, failed, counts, hours, shard)
    if not records:
        reason = failed[0][1] if failed else "no items"
        raise AlignSTSError(f"no item of the dataset could be prepared (first problem: {reason})")
    write_json(out / "items.json", records)
    write_json(info_path, {
        **info, "items": len(records), "complete": True, "splits": counts, "seed": seed,
        "hours": round(hours, 4), "failed": [{"id": i, "reason": r} for i, r in failed],
    })
    return PrepareResult(out, len(records), computed, reused, failed, counts, hours)


def _check_resumable(out: Path, info: dict) -> None:
    """Refuse a folder whose cache.json is not ours, or was made from other data or settings."""
    info_path = out / "cache.json"
    if not info_path.exists():
        return
    old = _read_json(info_path)
    if not isinstance(old, dict) or old.get("format") != CACHE_FORMAT:
        raise AlignSTSError(f"{out}: holds a cache.json that is not an alignsts cache; choose an empty folder")
    for key in ("profile", "content_kind", "content_dim", "source"):
        if old.get(key) != info[key]:
            raise AlignSTSError(
                f"{out}: was prepared with {key} {old.get(key)!r}, not {info[key]!r}; use another output folder "
                "or delete this one"
            )


def _item_files(out: Path, order: list[Item], features: tuple, profile, workers: int):
    """(item, (shapes, found done before?, why not)) for each item of ``order``, in order: files already
    done are read, the rest computed here or by ``workers`` processes (as they finish, kept in order)."""
    todo = []
    found = {}
    for item in order:
        path = out / "items" / f"{item.id}.npz"
        shapes = _npz_shapes(path) if path.exists() else None
        if shapes is not None:
            found[item.id] = (shapes, True, "")
        else:
            todo.append(item)
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: torch's threads do not fork
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_start_worker,
                                 initargs=features) as pool:
            pending = {item.id: pool.submit(_worker_item, out, item, profile.name) for item in todo}
            try:
                for item in order:
                    yield item, found[item.id] if item.id in found else pending[item.id].result()
            except BaseException:  # stopped (Ctrl-C, a bug): finish only the items already being computed
                for future in pending.values():
                    future.cancel()
                raise
        return
    extractor = None
    with one_thread(features[3]):
        for item in order:
            if item.id in found:
                yield item, found[item.id]
                continue
            if extractor is None:  # loaded once, and only when an item needs computing
                from alignsts_cli.features import FeatureExtractor

                extractor = FeatureExtractor(features[0], features[1], content_model=features[2], device=features[3])
            yield item, _compute_file(out, item, extractor, profile)


def _compute_file(out: Path, item: Item, extractor, profile) -> tuple[dict | None, bool, str]:
    """Compute one item's arrays and write its file: (shapes, False, ""), or (None, False, why) when the
    item's audio is unusable."""
    try:
        arrays = compute_item(item, extractor, profile)
    except AlignSTSError as exc:
        return None, False, str(exc)
    _save_npz(out / "items" / f"{item.id}.npz", arrays)
    return {name: a.shape for name, a in arrays.items()}, False, ""


_WORKER: dict = {}  # in a worker process of prepare(workers=N): its feature extractor


def _start_worker(content_kind, content_dim, content_model, device) -> None:
    from alignsts_cli.features import FeatureExtractor

    one_thread(device).__enter__()  # for the worker's life: the workers share the cores
    _WORKER["extractor"] = FeatureExtractor(content_kind, content_dim, content_model=content_model, device=device)


def _worker_item(out: Path, item: Item, profile_name: str):
    from alignsts_cli.profiles import get_profile

    return _compute_file(out, item, _WORKER["extractor"], get_profile(profile_name))


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
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise AlignSTSError(f"{path}: cannot be read as JSON; prepare the cache again") from None


# --------------------------------------------------------------------------- reading the cache


@dataclass
class Cache:
    """A finished prepared cache, read-only: ``info`` is cache.json, ``items`` the records of items.json."""

    folder: Path
    info: dict
    items: list[dict]

    def split(self, names: str | Iterable[str], *, min_frames: int = 0, max_frames: int | None = None) -> list[dict]:
        """The records of one split (or several), optionally only those of ``min_frames``-``max_frames`` mel frames."""
        wanted = {names} if isinstance(names, str) else set(names)
        unknown = wanted - set(SPLITS)
        if unknown:
            raise AlignSTSError(f"unknown split {', '.join(sorted(unknown))}; use {', '.join(SPLITS)}")
        return [r for r in self.items if r.get("split") in wanted and int(r.get("frames", 0)) >= min_frames
                and (max_frames is None or int(r.get("frames", 0)) <= max_frames)]

    def arrays(self, item_id: str, names: Sequence[str] = ITEM_ARRAYS) -> dict[str, np.ndarray]:
        """The float32 arrays ``names`` of one item (see the module docstring for shapes)."""
        path = self.folder / "items" / f"{item_id}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k], dtype=np.float32) for k in names}
        except (OSError, KeyError, ValueError) as exc:
            raise AlignSTSError(f"{path}: unreadable cache item ({exc}); run `alignsts prepare` again to redo it") from None

    def resolve(self, p: str) -> Path:
        """An item's audio path: as written, else relative to the dataset (``source``), else to the cache."""
        path = Path(p).expanduser()
        if path.is_absolute() or path.exists():
            return path
        for base in (self.info.get("source"), self.folder):
            if base and (Path(base) / path).exists():
                return Path(base) / path
        return path


def read_cache(folder: str | os.PathLike) -> Cache:
    """Open a finished cache: the folder with ``cache.json`` (or its parent, holding ``cache/``).

    ``AlignSTSError`` when it is not one, is of another version, or is unfinished.
    """
    root = Path(folder).expanduser()
    if not (root / "cache.json").exists() and (root / "cache" / "cache.json").exists():
        root = root / "cache"
    if not root.is_dir():
        raise AlignSTSError(f"{root}: no such cache folder; {PREPARE_HINT}")
    info_path = root / "cache.json"
    if not info_path.exists():
        raise AlignSTSError(f"{root}: not a prepared cache (no cache.json); run `alignsts prepare DATASET -o {root}`")
    info = _read_json(info_path)
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        raise AlignSTSError(f"{info_path}: not an alignsts cache; run `alignsts prepare` again")
    if info.get("version") != CACHE_VERSION:
        raise AlignSTSError(f"{info_path}: cache version {info.get('version')} is not {CACHE_VERSION}; prepare it again")
    if not info.get("complete", True) or not (root / "items.json").exists():
        raise AlignSTSError(f"{root}: the cache is unfinished; run `alignsts prepare` again to complete it")
    items = _read_json(root / "items.json")
    missing = [k for k in ("profile", "content_kind", "content_dim", "speaker_dim") if k not in info]
    if missing or not isinstance(items, list):
        raise AlignSTSError(f"{root}: cache.json lacks {missing or 'an item list'}; {PREPARE_HINT} again")
    return Cache(root, info, items)


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

        self.cache = read_cache(folder)
        self.items = self.cache.split(split, max_frames=max_frames)
        self.profile = get_profile(self.cache.info["profile"])
        self.collate = functools.partial(collate, mel_pad=self.profile.log_floor)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import torch

        rec = self.items[index]
        sample = {name: torch.from_numpy(a) for name, a in self.cache.arrays(rec["id"]).items()}
        sample["id"] = rec["id"]
        return sample


def pad(tensors: list, value: float = 0.0):
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

    content, content_lengths = pad([b["content"] for b in batch])
    sing_content, sing_content_lengths = pad([b["sing_content"] for b in batch])
    mel, lengths = pad([b["mel"] for b in batch], mel_pad)
    f0, _ = pad([b["f0"] for b in batch])
    speech_mel, speech_lengths = pad([b["speech_mel"] for b in batch], mel_pad)
    return {
        "content": content, "content_lengths": content_lengths,
        "sing_content": sing_content, "sing_content_lengths": sing_content_lengths,
        "mel": mel, "lengths": lengths, "f0": f0,
        "speaker": torch.stack([b["speaker"] for b in batch]),
        "sing_speaker": torch.stack([b["sing_speaker"] for b in batch]),
        "speech_mel": speech_mel, "speech_lengths": speech_lengths,
        "ids": [b["id"] for b in batch],
    }
