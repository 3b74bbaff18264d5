"""The ``alignsts`` command line: parse, call the API, show progress, map errors to exit codes.

Heavy modules (numpy, Praat, torch) are imported inside the commands so that
``alignsts --help`` starts at once.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsts_cli import __version__
from alignsts_cli.errors import AlignSTSError

app = typer.Typer(
    name="alignsts",
    help="Turn a speech recording into singing: the same voice and words, sung to your melody "
    "(MIDI, F0 CSV or a reference singing recording).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_USER_ERROR = 1
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _progress(kind: str, description: str | None = None, total=None, width: int = 0):
    """One transient rich progress bar on stderr, hidden when stderr is not a terminal; yields (bar, task).

    ``kind``: "stages" (a fraction 0..1 with the stage as description, and the time elapsed), "items"
    (done of total, time remaining) or "bytes" (downloads; tasks are added by the caller: task is None).
    """
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

    columns = {
        "stages": (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), TimeElapsedColumn()),
        "items": (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()),
        "bytes": (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()),
    }[kind]
    err = _console(stderr=True)
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        yield bar, (bar.add_task(description, total=total) if description is not None else None)


@contextlib.contextmanager
def _stages(description: str, width: int):
    """A "stages" bar; yields the API's ``progress(stage, fraction)`` callback that drives it."""
    with _progress("stages", description, total=1.0, width=width) as (bar, task):
        yield lambda stage, frac: bar.update(task, description=stage, completed=frac)


def _error(message: str) -> None:
    # One plain line on stderr: scripts can read it and people can act on it.
    print(f"alignsts: error: {message}", file=sys.stderr)


def friendly(fn):
    """Turn user errors into one line and an exit code; keep tracebacks for ALIGNSTS_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except AlignSTSError as exc:
            if os.environ.get("ALIGNSTS_DEBUG"):
                raise
            _error(str(exc))
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _error("interrupted; no output was written for the unfinished file")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            _error("out of memory; convert a shorter piece or close other programs")
            raise typer.Exit(EXIT_USER_ERROR) from None
        except Exception as exc:  # a bug: say so plainly
            if os.environ.get("ALIGNSTS_DEBUG"):
                raise
            _error(
                f"internal error ({type(exc).__name__}: {exc}); please report it, "
                "and run with ALIGNSTS_DEBUG=1 for the full traceback"
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _version(value: bool):
    if value:
        print(f"alignsts {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Turn a speech recording into singing."""


# Options shared by convert and batch ---------------------------------------------------------
MelodyType = Annotated[str, typer.Option("--melody-type", help="auto (by extension), midi, musicxml, csv or audio.")]
Track = Annotated[Optional[str], typer.Option(help="MIDI track or MusicXML part: index (0 = first in the file) or "
                                              "part of its name \\[default: the tune, see alignsts inspect].")]
Channel = Annotated[Optional[int], typer.Option(help="MIDI channel 1-16 (10 is drums and is ignored).")]
PitchBend = Annotated[bool, typer.Option("--pitch-bend/--no-pitch-bend", help="Apply MIDI pitch bends.")]
F0Units = Annotated[str, typer.Option("--f0-units", help="CSV F0 values: auto, hz or midi (note numbers).")]
Confidence = Annotated[float, typer.Option(help="CSV frames below this confidence are unvoiced.")]
F0Method = Annotated[str, typer.Option("--f0-method", help="Pitch tracker for reference singing: swift (SwiftF0, "
                                       "the most accurate on singing as measured, see the README) or praat.")]
Transpose = Annotated[float, typer.Option(help="Shift the melody by N semitones.")]
AutoKey = Annotated[bool, typer.Option("--auto-key", help="Always move the melody by octaves to sit 5 semitones above "
                                       "the speaking voice (by default only a melody far from it is moved).")]
ExactOctave = Annotated[bool, typer.Option("--exact-octave", help="Sing the melody in the octave it is written in "
                                           "(by default a melody far from the voice is moved by octaves).")]
Tempo = Annotated[float, typer.Option(help="Tempo factor: 2 = twice as fast, 0.5 = half speed.")]
Vibrato = Annotated[Optional[float], typer.Option(
    help="Vibrato depth in cents (0 = none; 20-50 sounds natural) \\[default: none for psola; for world 30 on "
    "notes, none on a sung or drawn contour].")]
Portamento = Annotated[float, typer.Option(
    help="world engine: seconds of pitch glide into each note that follows another (0 = none, up to 0.5).")]
VibratoRate = Annotated[Optional[float], typer.Option(
    help="world engine: vibrato rate in Hz, 0.5-12 \\[default: 5.5, Saitou et al.'s].")]
FormantShift = Annotated[float, typer.Option(
    help="world engine: move the formants by this many semitones (+ smaller and brighter, - larger and darker).")]
Engine = Annotated[str, typer.Option(
    help="auto (psola: the best on real speech, see the README's scorecard), psola, world (WORLD vocoder with "
    "sung pitch, timing and spectrum, after Saitou et al.) or alignsts (the neural engine: an imported model, "
    "else the bundled voice)."
)]
Model = Annotated[
    Optional[str], typer.Option(help="AlignSTS voice model: a folder with acoustic/ and vocoder/, or an imported name.")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda; for the AlignSTS engine.")]
Precision = Annotated[str, typer.Option(
    help="auto (bfloat16 vocoder on CPUs that compute it natively: about twice as fast, same quality as "
    "measured) or float32 (every stage in float32)."
)]
Timbre = Annotated[str, typer.Option(
    help="model (the voice model's timbre) or restore (move the song's average spectral envelope onto the "
    "speech's own); for the AlignSTS engine."
)]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for the AlignSTS engine \\[default: one per core].")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed of the AlignSTS engine's sampling \\[default: 0].")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]


def _melody_options(**kw):
    from alignsts_cli.api import MelodyOptions

    return MelodyOptions(**kw)


@app.command()
@friendly
def convert(
    speech: Annotated[Path, typer.Argument(help="Speech recording (WAV, FLAC, OGG, ...).")],
    melody: Annotated[Path, typer.Option("--melody", "-m", help="MIDI or MusicXML file, F0 CSV or reference singing.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Output .wav or .flac \\[default: SPEECH-sung.wav].")
    ] = None,
    melody_type: MelodyType = "auto",
    engine: Engine = "auto",
    model: Model = None,
    device: Device = "auto",
    precision: Precision = "auto",
    timbre: Timbre = "model",
    threads: Threads = None,
    seed: Seed = None,
    track: Track = None,
    channel: Channel = None,
    pitch_bend: PitchBend = False,
    f0_units: F0Units = "auto",
    confidence: Confidence = 0.5,
    f0_method: F0Method = "swift",
    transpose: Transpose = 0.0,
    auto_key: AutoKey = False,
    exact_octave: ExactOctave = False,
    tempo: Tempo = 1.0,
    vibrato: Vibrato = None,
    portamento: Portamento = 0.0,
    formant_shift: FormantShift = 0.0,
    vibrato_rate: VibratoRate = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the melody against the sung F0 as a PNG.")] = None,
    save_plan: Annotated[Optional[Path], typer.Option(
        help="Also write the syllable-to-note plan (which syllables go on which notes) as JSON, to edit.")] = None,
    plan: Annotated[Optional[Path], typer.Option(help="Sing this (edited) syllable-to-note plan.")] = None,
    overwrite: Overwrite = False,
):
    """Sing SPEECH to a melody: alignsts convert speech.wav --melody song.mid -o out.wav"""
    from alignsts_cli import api

    out = output if output is not None else speech.with_name(speech.stem + "-sung.wav")
    options = _melody_options(
        kind=melody_type, track=track, channel=channel, pitch_bend=pitch_bend, f0_units=f0_units,
        confidence=confidence, transpose=transpose, tempo=tempo, auto_key=auto_key,
        exact_octave=exact_octave, f0_method=f0_method,
    )
    converter = api.Converter(engine, model=model, device=device, precision=precision, threads=threads,
                              timbre=timbre, portamento=portamento, formant_shift=formant_shift,
                              vibrato_rate=vibrato_rate)
    with _stages("loading", 22) as show:
        result = converter.convert(
            speech, melody, out, melody_options=options, vibrato=vibrato, seed=seed, plot=plot, overwrite=overwrite,
            progress=show, plan=plan, save_plan=save_plan,
        )
    info = result.info
    for notice in info.get("notices", []):
        print(notice, file=sys.stderr)
    extra = ""
    if info.get("auto_key_octaves"):
        extra = f"; melody moved {info['auto_key_octaves']:+d} octave(s) by --auto-key"
    print(
        f"wrote {result.output} ({result.seconds:.1f} s, {result.sample_rate} Hz, {converter.describe()}: "
        f"{info.get('syllables', '?')} syllables on {info.get('notes', '?')} notes{extra})"
    )
    if plot is not None:
        print(f"wrote {plot}")
    if save_plan is not None:
        print(f"wrote {save_plan} (edit it, then sing it with --plan {save_plan})")


@app.command()
@friendly
def batch(
    folder: Annotated[Path, typer.Argument(help="Folder of speech files (and melodies, or a pairs.csv).")],
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Where to write \\[default: FOLDER-sung/].")
    ] = None,
    melody: Annotated[Optional[Path], typer.Option("--melody", "-m", help="One melody for every file.")] = None,
    manifest: Annotated[
        Optional[Path], typer.Option(help="CSV of speech,melody[,output] \\[default: FOLDER/pairs.csv if present].")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Look in subfolders.")] = True,
    melody_type: MelodyType = "auto",
    engine: Engine = "auto",
    model: Model = None,
    device: Device = "auto",
    precision: Precision = "auto",
    timbre: Timbre = "model",
    threads: Threads = None,
    seed: Seed = None,
    track: Track = None,
    channel: Channel = None,
    pitch_bend: PitchBend = False,
    f0_units: F0Units = "auto",
    confidence: Confidence = 0.5,
    f0_method: F0Method = "swift",
    transpose: Transpose = 0.0,
    auto_key: AutoKey = False,
    exact_octave: ExactOctave = False,
    tempo: Tempo = 1.0,
    vibrato: Vibrato = None,
    portamento: Portamento = 0.0,
    formant_shift: FormantShift = 0.0,
    vibrato_rate: VibratoRate = None,
    overwrite: Overwrite = False,
    shard: Annotated[Optional[str], typer.Option(
        help="Run only shard I of N (e.g. 2/3): a stable split of the files, so N machines (a SLURM array) "
        "can sing one folder into one output folder.")] = None,
    report: Annotated[bool, typer.Option(
        "--report", help="Convert nothing: merge the shards' reports in the output folder and say what is done.")] = False,
):
    """Convert every speech file in FOLDER; one failure never stops the rest.

    Pairs come from pairs.csv, from --melody, or from matching names (take1.wav + take1.mid).
    """
    from alignsts_cli import api
    from alignsts_cli.batch import find_jobs, run_jobs, take_shard, write_report
    from alignsts_cli.shards import Shard

    if output_dir is None:
        base = folder.expanduser().resolve()
        output_dir = base.parent / f"{base.name}-sung"
    if report:
        _batch_report(folder, output_dir)
        return
    part = Shard.parse(shard) if shard is not None else Shard(1, 1)
    converter = api.Converter(engine, model=model, device=device, precision=precision, threads=threads,
                              timbre=timbre, portamento=portamento, formant_shift=formant_shift,
                              vibrato_rate=vibrato_rate)
    options = _melody_options(
        kind=melody_type, track=track, channel=channel, pitch_bend=pitch_bend, f0_units=f0_units,
        confidence=confidence, transpose=transpose, tempo=tempo, auto_key=auto_key,
        exact_octave=exact_octave, f0_method=f0_method,
    )
    listed = find_jobs(folder, output_dir, melody=melody, manifest=manifest, recursive=recursive)
    jobs = take_shard(listed, output_dir, part)
    if converter.engine == "alignsts":
        _console(stderr=True).print(f"using the {converter.describe()}")
    with _progress("items", "converting", total=len(jobs)) as (bar, task):
        def show(outcome):
            if outcome.status != "skipped" and outcome.job.melody is not None:
                bar.update(task, description=f"converted {outcome.job.speech.name}")
            bar.advance(task)

        outcomes = run_jobs(converter, jobs, overwrite=overwrite, progress=show, melody_options=options,
                            vibrato=vibrato, seed=seed)
    _batch_table(folder, output_dir, outcomes)
    if shard is not None:  # a report only where shards are to be merged: a plain batch leaves songs alone
        written = write_report(output_dir, part, outcomes, len(listed))
        _console().print(f"shard {part}: {len(jobs)} of the {len(listed)} files; report in {written} "
                         f"(`alignsts batch {folder} -o {output_dir} --report` merges the shards' reports)")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_USER_ERROR)


def _batch_report(folder: Path, output_dir: Path) -> None:
    """``batch --report``: the shards' reports merged into one table, and what is still to run."""
    from alignsts_cli.batch import merge_reports, tally

    merged = merge_reports(output_dir)
    out = _console()
    for r in merged.reports:
        counts = tally(o["status"] for o in r["outcomes"])
        out.print(f"shard {r['shard']}: {len(r['outcomes'])} files ({counts['ok']} converted, {counts['skipped']} "
                  f"skipped, {counts['failed']} failed) on {r.get('host', '?')}, finished {r.get('finished', '?')}")
    _batch_table(folder, output_dir, merged.outcomes)
    present = sum(1 for o in merged.outcomes if o.status != "failed" and o.job.output.exists())
    out.print(f"{present} of the {merged.jobs_total} files listed have their song in {output_dir}")
    for path in merged.stale:
        out.print(f"[yellow]left out {path}: a report of another split (delete it if that run is over)[/]")
    if merged.missing:
        shards = ", ".join(f"{i}/{merged.count}" for i in merged.missing)
        raise AlignSTSError(f"no report yet from shard {shards}; run `alignsts batch {folder} -o {output_dir} "
                            f"--shard I/{merged.count}` for each")
    if any(o.status == "failed" for o in merged.outcomes):
        raise typer.Exit(EXIT_USER_ERROR)


def _batch_table(folder: Path, output_dir: Path, outcomes) -> None:
    """The batch's table (one row per file) and its counts, on stdout."""
    from rich.table import Table

    table = Table(title=f"alignsts batch: {folder}", show_lines=False)
    for col in ("speech", "melody", "result", "seconds", "output / reason"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for o in outcomes:
        table.add_row(
            str(o.job.speech), str(o.job.melody) if o.job.melody else "-", f"[{colour[o.status]}]{o.status}[/]",
            f"{o.seconds:.1f}" if o.seconds is not None else "", o.note or str(o.job.output),
        )
    out = _console()
    out.print(table)
    from alignsts_cli.batch import tally

    counts = tally(o.status for o in outcomes)
    out.print(f"{counts['ok']} converted, {counts['skipped']} skipped, {counts['failed']} failed; outputs in {output_dir}")


@app.command()
@friendly
def inspect(
    melody: Annotated[Path, typer.Argument(help="A MIDI file (.mid, .midi, .kar) or MusicXML score (.musicxml, .mxl).")],
):
    """List the tracks and channels of a MIDI file (the parts of a MusicXML score), and which one convert sings."""
    from rich.table import Table

    from alignsts_cli import api

    rows, notes = api.inspect_melody(melody)
    table = Table(title=f"alignsts inspect: {melody}")
    for col in ("track", "ch", "name", "program", "notes", "chords", "range", "ends at s", "lyrics", "score",
                "default"):
        table.add_column(col, justify="right" if col in ("track", "ch", "notes", "chords", "ends at s", "score") else "left")
    for r in rows:
        program = f"{r['program']} {r['family']}" if r["program"] is not None else "-"
        table.add_row(str(r["track"]), str(r["channel"] or "-"), r["name"] or "-", program, str(r["notes"]),
                      f"{r['polyphony']:.0%}", f"{r['low']}-{r['high']}", f"{r['seconds']:.1f}",
                      "yes" if r["lyrics"] else "", f"{r['score']:+.1f}", "<- sung" if r["default"] else "")
    out = _console()
    if not out.is_terminal:
        out.width = max(out.width, 120)
    out.print(table)
    for line in notes:
        out.print(line)
    if rows:
        best = rows[0]
        out.print(f"convert sings track {best['track']} channel {best['channel']} ({', '.join(best['reasons']) or 'the only part'}); "
                  "--track N --channel C picks another")


@app.command("extract-f0")
@friendly
def extract_f0(
    reference: Annotated[Path, typer.Argument(help="A recording of singing (one voice).")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="CSV to write \\[default: REFERENCE.f0.csv].")
    ] = None,
    hop: Annotated[float, typer.Option(help="Frame step in seconds.")] = 0.01,
    f0_method: F0Method = "swift",
    floor: Annotated[Optional[float], typer.Option(
        help="Lowest F0 searched, Hz (default: 50 with swift, 80 with praat).")] = None,
    ceiling: Annotated[Optional[float], typer.Option(
        help="Highest F0 searched, Hz (default: 1100 with swift, 750 with praat).")] = None,
    midi: Annotated[Optional[Path], typer.Option(help="Also write the notes found as a MIDI file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the F0 over a spectrogram as a PNG.")] = None,
    overwrite: Overwrite = False,
):
    """Write the F0 contour of a sung recording as CSV (time,frequency,confidence; CREPE format)."""
    from alignsts_cli import api

    res = api.extract_f0_file(
        reference, output, hop=hop, floor=floor, ceiling=ceiling, method=f0_method, midi=midi, plot=plot,
        overwrite=overwrite,
    )
    voiced = float((res.f0 > 0).mean())
    print(f"wrote {res.csv} ({len(res.f0)} frames of {res.hop * 1000:g} ms, {voiced:.0%} voiced, {res.notes} notes)")
    for extra in (res.midi, res.plot):
        if extra is not None:
            print(f"wrote {extra}")


@app.command("download-weights")
@friendly
def download_weights(
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Hub cache to use \\[default: HF_HUB_CACHE, else HF_HOME/hub].")
    ] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only list what is present; download nothing.")] = False,
    lock: Annotated[
        Optional[Path], typer.Option(help="Another weights.lock \\[default: ALIGNSTS_WEIGHTS_LOCK, else the shipped one].")
    ] = None,
):
    """Fetch the model weights listed in weights.lock, verify their sha256, and list what is present."""
    from rich.table import Table

    from alignsts_cli import weights as W

    lock_path = lock if lock is not None else W.default_lock()
    components = W.read_lock(lock_path)
    out = _console()
    if not components:
        print(
            f"{lock_path.name} lists no weights yet, so there is nothing to download. "
            "The psola engine (the default) needs no weights."
        )
        return
    notes = []
    if not list_only:
        with _progress("bytes") as (bar, _):
            tasks: dict[str, int] = {}

            def show(done, total, label):
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total or None)
                bar.update(tasks[label], completed=done, total=total or None)

            for comp in components:
                res = W.resolve(comp, cache_dir=cache_dir, download=True, progress=show)
                if res.pinned_now:
                    notes.append(
                        f"{comp.name}: weights.lock leaves {comp.repo} unpinned; pinned it to revision {res.revision} "
                        f"and recorded the files' sha256 in {W.hub_cache(cache_dir) / W.PINS_FILE}"
                    )
    table = Table(title=f"weights ({W.hub_cache(cache_dir)})")
    for col in ("component", "source", "revision", "size", "state"):
        table.add_column(col)
    failed, corrupt = False, []
    for comp in components:
        st = W.status(comp, cache_dir)
        failed |= st.state != "present"
        if st.state == "corrupt":
            corrupt.append(comp)
        source = f"bundled: {comp.path}" if comp.bundled else f"hub: {comp.repo}"
        colour = {"present": "green", "missing": "yellow", "corrupt": "red"}[st.state]
        table.add_row(comp.name, source, (st.revision or "-")[:12], f"{st.size / 1e6:.1f} MB" if st.size else "-",
                      f"[{colour}]{st.state}[/]")
    out.print(table)
    for note in notes:
        out.print(note)
    if corrupt:
        fix = ("reinstall alignsts (pip install --force-reinstall alignsts)" if any(c.bundled for c in corrupt)
               else "run `alignsts download-weights` to fetch them again")
        raise AlignSTSError(f"{', '.join(c.name for c in corrupt)}: damaged (the files do not match the sha256 in "
                            f"{lock_path.name}); {fix}")
    if list_only and failed:
        out.print("run `alignsts download-weights` to fetch what is missing")


@app.command("import-checkpoint")
@friendly
def import_checkpoint(
    source: Annotated[Path, typer.Argument(help="The authors' archive (.zip/.tar), its extracted folder, or a .ckpt.")],
    name: Annotated[str, typer.Option(help="Name to import it under ('official' is what --engine alignsts uses).")] = "official",
    vocoder: Annotated[Optional[Path], typer.Option(help="The NSF-HiFiGAN .ckpt or folder, if not in SOURCE.")] = None,
    overwrite: Overwrite = False,
):
    """Convert the authors' released AlignSTS checkpoint into alignsts' safe format and install it.

    The authors' .ckpt files are Python pickles: they are read with tensors and plain data only allowed, so
    a crafted file cannot run code (it is refused, naming what it holds). They are read once, here.
    """
    from alignsts_cli import api

    dest = api.import_checkpoint(source, name=name, vocoder=vocoder, overwrite=overwrite)
    print(f"imported {source} as '{name}' into {dest}")


@app.command("make-corpus")
@friendly
def make_corpus(
    output: Annotated[Path, typer.Argument(help="Folder to write the corpus into.")],
    items: Annotated[int, typer.Option(help="Items (voice, sentence, melody) to make.")] = 600,
    sentences: Annotated[int, typer.Option(help="Sentences drawn from the built-in list (3-138).")] = 100,
    melodies: Annotated[int, typer.Option(help="Melodies drawn from the music21 corpus.")] = 60,
    voices: Annotated[int, typer.Option(help="Synthetic voices, 2-8 (male and female ranges alternate).")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed makes the same corpus, byte for byte.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Festival processes at once (default: 2).")] = None,
    overwrite: Overwrite = False,
):
    """Make a synthetic paired corpus: sentences spoken and sung to music21 melodies by Festival voices.

    Needs Festival (bash scripts/install-festival.sh) and music21 (pip install music21).
    """
    import json

    from alignsts_cli.training import corpus as C

    with _progress("items", "planning") as (bar, task):
        manifest = C.make_corpus(
            output, seed=seed, voices=voices, sentences=sentences, melodies=melodies, items=items, workers=workers,
            overwrite=overwrite,
            progress=lambda done, total, item_id: bar.update(task, description="synthesising", completed=done,
                                                             total=total),
        )
    info = json.loads((manifest.parent / "corpus.json").read_text())
    splits = {s: sum(it["split"] == s for it in info["items"]) for s in ("train", "valid", "test")}
    q = info["quality"]
    print(
        f"wrote {manifest} ({len(info['items'])} items: {splits['train']} train, {splits['valid']} valid, "
        f"{splits['test']} test; {q['singing_hours']:.2f} h of singing, {q['speech_hours']:.2f} h of speech; "
        f"sung F0 {q['cents'].get('median', float('nan')):.1f} cents (median) from the notes)"
    )


@app.command()
@friendly
def prepare(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder: manifest.csv / manifest.json, or a GTSinger tree.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cache folder to write; an interrupted run resumes.")],
    profile: Annotated[str, typer.Option(help="Audio profile: compact-16k or official-24k.")] = "compact-16k",
    content: Annotated[str, typer.Option(
        help="Content features: mfcc (offline), phones (offline: the bundled phone recogniser's posteriorgram) "
        "or wav2vec2-ctc.")] = "mfcc",
    content_dim: Annotated[Optional[int], typer.Option(
        help="Content feature size (default: 20 for mfcc, 41 for phones, 32 for wav2vec2-ctc).")] = None,
    valid_fraction: Annotated[float, typer.Option(help="Share of items for validation.")] = 0.1,
    test_fraction: Annotated[
        float, typer.Option(help="Share of items held out for testing (unseen speakers and songs).")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed of the train / valid / test split.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda: where the feature models run.")] = "auto",
    workers: Annotated[int, typer.Option(help="Processes computing items at once (each loads the feature models).")] = 1,
    shard: Annotated[Optional[str], typer.Option(
        help="Compute only shard I of N of the items (e.g. 2/3), for one machine of many writing one cache; "
        "then one run without --shard finishes the cache.")] = None,
):
    """Extract what training needs (content, speaker, singing mel and F0, speech mel) once, into a cache."""
    from alignsts_cli.training import cache as prepared
    from alignsts_cli.runtime import pick_device
    from alignsts_cli.shards import Shard

    part = Shard.parse(shard) if shard is not None else None

    dim = content_dim if content_dim is not None else {"wav2vec2-ctc": 32, "phones": 41}.get(content, 20)
    content_model = None
    if content == "wav2vec2-ctc":
        from alignsts_cli.voices import content_model as wav2vec2_folder

        content_model = wav2vec2_folder(needed_by="--content wav2vec2-ctc needs the wav2vec2 content model",
                                        instead="use --content mfcc")
    with _progress("items", "reading the dataset") as (bar, task):
        res = prepared.prepare(
            dataset, output, profile=profile, content_kind=content, content_dim=dim, content_model=content_model,
            seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction, device=pick_device(device),
            progress=lambda done, total, item_id: bar.update(task, description=f"preparing {item_id}",
                                                             completed=done, total=total),
            workers=workers, shard=part,
        )
    s = res.splits
    what = f"shard {part} of {res.cache}" if part else f"wrote {res.cache}"
    print(
        f"{what} ({res.items} items: {s['train']} train, {s['valid']} valid, {s['test']} test; "
        f"{res.hours:.2f} h of singing; {res.computed} computed, {res.reused} already done)"
    )
    if part:
        print(f"when every shard has run, finish the cache once with `alignsts prepare {dataset} -o {output}` "
              "(no --shard): it reuses what the shards wrote")
    for item_id, reason in res.failed:
        print(f"left out {item_id}: {reason}", file=sys.stderr)


@app.command("train")
@friendly
def train_command(
    cache: Annotated[Path, typer.Argument(help="A prepared cache folder (alignsts prepare DATASET -o CACHE).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: checkpoints, logs, samples, voice/.")],
    config: Annotated[
        Optional[str],
        typer.Option("--config", "-c", help="Train config: a JSON file or a shipped name (compact-16k, official, ...); "
                     "when resuming, the run's own train_config.json by default.")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Train up to this step (overrides the config).")] = None,
    device: Annotated[
        Optional[str], typer.Option(help="auto (CUDA when available), cpu or cuda (overrides the config).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint in OUTPUT.")
    ] = True,
):
    """Train AlignSTS on a prepared cache: alignsts train cache/ -o run/ --config compact-16k

    Writes OUTPUT/checkpoints/step_N, OUTPUT/log.csv and valid.csv, sung validation samples in
    OUTPUT/samples/, and the newest model as OUTPUT/voice (convert --engine alignsts --model OUTPUT/voice).
    Run the same command again to resume after an interruption. On several GPUs or machines, start it
    under torchrun: torchrun --nproc-per-node 4 -m alignsts_cli train cache/ -o run/ -c compact-16k
    """
    from alignsts_cli.training import distributed
    from alignsts_cli.training.train import TrainConfig, train

    cfg = TrainConfig.load(config) if config is not None else None
    if cfg is None and not (output / "train_config.json").exists():
        raise AlignSTSError("a new training run needs --config (e.g. --config compact-16k, or a JSON file like "
                            "alignsts_cli/training/configs/compact-16k.json)")
    if cfg is None:
        cfg = TrainConfig.load(output / "train_config.json")
    changes = {k: v for k, v in (("steps", steps), ("device", device)) if v is not None}
    if changes:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes})
    if not distributed.requested() or os.environ.get("RANK", "0") == "0":
        _train_and_report(cache, output, cfg, resume)
    else:  # the other ranks of a torchrun: rank 0 speaks for the run
        train(cache, output, cfg, resume=resume)


def _train_and_report(cache: Path, output: Path, cfg, resume: bool) -> None:
    from alignsts_cli.training.train import checkpoints, train

    with _progress("items", "training", total=cfg.steps) as (bar, task):

        def show(step, total, info):
            bar.update(task, completed=step, total=total, description=f"loss {info['total']:.3f} lr {info['lr']:.2e}")
            if "checkpoint" in info:
                valid = f", valid loss {info['valid']['total']:.3f}" if "valid" in info else ""
                bar.console.print(f"step {step}: saved {info['checkpoint']}{valid}")

        try:
            result = train(cache, output, cfg, resume=resume, progress=show)
        except KeyboardInterrupt:
            done = checkpoints(output)
            where = f"step {done[-1][0]}" if done else "the start"
            _error(f"interrupted; run the same command again to resume from {where}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    resumed = f" (resumed from step {result['resumed_from']})" if result["resumed_from"] is not None else ""
    speed = f", {result['seconds_per_step']:.2f} s/step" if result["seconds_per_step"] else ""
    print(f"trained to step {result['step']}{resumed}{speed}; {result['parameters'] / 1e6:.2f} M parameters")
    if result["world_size"] > 1:
        print(f"on {result['world_size']} processes ({result['backend']}), {result['per_rank_batch']} of the "
              f"{cfg.batch_size} items of each step per process; {result['precision']}")
    if result["valid"]:
        print(f"valid loss {result['valid']['total']:.4f} at step {result['valid']['step']}")
    print(f"checkpoint {result['checkpoint']}; logs {output / 'log.csv'}, {output / 'valid.csv'}")
    if (result["voice"] / "vocoder").is_dir():
        print(f"voice {result['voice']}: alignsts convert speech.wav -m song.mid --engine alignsts "
              f"--model {result['voice']}")


@app.command()
@friendly
def evaluate(
    cache: Annotated[
        Optional[Path], typer.Argument(help="A prepared cache (the folder with cache.json): run and score --system's.")
    ] = None,
    system: Annotated[
        Optional[list[str]],
        typer.Option("--system", "-s", help="ground-truth[:VOCODER], psola, world, or alignsts[-LABEL][:VOICE] (no VOICE: the one "
                     "--engine alignsts uses); repeat for several side by side \\[default: ground-truth and psola on "
                     "a cache, psola and alignsts on a speech,melody manifest]."),
    ] = None,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Where outputs (SYSTEM/ID.wav), report.json and report.md go.")
    ] = Path("evaluation"),
    split: Annotated[str, typer.Option(help="Which items of the cache: train, valid or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items of the split.")] = None,
    references: Annotated[
        Optional[Path], typer.Option(help="Instead of a cache: a folder of reference singing, paired by name...")
    ] = None,
    outputs: Annotated[
        Optional[list[Path]], typer.Option(help="...with the files of this folder (repeat: one folder per system).")
    ] = None,
    speech: Annotated[Optional[Path], typer.Option(help="Input speech of the same names, for speaker similarity.")] = None,
    pairs: Annotated[
        Optional[Path], typer.Option(help="Instead of a cache: a CSV of speech,melody[,transcript,...] (header "
                                     "row required) to convert with --system's and score without a sung reference, "
                                     "or of reference,output[,speech[,system]] rows of outputs made elsewhere.")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Audio profile (rate and mel) the metrics use with --references/--pairs.")
    ] = "compact-16k",
    device: Device = "auto",
    precision: Precision = "auto",
    threads: Threads = None,
    seed: Seed = None,
    overwrite: Overwrite = False,
):
    """Score systems side by side; write report.json and report.md.

    alignsts evaluate --pairs devset-pairs.csv -s psola -s alignsts  (real speech: melody, voice, words, quality)
    | alignsts evaluate CACHE -s ground-truth -s psola -s alignsts:VOICE  (LSD, RCA, RRD, speaker similarity)
    | alignsts evaluate --references REFS --outputs OUTS
    """
    from alignsts_cli.runtime import check_precision, set_threads
    from alignsts_cli.training import evaluate as ev

    check_precision(precision)
    set_threads(threads)
    by_files = references is not None or outputs or pairs is not None
    if cache is not None and by_files:
        raise AlignSTSError("give either a prepared cache or --references/--outputs/--pairs, not both")
    if cache is None and not by_files:
        raise AlignSTSError("give a prepared cache (alignsts evaluate CACHE), --pairs, or --references with --outputs")
    if pairs is not None and references is None and not outputs:
        from alignsts_cli.training import scorecard

        if scorecard.is_speech_manifest(pairs):
            found = scorecard.read_speech_pairs(pairs)
            with _stages("scoring", 36) as show:
                report = scorecard.evaluate_speech(
                    found, system or ("psola", "alignsts"), output_dir, device=device, precision=precision,
                    seed=0 if seed is None else seed, overwrite=overwrite, progress=show)
            _report_table(report, output_dir)
            choice = scorecard.choose(report)
            if choice is not None:
                _console().print(f"best by the scorecard: {choice['system']} ({choice['why']})")
            if report.failures:
                raise typer.Exit(EXIT_USER_ERROR)
            return
    if by_files and system:
        raise AlignSTSError("--system runs systems on a cache or a speech,melody --pairs manifest; "
                            "with --references or reference,output pairs the outputs are already made")
    if not by_files:
        found = None
    elif pairs is not None:
        found = ev.read_pairs(pairs)
    elif references is None or not outputs:
        raise AlignSTSError("--references and --outputs go together: give both")
    else:
        found = ev.find_pairs(references, outputs, speech)
    with _stages("evaluating", 28) as show:
        if found is None:
            report = ev.evaluate_systems(
                cache, system or ev.DEFAULT_SYSTEMS, output_dir, split=split, limit=limit, device=device,
                precision=precision, seed=0 if seed is None else seed, overwrite=overwrite, progress=show,
            )
        else:
            report = ev.evaluate_pairs(found, output_dir, profile=profile, overwrite=overwrite, progress=show)
    _report_table(report, output_dir)
    if report.failures:
        raise typer.Exit(EXIT_USER_ERROR)


def _report_table(report, output_dir: Path) -> None:
    """The scorecard on stdout, the first failures on stderr."""
    from rich.table import Table

    rows = report.table()
    rate = report.settings.get("sample_rate")
    table = Table(title=f"alignsts evaluate: {report.settings.get('source', '')}"
                        + (f" ({rate} Hz)" if isinstance(rate, int) else ""))
    for k, col in enumerate(rows[0]):
        table.add_column(col, justify="left" if k == 0 else "right")
    for row in rows[1:]:
        table.add_row(*row)
    out = _console()
    if not out.is_terminal:
        out.width = max(out.width, 150)  # a log or a pipe: keep the scorecard's rows on one line
    out.print(table)
    for f in report.failures[:10]:
        print(f"failed: {f['system']} / {f['id']}: {f['error']}", file=sys.stderr)
    if len(report.failures) > 10:
        print(f"... and {len(report.failures) - 10} more failures (see report.md)", file=sys.stderr)
    out.print(f"wrote {output_dir / 'report.json'} and {output_dir / 'report.md'}")


@app.command()
@friendly
def web(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the page to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    device: Device = "auto",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload the page takes, MB.")] = 50.0,
):
    """A local web page: record or upload speech, pick a melody, listen, download (pip install 'alignsts[web]')."""
    from alignsts_cli import web as page

    if not page.is_local(host):
        print(f"warning: --host {host} lets every machine that reaches this one use the page (and its CPU); "
              "there is no login. Use 127.0.0.1 unless you mean it.", file=sys.stderr)

    def ready(url: str) -> None:
        print(f"alignsts web page at {url} (Ctrl-C stops it)", flush=True)

    try:
        page.serve(host, port, device=device, max_upload_mb=max_upload_mb, ready=ready)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a server is stopped: not an error
        pass
    print("alignsts web stopped; its temporary files are removed", file=sys.stderr)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, a job scheduler's stop) unwinds as Ctrl-C does: no partial file


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    app(prog_name="alignsts")
