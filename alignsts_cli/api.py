"""What the command line and Python users call: ``convert()`` / ``Converter``, ``extract_f0_file()`` and
``import_checkpoint()``.

One conversion: read the melody and the speech, analyse the speech (:mod:`alignsts_cli.analysis`), shape
the melody for this voice, sing with an engine (:mod:`alignsts_cli.engines`), write the song. Nothing here
prints or exits; problems a user can fix raise ``AlignSTSError`` (or a subclass).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import HOP, REFERENCE_F0_METHOD, Melody, hz_to_midi, midi_to_hz
from alignsts_cli.runtime import check_device, check_precision, set_threads
from alignsts_cli.voices import import_checkpoint

__all__ = ["Converter", "ConversionResult", "F0Result", "MelodyOptions", "convert", "extract_f0_file",
           "import_checkpoint", "inspect_melody", "prepare_for_voice", "resolve_engine"]

ENGINES = ("auto", "psola", "world", "alignsts")
#: The engines that need no model weights (signal processing on the speech itself).
SIGNAL_ENGINES = ("psola", "world")
#: What ``--engine auto`` runs: the engine that scored best on the real-speech development set, words and
#: voice first (``alignsts evaluate --pairs benchmarks/devset-pairs.csv``; the table is in the README).
#: Change it only with a scorecard that says so.
AUTO_ENGINE = "psola"
#: Largest distance (semitones) between the melody's median and the speaking voice's.
MAX_RANGE_GAP = 24.0
#: ``--seed`` values: what a 64-bit generator takes.
MAX_SEED = 2**64 - 1

Progress = Callable[[str, float], None]  # (stage description, fraction done 0..1)


@dataclass
class MelodyOptions:
    """How to read and shape the melody (the ``--melody-*`` options of the CLI)."""

    kind: str = "auto"  # auto | midi | csv | audio
    track: str | None = None  # MIDI track index or name
    channel: int | None = None  # MIDI channel 1-16
    pitch_bend: bool = False  # apply MIDI pitch bends to the contour
    f0_units: str = "auto"  # CSV values: auto | hz | midi
    confidence: float = 0.5  # CSV frames below this confidence are unvoiced
    transpose: float = 0.0  # semitones
    tempo: float = 1.0  # 2.0 = twice as fast
    auto_key: bool = False  # always move by octaves to the speaker's singing point
    exact_octave: bool = False  # never move by octaves (by default a melody far from the voice is moved)
    f0_method: str = REFERENCE_F0_METHOD  # pitch tracker for reference singing: swift | praat (melody.F0_METHODS)

    def check(self) -> "MelodyOptions":
        """Refuse values no melody can be shaped with (NaN, infinity, out of range) before any work."""
        from alignsts_cli.melody import check_tempo, check_transpose

        check_transpose(self.transpose)
        check_tempo(self.tempo)
        if not 0.0 <= self.confidence <= 1.0:
            raise AlignSTSError(f"--confidence {self.confidence}: use a value from 0 to 1")
        return self


def check_options(melody_options: MelodyOptions | None, vibrato: float | None, seed: int | None) -> None:
    """Refuse melody options, a ``--vibrato`` depth or a ``--seed`` that no engine can use, before any work."""
    from alignsts_cli.engines.timing import MAX_VIBRATO_CENTS

    (melody_options or MelodyOptions()).check()

    if vibrato is not None and not (math.isfinite(vibrato) and 0.0 <= vibrato <= MAX_VIBRATO_CENTS):
        raise AlignSTSError(f"--vibrato {vibrato}: give a depth in cents from 0 to {MAX_VIBRATO_CENTS:g} "
                            "(20-50 sounds natural)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise AlignSTSError(f"--seed {seed}: use a whole number from 0 to 2^64-1")


@dataclass
class ConversionResult:
    output: Path
    seconds: float  # length of the sung audio
    sample_rate: int
    engine: str
    melody: Melody
    info: dict = field(default_factory=dict)


def resolve_engine(engine: str, model: str | os.PathLike | None = None, cache_dir=None) -> str:
    """The engine that will run for ``--engine``.

    ``auto`` is :data:`AUTO_ENGINE`, the engine that scores best on real speech, unless a voice
    ``model`` is given (then the neural engine, which is what a model is for). ``alignsts`` without
    weights is an error that names the command to run.
    """
    if engine not in ENGINES:
        raise AlignSTSError(f"--engine {engine}: use one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "alignsts" if model is not None else AUTO_ENGINE
    if engine == "alignsts":
        from alignsts_cli.voices import locate

        locate(model, cache_dir=cache_dir)
    return engine


def prepare_for_voice(melody: Melody, options: MelodyOptions, speech_median_hz: float) -> Melody:
    """Apply tempo, the octave (``melody.prepare_melody``: moved to this voice unless ``exact_octave``) and
    transpose, and check the melody suits this voice."""
    from alignsts_cli.melody import prepare_melody

    if options.auto_key and options.exact_octave:
        raise AlignSTSError("--auto-key moves the melody by octaves and --exact-octave forbids it; give one of them")
    m = prepare_melody(
        melody,
        transpose=options.transpose,
        tempo=options.tempo,
        auto_key_hz=speech_median_hz if options.auto_key else None,
        voice_hz=speech_median_hz,
        exact_octave=options.exact_octave,
    )
    gap = m.median_midi() - float(hz_to_midi(speech_median_hz))
    if abs(gap) > MAX_RANGE_GAP:
        where = "above" if gap > 0 else "below"
        raise AlignSTSError(
            f"{melody.source}: the melody sits {abs(gap):.0f} semitones {where} this voice (speech around "
            f"{speech_median_hz:.0f} Hz, melody around {float(midi_to_hz(m.median_midi())):.0f} Hz); "
            + ("leave out --exact-octave to sing it in this voice's octave, or use --transpose" if options.exact_octave
               else f"--transpose {options.transpose:+g} takes it too far; use a smaller one")
        )
    return m


class Converter:
    """Engines loaded once, for one conversion or a whole batch.

    ``engine``: auto (= :data:`AUTO_ENGINE`) | psola | world | alignsts; ``model``: a voice-model folder for the neural engine
    (default: an imported one, else weights.lock's); ``device``: auto | cpu | cuda; ``precision``: auto
    (bfloat16 vocoder on CPUs that compute it natively) | float32; ``threads``: torch CPU threads
    (default: torch's choice, one per physical core); ``timbre``: model (the voice model's) | restore (the
    speech's own average envelope on the song, :mod:`alignsts_cli.timbre`); ``portamento`` (seconds of glide
    between notes), ``formant_shift`` (semitones) and ``vibrato_rate`` (Hz): the world engine's (:mod:`alignsts_cli.engines.world`).
    """

    def __init__(self, engine: str = "auto", *, model=None, device: str = "auto", cache_dir=None,
                 precision: str = "auto", threads: int | None = None, timbre: str = "model",
                 portamento: float = 0.0, formant_shift: float = 0.0, vibrato_rate: float | None = None):
        from alignsts_cli.engines.alignsts import check_timbre  # "model" is its DEFAULT_TIMBRE

        check_device(device)
        check_precision(precision)
        self._timbre = check_timbre(timbre)
        set_threads(threads)
        self.engine = resolve_engine(engine, model, cache_dir)
        self._world = self._world_settings(portamento, formant_shift, vibrato_rate)
        self._model, self._device, self._cache_dir = model, device, cache_dir
        self._precision = precision
        self._neural = None

    def _world_settings(self, portamento: float, formant_shift: float, vibrato_rate: float | None):
        from alignsts_cli.engines.world import VIBRATO_RATE, WorldSettings

        settings = WorldSettings(portamento=portamento, formant_shift=formant_shift,
                                 vibrato_rate=VIBRATO_RATE if vibrato_rate is None else vibrato_rate).check()
        if self.engine != "world" and (portamento or formant_shift or vibrato_rate is not None):
            asked = "--portamento" if portamento else "--formant-shift" if formant_shift else "--vibrato-rate"
            raise AlignSTSError(f"{asked}: only the world engine has it; add --engine world")
        return settings

    @property
    def neural(self):
        if self._neural is None:
            from alignsts_cli.engines.alignsts import NeuralEngine
            from alignsts_cli.voices import locate

            self._neural = NeuralEngine(locate(self._model, cache_dir=self._cache_dir), self._device,
                                        precision=self._precision, timbre=self._timbre)
        return self._neural

    def describe(self) -> str:
        """The engine and, for the neural one, the device it runs on."""
        if self.engine in SIGNAL_ENGINES:
            return f"{self.engine} engine (CPU)"
        from alignsts_cli.runtime import describe_device

        return f"AlignSTS engine on {describe_device(self.neural.device, self.neural.vocoder_bf16)} ({self.neural.voice.source})"

    def convert(
        self,
        speech: str | os.PathLike,
        melody: str | os.PathLike,
        output: str | os.PathLike,
        *,
        melody_options: MelodyOptions | None = None,
        vibrato: float | None = None,
        seed: int | None = None,
        plot: str | os.PathLike | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
        plan: str | os.PathLike | None = None,
        save_plan: str | os.PathLike | None = None,
    ) -> ConversionResult:
        """One conversion (see the module-level ``convert``)."""
        check_options(melody_options, vibrato, seed)
        step = progress or (lambda stage, frac: None)
        job = self._prepare(speech, melody, output, melody_options, plot, overwrite, step, plan, save_plan)
        if self.engine == "alignsts":
            self._time(job, "model loading", lambda: self.neural)
            step("singing (AlignSTS)", 0.2)
            res = self.neural.sing(job.audio, job.sr, job.target, job.analysis, seed=0 if seed is None else seed,
                                   progress=lambda frac: step("singing (AlignSTS)", 0.2 + 0.7 * frac),
                                   groups=job.groups)
            return self._finish(job, res, step)
        return self._finish(job, self._signal(job, vibrato, step), step)

    def convert_many(self, jobs, *, melody_options: MelodyOptions | None = None, vibrato: float | None = None,
                     seed: int | None = None, overwrite: bool = False):
        """Convert ``jobs`` = [(speech, melody, output)]; yields (job, ConversionResult or the exception).

        One failure never stops the others: an ``AlignSTSError`` is a problem with that file, any
        other exception a bug met on it. The neural engine on CUDA sings up to four songs per
        acoustic-model batch; elsewhere songs go one by one.
        """
        check_options(melody_options, vibrato, seed)
        group = 4 if self.engine == "alignsts" and self.neural.device == "cuda" else 1
        quiet = lambda stage, frac: None  # noqa: E731
        for i in range(0, len(jobs), group):
            with contextlib.ExitStack() as claims:
                ready = []
                for job in jobs[i:i + group]:
                    prep = self._safely(lambda: self._claim(claims, job[2], overwrite)
                                        or self._prepare(*job, melody_options, None, overwrite, quiet))
                    if isinstance(prep, Exception):
                        yield job, prep
                    else:
                        ready.append((job, prep))
                if not ready:
                    continue
                if self.engine != "alignsts":
                    for job, prep in ready:
                        yield job, self._safely(lambda: self._finish(prep, self._signal(prep, vibrato, quiet), quiet))
                    continue
                results = self._safely(lambda: self.neural.sing_many(
                    [(p.audio, p.sr, p.target, p.analysis, 0 if seed is None else seed) for _, p in ready]))
                if isinstance(results, Exception):
                    for job, _ in ready:
                        yield job, results
                    continue
                for (job, prep), res in zip(ready, results):
                    yield job, self._safely(lambda: self._finish(prep, res, quiet))

    @staticmethod
    def _claim(claims: contextlib.ExitStack, output, overwrite: bool) -> None:
        """Claim ``output`` for this run until ``claims`` closes (``files.claim``); raises ``OutputClaimed``
        when another run holds it or, without ``overwrite``, has finished it since the jobs were listed."""
        from alignsts_cli.files import OutputClaimed, claim

        claims.enter_context(claim(output))
        if not overwrite and Path(output).expanduser().exists():
            raise OutputClaimed(f"{output}: another alignsts run has written it")

    @staticmethod
    def _safely(fn):
        try:
            return fn()
        except Exception as exc:  # reported per file by convert_many's caller
            return exc

    @staticmethod
    def _time(job, stage, fn):
        import time

        t0 = time.perf_counter()
        out = fn()
        job.timings[stage] = job.timings.get(stage, 0.0) + time.perf_counter() - t0
        return out

    def _prepare(self, speech, melody, output, melody_options, plot, overwrite, step, plan=None,
                 save_plan=None) -> "_Job":
        """Check the outputs, read and check the inputs, analyse the speech, shape the melody, make (or read)
        the syllable-to-note plan."""
        from dataclasses import replace

        from alignsts_cli.analysis import assign_syllables
        from alignsts_cli.analysis import analyse_speech
        from alignsts_cli.audio import load_speech
        from alignsts_cli.files import check_output_path
        from alignsts_cli.melody import load_melody

        options = melody_options or MelodyOptions()
        inputs = (speech, melody)
        out = check_output_path(output, inputs=inputs, overwrite=overwrite, suffixes=(".wav", ".flac"))
        if plot is not None:
            check_output_path(plot, inputs=inputs + (out,), overwrite=overwrite, suffixes=(".png",))
        if save_plan is not None:
            check_output_path(save_plan, inputs=inputs + (out,) + ((plan,) if plan else ()), overwrite=overwrite,
                              suffixes=(".json",))
        job = _Job(out=out, inputs=inputs, plot=plot, overwrite=overwrite)
        step("reading the melody", 0.0)

        def read():
            raw = load_melody(melody, options.kind, track=options.track, channel=options.channel,
                              pitch_bend=options.pitch_bend, f0_units=options.f0_units, confidence=options.confidence,
                              f0_method=options.f0_method)
            step("reading the speech", 0.05)
            return raw, load_speech(speech)

        raw, (job.audio, job.sr) = self._time(job, "loading", read)
        step("analysing the speech", 0.1)
        job.analysis = self._time(job, "f0", lambda: analyse_speech(job.audio, job.sr, source=speech))
        job.target = self._time(job, "f0", lambda: prepare_for_voice(raw, options, job.analysis.median_f0))
        if plan is not None:
            from alignsts_cli.plan import read_plan

            sylls, job.groups = read_plan(plan, job.target.notes, len(job.audio) / job.sr)
            job.analysis = replace(job.analysis, syllables=sylls)
        else:
            job.groups = assign_syllables(job.analysis.syllables, job.target.notes)
        if save_plan is not None:
            from alignsts_cli.plan import write_plan

            write_plan(save_plan, job.analysis.syllables, job.target.notes, job.groups,
                       speech=Path(speech).name, melody=Path(melody).name)
        return job

    def _signal(self, job: "_Job", vibrato: float | None, step):
        """Sing with a signal engine (psola, world); ``vibrato`` None is the engine's default."""
        from dataclasses import replace

        from alignsts_cli.engines import psola, world

        label = f"singing ({self.engine})"
        if self.engine == "world":
            engine, settings = world, replace(self._world, vibrato_cents=vibrato).check()
        else:
            engine, settings = psola, psola.PsolaSettings(vibrato_cents=vibrato or 0.0)
        step(label, 0.2)
        return self._time(job, self.engine, lambda: engine.sing(
            job.audio, job.sr, job.target, settings, analysis=job.analysis,
            progress=lambda done, total: step(label, 0.2 + 0.7 * done / total), groups=job.groups))

    def _finish(self, job: "_Job", sung, step) -> ConversionResult:
        """Write the song (and the plot); ``sung`` is a signal engine's (audio, info) or a NeuralResult."""
        from alignsts_cli.audio import save_audio

        if isinstance(sung, tuple):
            song, info = sung
            out_sr = job.sr
        else:
            song, out_sr = sung.audio, sung.sample_rate
            info = {"chunks": len(sung.chunks), "syllables": len(job.analysis.syllables),
                    "notes": len(job.target.notes)}
            job.timings.update(sung.timings)
        step("writing", 0.9)
        self._time(job, "writing", lambda: save_audio(job.out, song, out_sr, overwrite=job.overwrite,
                                                      inputs=job.inputs))
        info.update(job.target.info)
        if job.plot is not None:
            from alignsts_cli import plot as plots

            if isinstance(sung, tuple):
                self._time(job, "plot", lambda: plots.plot_conversion(
                    job.plot, job.audio, job.sr, song, job.target, job.analysis, overwrite=job.overwrite,
                    groups=job.groups))
            else:
                self._time(job, "plot", lambda: plots.plot_neural(job.plot, sung, self.neural.profile,
                                                                 overwrite=job.overwrite))
        info["timings"] = job.timings
        step("done", 1.0)
        return ConversionResult(job.out, len(song) / out_sr, out_sr, self.engine, job.target, info)


@dataclass
class _Job:
    """One conversion between reading its inputs and writing its output."""

    out: Path
    inputs: tuple
    plot: str | os.PathLike | None
    overwrite: bool
    audio: np.ndarray | None = None
    sr: int = 0
    analysis: object = None
    target: Melody | None = None
    groups: list | None = None  # the syllable-to-note plan: [(syllable indices, note indices)]
    timings: dict = field(default_factory=dict)


def convert(
    speech: str | os.PathLike,
    melody: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: str = "auto",
    model: str | os.PathLike | None = None,
    melody_options: MelodyOptions | None = None,
    vibrato: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int | None = None,
    plot: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    plan: str | os.PathLike | None = None,
    save_plan: str | os.PathLike | None = None,
    portamento: float = 0.0,
    formant_shift: float = 0.0,
) -> ConversionResult:
    """Sing the words of ``speech`` to ``melody`` and write the result to ``output``.

    ``melody`` is a MIDI file, an F0 CSV or a reference singing recording. The output
    (WAV or FLAC by extension) is written atomically; inputs are never overwritten,
    an existing output only with ``overwrite``. ``plot``: a PNG (psola: the target
    melody against the sung F0; AlignSTS: mel, target F0 and attention). ``engine``:
    auto (:data:`AUTO_ENGINE`, the best on real speech), psola, world or alignsts; ``vibrato``: depth in
    cents (None: the engine's default, none for psola); ``device``, ``precision`` and ``seed`` apply to the
    neural engine (the signal engines are deterministic).
    ``save_plan``: also write the syllable-to-note plan (JSON, :mod:`alignsts_cli.plan`); ``plan``: sing an
    (edited) plan instead of the one made here. ``portamento``, ``formant_shift``: see ``Converter``.
    For many files, build one ``Converter`` and call its ``convert``.
    """
    return Converter(engine, model=model, device=device, precision=precision, portamento=portamento,
                     formant_shift=formant_shift).convert(
        speech, melody, output, melody_options=melody_options, vibrato=vibrato, seed=seed, plot=plot,
        overwrite=overwrite, progress=progress, plan=plan, save_plan=save_plan,
    )


@dataclass
class F0Result:
    csv: Path
    f0: np.ndarray  # [T] Hz on the hop grid
    confidence: np.ndarray  # [T]
    hop: float
    midi: Path | None = None
    plot: Path | None = None
    notes: int = 0


def extract_f0_file(
    reference: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    hop: float = HOP,
    floor: float | None = None,
    ceiling: float | None = None,
    method: str = REFERENCE_F0_METHOD,
    midi: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> F0Result:
    """F0 of a sung recording to a CREPE-format CSV (``ref.f0.csv`` by default), tracked by ``method``
    (``melody.F0_METHODS``; ``floor``/``ceiling`` default to that tracker's singing range).

    Optionally also the notes as a MIDI file and a PNG of the F0 over a spectrogram.
    """
    from alignsts_cli import melody as mel
    from alignsts_cli.audio import load_audio, loudest_dbfs, SILENCE_DBFS
    from alignsts_cli.files import check_output_path

    floor, ceiling = mel.f0_range(method, floor, ceiling)
    if not 0.001 <= hop <= 0.1:
        raise AlignSTSError(f"--hop {hop}: use a hop between 0.001 and 0.1 seconds")
    if not 20 <= floor < ceiling <= 2000:
        raise AlignSTSError(f"F0 range {floor}-{ceiling} Hz: the floor must be below the ceiling, within 20-2000 Hz")
    ref = Path(reference)
    csv = Path(output) if output is not None else ref.with_name(ref.stem + ".f0.csv")
    inputs = (ref,)
    check_output_path(csv, inputs=inputs, overwrite=overwrite, suffixes=(".csv",))
    if midi is not None:
        check_output_path(midi, inputs=inputs, overwrite=overwrite, suffixes=mel.MIDI_EXTENSIONS)
    if plot is not None:
        check_output_path(plot, inputs=inputs, overwrite=overwrite, suffixes=(".png",))
    audio, sr = load_audio(ref, what="reference singing")
    if loudest_dbfs(audio, sr) < SILENCE_DBFS:
        raise AlignSTSError(f"{ref}: the recording is silent; give a recording of someone singing")
    f0, conf = mel.extract_f0(audio, sr, hop=hop, floor=floor, ceiling=ceiling, method=method)
    if not np.any(f0 > 0):
        raise AlignSTSError(f"{ref}: no pitch found; give a recording of a single voice singing")
    result = F0Result(mel.write_f0_csv(csv, f0, conf, hop, inputs=inputs, overwrite=overwrite), f0, conf, hop)
    notes = mel.notes_from_contour(f0, hop)
    result.notes = len(notes)
    if midi is not None:
        result.midi = mel.write_midi(midi, notes, inputs=inputs, overwrite=overwrite)
    if plot is not None:
        from alignsts_cli.plot import plot_f0

        result.plot = plot_f0(plot, audio, sr, f0, hop, notes, name=ref.name, overwrite=overwrite, inputs=inputs)
    return result


def inspect_melody(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """The parts of a MIDI or MusicXML file as ``convert`` sees them, best first: (rows, notes).

    Each row: ``track`` (MIDI track or MusicXML part), ``channel`` (1-16; None in MusicXML), ``name``, ``program`` (General MIDI, 0-127, or None),
    ``family``, ``notes``, ``polyphony`` (share of time with chords), ``low`` / ``high`` (note names),
    ``seconds``, ``lyrics``, ``score``, ``reasons`` and ``default`` (the part convert sings).
    ``notes``: lines about what is left out (drum tracks) and whether the default is a close call.
    """
    from alignsts_cli.melody import DRUM_CHANNEL, melody_kind, note_name, read_midi_tracks
    from alignsts_cli.tracks import CLOSE_CALL, GM_FAMILIES, choose, polyphony

    kind = melody_kind(path) if Path(path).suffix else "none"
    if kind == "musicxml":
        from alignsts_cli.musicxml import read_parts

        parts, notes = [pt for pt in read_parts(path) if pt.notes], []
    elif kind == "midi":
        tracks = read_midi_tracks(path)
        programs: dict[int, int] = {}
        for t in tracks:
            for ch, prog in t.programs.items():
                programs.setdefault(ch, prog)
        parts = [part for t in tracks for part in t.parts(programs)]
        notes = [f"track {t.index} '{t.name or 'unnamed'}': {t.drum_notes} drum notes (channel {DRUM_CHANNEL + 1}), "
                 "never sung" for t in tracks if t.drum_notes]
    else:
        raise AlignSTSError(f"{path}: inspect reads scores (MIDI .mid/.midi/.kar, MusicXML .musicxml/.mxl); "
                            "this is not one")
    if not parts:
        return [], notes + ["no track has melodic notes"]
    chosen, uncertain, ranked = choose(parts)
    if uncertain:
        notes.append(f"the default is a close call (within {CLOSE_CALL:g} points): pick with --track/--channel")
    rows = []
    for part in ranked:
        pitches = part.pitches
        rows.append({
            "track": part.index, "channel": None if part.channel is None else part.channel + 1,
            "name": part.name, "program": part.program,
            "family": GM_FAMILIES[part.program // 8] if part.program is not None else "",
            "notes": len(part.notes), "polyphony": polyphony(part.notes),
            "low": note_name(pitches.min()), "high": note_name(pitches.max()),
            "seconds": max(n.end for n in part.notes), "lyrics": part.lyrics, "score": part.score,
            "reasons": part.reasons, "default": part is chosen,
        })
    return rows, notes
