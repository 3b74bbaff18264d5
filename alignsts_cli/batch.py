"""Pairing speech files with melodies for ``alignsts batch``.

Three ways, tried in this order:
1. a manifest ``pairs.csv`` (``speech,melody[,output]``, paths relative to the manifest);
2. one ``--melody`` for every speech file;
3. matching stems: ``take1.wav`` sings ``take1.mid`` (or ``.midi``, ``.f0.csv``, ``.csv``,
   or a reference recording ``take1.melody.wav``).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from alignsts_cli.audio import AUDIO_EXTENSIONS
from alignsts_cli.errors import AlignSTSError

MANIFEST = "pairs.csv"
#: Suffixes searched, in order, for a speech file's melody when pairing by stem.
MELODY_SUFFIXES = (".mid", ".midi", ".f0.csv", ".csv") + tuple(".melody" + e for e in AUDIO_EXTENSIONS)


@dataclass
class Job:
    speech: Path
    melody: Path | None  # None: no melody was found (reported as a failure)
    output: Path


def _audio_files(folder: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    files = []
    for p in sorted(folder.glob(pattern)):
        if not p.is_file() or p.suffix.lower() not in AUDIO_EXTENSIONS or p.name.startswith("."):
            continue
        if p.stem.lower().endswith(".melody"):
            continue  # a reference recording, not speech
        if exclude is not None and exclude in p.resolve().parents:
            continue  # earlier outputs inside the input folder
        files.append(p)
    return files


def _output_for(speech: Path, folder: Path, outdir: Path) -> Path:
    rel = speech.relative_to(folder)
    return outdir / rel.with_suffix(".wav")


def read_manifest(manifest: Path, outdir: Path) -> list[Job]:
    """Jobs from a ``speech,melody[,output]`` CSV (a header row is optional)."""
    base = manifest.parent
    try:
        rows = list(csv.reader(manifest.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignSTSError(f"{manifest}: cannot read the manifest ({exc}); it must be a text CSV") from None
    rows = [r for r in rows if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["speech", "melody"]:
        rows = rows[1:]
    if not rows:
        raise AlignSTSError(f"{manifest}: the manifest lists no pairs; add lines 'speech.wav,melody.mid'")
    jobs = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise AlignSTSError(f"{manifest}: row {n} needs at least 'speech,melody'; fix it")
        speech = base / row[0].strip()
        melody = base / row[1].strip()
        out = row[2].strip() if len(row) > 2 and row[2].strip() else None
        if out:
            output = Path(out) if Path(out).is_absolute() else outdir / out
        else:
            output = outdir / Path(row[0].strip()).with_suffix(".wav")
        jobs.append(Job(speech, melody, output))
    return jobs


def find_jobs(
    folder: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    melody: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    recursive: bool = True,
) -> list[Job]:
    """Every (speech, melody, output) to convert in ``folder``."""
    folder = Path(folder).expanduser()
    outdir = Path(outdir).expanduser()
    if not folder.is_dir():
        raise AlignSTSError(f"{folder}: no such folder; give the folder that holds the speech files")
    if manifest is None and (folder / MANIFEST).is_file() and melody is None:
        manifest = folder / MANIFEST
    if manifest is not None:
        mpath = Path(manifest).expanduser()
        if not mpath.is_file():
            raise AlignSTSError(f"{mpath}: no such manifest file; check the path")
        return read_manifest(mpath, outdir)
    exclude = outdir.resolve()
    speech_files = _audio_files(folder, recursive, exclude)
    if melody is not None:
        mel = Path(melody).expanduser()
        speech_files = [s for s in speech_files if s.resolve() != mel.resolve()]
    if not speech_files:
        raise AlignSTSError(f"{folder}: no audio files found; put WAV, FLAC or OGG speech files in it")
    jobs = []
    for s in speech_files:
        if melody is not None:
            jobs.append(Job(s, Path(melody).expanduser(), _output_for(s, folder, outdir)))
            continue
        match = next((s.with_name(s.stem + suf) for suf in MELODY_SUFFIXES if s.with_name(s.stem + suf).is_file()), None)
        jobs.append(Job(s, match, _output_for(s, folder, outdir)))
    return jobs
