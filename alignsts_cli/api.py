"""What the command line and Python users call: ``convert()`` and ``extract_f0_file()``.

Nothing here prints or exits; problems a user can fix raise ``AlignSTSError``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import HOP, Melody, hz_to_midi

ENGINES = ("auto", "psola", "alignsts")
DEVICES = ("auto", "cpu", "cuda")
#: The psola engine works at the speech's own rate, within these bounds.
MIN_WORK_SR = 8000
MAX_WORK_SR = 48000
#: Largest distance (semitones) between the melody's median and the speaking voice's.
MAX_RANGE_GAP = 24.0

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
    auto_key: bool = False  # move by octaves into the speaker's range


@dataclass
class ConversionResult:
    output: Path
    seconds: float  # length of the sung audio
    sample_rate: int
    engine: str
    melody: Melody
    info: dict = field(default_factory=dict)


def resolve_engine(engine: str) -> str:
    """The engine that will run for ``--engine`` (``auto`` picks the best one installed)."""
    if engine not in ENGINES:
        raise AlignSTSError(f"--engine {engine}: use one of {', '.join(ENGINES)}")
    if engine == "alignsts":
        raise AlignSTSError(
            "the AlignSTS neural engine is not part of this version yet; use --engine psola (the default)"
        )
    return "psola"


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise AlignSTSError(f"--device {device}: use auto, cpu or cuda")
    return device


def load_speech(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Speech as mono float32 at its own rate (within 8-48 kHz), checked for length and silence."""
    from alignsts_cli.audio import check_speech, load_audio, resample

    audio, sr = load_audio(path, what="speech")
    if sr > MAX_WORK_SR:
        audio, sr = resample(audio, sr, MAX_WORK_SR), MAX_WORK_SR
    elif sr < MIN_WORK_SR:
        audio, sr = resample(audio, sr, MIN_WORK_SR), MIN_WORK_SR
    check_speech(audio, sr, path)
    return audio, sr


def prepare_for_voice(melody: Melody, options: MelodyOptions, speech_median_hz: float) -> Melody:
    """Apply tempo / transpose / auto-key and check the melody suits this voice."""
    from alignsts_cli.melody import prepare_melody

    m = prepare_melody(
        melody,
        transpose=options.transpose,
        tempo=options.tempo,
        auto_key_hz=speech_median_hz if options.auto_key else None,
    )
    gap = m.median_midi() - float(hz_to_midi(speech_median_hz))
    if abs(gap) > MAX_RANGE_GAP:
        where = "above" if gap > 0 else "below"
        raise AlignSTSError(
            f"{melody.source}: the melody sits {abs(gap):.0f} semitones {where} this voice (speech around "
            f"{speech_median_hz:.0f} Hz, melody around {440 * 2 ** ((m.median_midi() - 69) / 12):.0f} Hz); "
            "add --auto-key to move it by octaves, or --transpose"
        )
    return m


def convert(
    speech: str | os.PathLike,
    melody: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: str = "auto",
    melody_options: MelodyOptions | None = None,
    vibrato: float = 0.0,
    device: str = "auto",
    seed: int | None = None,
    plot: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ConversionResult:
    """Sing the words of ``speech`` to ``melody`` and write the result to ``output``.

    ``melody`` is a MIDI file, an F0 CSV or a reference singing recording. The output
    (WAV or FLAC by extension) is written atomically; inputs are never overwritten,
    an existing output only with ``overwrite``. ``plot``: a PNG of the target melody
    against the sung F0. ``device`` and ``seed`` are for the neural engine (psola is
    deterministic and runs on the CPU).
    """
    from alignsts_cli.audio import save_audio
    from alignsts_cli.engines import psola
    from alignsts_cli.files import check_output_path
    from alignsts_cli.melody import load_melody

    options = melody_options or MelodyOptions()
    name = resolve_engine(engine)
    check_device(device)
    inputs = (speech, melody)
    out = check_output_path(output, inputs=inputs, overwrite=overwrite, suffixes=(".wav", ".flac"))
    if plot is not None:
        check_output_path(plot, inputs=inputs + (out,), overwrite=overwrite, suffixes=(".png",))
    step = progress or (lambda stage, frac: None)

    step("reading the melody", 0.0)
    raw = load_melody(
        melody,
        options.kind,
        track=options.track,
        channel=options.channel,
        pitch_bend=options.pitch_bend,
        f0_units=options.f0_units,
        confidence=options.confidence,
    )
    step("reading the speech", 0.05)
    audio, sr = load_speech(speech)
    step("analysing the speech", 0.1)
    analysis = psola.analyse_speech(audio, sr)
    target = prepare_for_voice(raw, options, analysis.median_f0)
    step("singing", 0.2)
    song, info = psola.sing(
        audio,
        sr,
        target,
        psola.PsolaSettings(vibrato_cents=vibrato),
        analysis=analysis,
        progress=lambda done, total: step("singing", 0.2 + 0.7 * done / total),
    )
    step("writing", 0.9)
    save_audio(out, song, sr, overwrite=overwrite, inputs=inputs)
    info.update(target.info)
    if plot is not None:
        from alignsts_cli.plot import plot_conversion

        plot_conversion(plot, audio, sr, song, target, analysis, overwrite=overwrite)
    step("done", 1.0)
    return ConversionResult(out, len(song) / sr, sr, name, target, info)


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
    midi: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> F0Result:
    """F0 of a sung recording to a CREPE-format CSV (``ref.f0.csv`` by default).

    Optionally also the notes as a MIDI file and a PNG of the F0 over a spectrogram.
    """
    from alignsts_cli import melody as mel
    from alignsts_cli.audio import load_audio, loudest_dbfs, SILENCE_DBFS
    from alignsts_cli.files import check_output_path

    floor = mel.SINGING_F0_FLOOR if floor is None else floor
    ceiling = mel.SINGING_F0_CEILING if ceiling is None else ceiling
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
    f0, conf = mel.extract_f0(audio, sr, hop=hop, floor=floor, ceiling=ceiling)
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
