"""Pairing speech files with melodies for ``alignsts batch``.

Three ways, tried in this order:
1. a manifest ``pairs.csv`` (``speech,melody[,output]``, paths relative to the manifest);
2. one ``--melody`` for every speech file;
3. matching stems: ``take1.wav`` sings ``take1.mid`` (or ``.midi``, ``.f0.csv``, ``.csv``,
   or a reference recording ``take1.melody.wav``).

:func:`run_jobs` then converts them with the batch's rules (no melody: failed with where it looked;
output already there: skipped unless overwrite; one failure never stops the rest).

Across machines: :func:`take_shard` keeps one stable shard of the jobs (``--shard I/N``, shards.py),
:func:`write_report` records what one run did in ``OUTDIR/batch-reports/I-of-N.json``, and
:func:`merge_reports` reads every shard's report back (``alignsts batch --report``).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignsts_cli.audio import AUDIO_EXTENSIONS
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import OutputClaimed, read_json, read_path_rows, write_json
from alignsts_cli.shards import Shard

MANIFEST = "pairs.csv"
REPORTS = "batch-reports"  # inside the output folder: one <I>-of-<N>.json per shard
REPORT_FORMAT = "alignsts-batch-report"
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
    rows = read_path_rows(manifest, header=("speech", "melody"), what="the manifest", example="speech.wav,melody.mid")
    jobs = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise AlignSTSError(f"{manifest}: row {n} needs at least 'speech,melody'; fix it")
        out = row[2] if len(row) > 2 and row[2] else None
        if out:
            output = Path(out) if Path(out).is_absolute() else outdir / out
        else:
            output = outdir / Path(row[0]).with_suffix(".wav")
        jobs.append(Job(base / row[0], base / row[1], output))
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
    if folder.is_file():
        raise AlignSTSError(f"{folder}: is a file, not a folder; `alignsts convert` sings one file, batch takes "
                            "the folder that holds the speech files")
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


@dataclass
class Outcome:
    """What became of one job: ``ok`` (with the seconds sung, and what ``convert`` would have noted),
    ``skipped`` or ``failed`` (with why)."""

    job: Job
    status: str  # ok | skipped | failed
    seconds: float | None = None
    note: str = ""


def tally(statuses) -> dict[str, int]:
    """How many of each outcome status: {"ok": n, "skipped": n, "failed": n}."""
    statuses = list(statuses)
    return {s: statuses.count(s) for s in ("ok", "skipped", "failed")}


def no_melody_note(job: Job) -> str:
    looked = ", ".join(job.speech.stem + s for s in MELODY_SUFFIXES[:4])
    return f"no melody found (looked for {looked}, ...)"


def run_jobs(converter, jobs: list[Job], *, overwrite: bool = False, progress=None, **convert_options) -> list[Outcome]:
    """Convert every job with ``converter`` (an ``api.Converter``); one outcome per job, in the jobs' order.

    The rules of a batch: a job without a melody fails with a note saying where it looked; an output
    that already exists is skipped unless ``overwrite`` (so running the same batch again finishes what
    an interrupted one left); one failure never stops the rest, and a bug met on one file is reported
    for the files not yet done instead of hiding what was done. ``progress(outcome)`` is called as
    each job finishes; ``convert_options`` go to ``Converter.convert_many``.
    """
    done: dict[int, Outcome] = {}

    def record(outcome: Outcome) -> None:
        done[id(outcome.job)] = outcome
        if progress is not None:
            progress(outcome)

    todo = []
    for job in jobs:
        if job.melody is None:
            record(Outcome(job, "failed", note=no_melody_note(job)))
        elif job.output.exists() and not overwrite:
            record(Outcome(job, "skipped", note="output exists (--overwrite to redo)"))
        else:
            todo.append(job)
    by_key = {(str(j.speech), str(j.melody), str(j.output)): j for j in todo}
    try:
        for (speech, melody, output), res in converter.convert_many(
                [(j.speech, j.melody, j.output) for j in todo], overwrite=overwrite, **convert_options):
            job = by_key[(str(speech), str(melody), str(output))]
            if isinstance(res, OutputClaimed):  # another batch into the same folder took it: its work, not ours
                record(Outcome(job, "skipped", note="made by another run at the same time"))
            elif isinstance(res, AlignSTSError):
                record(Outcome(job, "failed", note=str(res)))
            elif isinstance(res, Exception):
                record(Outcome(job, "failed", note=f"internal error ({type(res).__name__}: {res})"))
            else:
                notices = res.info.get("notices", [])  # the part taken, an octave moved: as convert says them
                record(Outcome(job, "ok", res.seconds, note="; ".join([str(job.output)] + notices) if notices else ""))
    except Exception as exc:  # a bug must not hide what was already done
        if isinstance(exc, AlignSTSError) and not any(id(j) in done for j in todo):
            raise  # a problem with the whole batch (an option out of range, no weights): one line, as convert says it
        why = str(exc) if isinstance(exc, AlignSTSError) else f"internal error ({type(exc).__name__}: {exc})"
        for job in todo:
            if id(job) not in done:
                record(Outcome(job, "failed", note=why))
    return [done[id(j)] for j in jobs]


# ---------------------------------------------------------------------------------------------
# Shards and their reports
# ---------------------------------------------------------------------------------------------

def job_key(job: Job, outdir: Path) -> str:
    """What names a job the same way on every machine: its output's path inside the output folder
    (the output's full path when a manifest sends it elsewhere)."""
    try:
        return job.output.resolve().relative_to(outdir.resolve()).as_posix()
    except ValueError:
        return job.output.resolve().as_posix()


def take_shard(jobs: list[Job], outdir: str | os.PathLike, shard: Shard) -> list[Job]:
    """The jobs of ``shard``: a stable partition, whatever the machine or the order of listing."""
    outdir = Path(outdir).expanduser()
    return [j for j in jobs if shard.holds(job_key(j, outdir))]


def write_report(outdir: str | os.PathLike, shard: Shard, outcomes: list[Outcome], jobs_total: int) -> Path:
    """Record one run's outcomes in ``outdir/batch-reports/<I>-of-<N>.json`` (replacing that shard's
    earlier report: a shard run again reports what it found the second time)."""
    outdir = Path(outdir).expanduser()
    (outdir / REPORTS).mkdir(parents=True, exist_ok=True)
    return write_json(outdir / REPORTS / f"{shard.name}.json", {
        "format": REPORT_FORMAT, "version": 1, "shard": str(shard), "jobs_total": jobs_total,
        "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished_unix": time.time(),
        "outcomes": [{"key": job_key(o.job, outdir), "speech": str(o.job.speech),
                      "melody": str(o.job.melody) if o.job.melody else None, "output": str(o.job.output),
                      "status": o.status, "seconds": o.seconds, "note": o.note} for o in outcomes],
    })


@dataclass
class Merged:
    """Every shard's report of one output folder, merged: one outcome per job (the newest report's)."""

    count: int  # shards the work was split into
    reports: list[dict]  # the reports read, by shard
    outcomes: list[Outcome]
    missing: list[int] = field(default_factory=list)  # shards with no report yet
    jobs_total: int = 0  # jobs the runs listed (all shards)
    stale: list[str] = field(default_factory=list)  # reports of another split, left out


def merge_reports(outdir: str | os.PathLike) -> Merged:
    """Read ``outdir/batch-reports/*.json`` back into one account (``alignsts batch --report``)."""
    outdir = Path(outdir).expanduser()
    folder = outdir / REPORTS
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    reports = []
    for path in files:
        data = read_json(path, missing="vanished while being read", unreadable="not a batch report",
                         fix="delete it and run that shard again")
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise AlignSTSError(f"{path}: not an alignsts batch report; delete it and run that shard again")
        data["shard"] = Shard.parse(str(data.get("shard", "")))
        data["path"] = path
        reports.append(data)
    if not reports:
        raise AlignSTSError(f"{outdir}: no batch reports (looked in {folder}); run `alignsts batch FOLDER -o {outdir}` "
                            "(with --shard I/N on each machine) first")
    newest = max(reports, key=lambda r: r.get("finished_unix", 0))
    count = newest["shard"].count
    stale = [str(r["path"]) for r in reports if r["shard"].count != count]
    reports = sorted((r for r in reports if r["shard"].count == count), key=lambda r: r["shard"].index)
    by_key: dict[str, Outcome] = {}
    for report in sorted(reports, key=lambda r: r.get("finished_unix", 0)):  # newer reports win
        for row in report.get("outcomes", []):
            job = Job(Path(row["speech"]), Path(row["melody"]) if row.get("melody") else None, Path(row["output"]))
            by_key[row["key"]] = Outcome(job, row["status"], row.get("seconds"), row.get("note", ""))
    seen = {r["shard"].index for r in reports}
    return Merged(count, reports, [by_key[k] for k in sorted(by_key)],
                  missing=[i for i in range(1, count + 1) if i not in seen],
                  jobs_total=max(int(r.get("jobs_total", 0)) for r in reports), stale=stale)
