"""The local web page: ``alignsts web`` (Gradio, the ``web`` extra), over the same API as the CLI.

Upload or record speech, give a melody (a file, or one of the bundled tunes), pick the part of a
multi-track score and the engine and melody options, press Convert; the song plays on the page, downloads
as WAV or FLAC, and the picture the CLI writes with ``--plot`` is shown with the figures that need no
reference (pitch and chroma accuracy against the melody, speaker similarity to the speech).

Safe to leave running: it binds 127.0.0.1 unless told otherwise; uploads are limited in size
(:data:`MAX_UPLOAD_MB`) and length (:data:`MAX_SPEECH_SECONDS`; melodies as for ``convert``); every file
lives under one temporary folder, removed when the server stops, in a fresh folder per conversion; file
names from the browser are never used as paths; conversions run one at a time from a queue
(:data:`QUEUE_SIZE` waiting), and the engines are loaded once for the process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from alignsts_cli.errors import AlignSTSError

MAX_UPLOAD_MB = 50
MAX_SPEECH_SECONDS = 120.0
QUEUE_SIZE = 16
ENGINES = ("auto", "psola", "world", "alignsts")
FORMATS = ("wav", "flac")
NO_TUNE = "(my own melody file)"
#: Public-domain tunes, as (MIDI pitch, beats) at 100 beats per minute; 0 is a rest.
TUNES = {
    "Twinkle, Twinkle, Little Star": [(60, 1), (60, 1), (67, 1), (67, 1), (69, 1), (69, 1), (67, 2),
                                      (65, 1), (65, 1), (64, 1), (64, 1), (62, 1), (62, 1), (60, 2)],
    "Ode to Joy": [(64, 1), (64, 1), (65, 1), (67, 1), (67, 1), (65, 1), (64, 1), (62, 1),
                   (60, 1), (60, 1), (62, 1), (64, 1), (64, 1.5), (62, 0.5), (62, 2)],
    "Frère Jacques": [(60, 1), (62, 1), (64, 1), (60, 1), (60, 1), (62, 1), (64, 1), (60, 1),
                      (64, 1), (65, 1), (67, 2), (64, 1), (65, 1), (67, 2)],
}
TUNE_BPM = 100


def write_tune(name: str, path: Path) -> Path:
    """One of :data:`TUNES` as a one-track MIDI file."""
    import mido

    ticks = 480
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(TUNE_BPM)),
                            mido.MetaMessage("track_name", name=name)])
    rest = 0
    for pitch, beats in TUNES[name]:
        length = int(beats * ticks)
        if pitch == 0:
            rest += length
            continue
        track.append(mido.Message("note_on", note=pitch, velocity=80, time=rest))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=length))
        rest = 0
    midi = mido.MidiFile(ticks_per_beat=ticks)
    midi.tracks.append(track)
    midi.save(path)
    return path


class Workspace:
    """The server's one temporary folder: uploads (Gradio's cache), the tunes, a folder per conversion."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="alignsts-web-", dir=root))
        self.uploads = self.root / "uploads"
        self.jobs = self.root / "jobs"
        for folder in (self.uploads, self.jobs, self.root / "tunes"):
            folder.mkdir()
        self.tunes = {name: write_tune(name, self.root / "tunes" / f"tune{k}.mid") for k, name in enumerate(TUNES)}

    def job(self) -> Path:
        folder = self.jobs / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def inside(self, path: str | os.PathLike) -> Path:
        """``path`` resolved, refused unless it lies in this workspace (what the page hands us is checked)."""
        p = Path(path).resolve()
        if self.root.resolve() not in p.parents:
            raise AlignSTSError("that file is not one this page was given; upload it again")
        return p

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Song:
    """What one conversion gives the page."""

    audio: Path  # the song as WAV (the page's player)
    download: Path  # in the format asked for
    picture: Path | None
    figures: str  # Markdown: the figures that need no reference
    status: str  # one line
    result: object = None  # the api.ConversionResult


class Studio:
    """Conversions for the page: engines loaded once (one Converter per engine), one conversion at a time."""

    def __init__(self, workspace: Workspace, *, device: str = "auto"):
        self.workspace, self.device = workspace, device
        self._converters: dict[str, object] = {}
        self._lock = threading.Lock()

    def converter(self, engine: str):
        from alignsts_cli import api

        if engine not in self._converters:
            self._converters[engine] = api.Converter(engine, device=self.device)
        return self._converters[engine]

    def convert(self, speech: str | None, melody: str | None, tune: str, *, engine: str = "auto",
                track: str = "auto", transpose: float = 0.0, auto_key: bool = False, exact_octave: bool = False,
                tempo: float = 1.0, vibrato: float | None = None, seed: int | None = None, fmt: str = "wav",
                progress=None) -> Song:
        """Sing ``speech`` (an uploaded path) to ``melody`` (an uploaded path) or the bundled ``tune``."""
        from alignsts_cli import api

        if not speech:
            raise AlignSTSError("no speech: upload a recording or record one with the microphone")
        speech_path = self.workspace.inside(speech)
        if tune and tune != NO_TUNE:
            if tune not in self.workspace.tunes:
                raise AlignSTSError(f"no bundled tune called {tune!r}; pick one from the list")
            melody_path = self.workspace.tunes[tune]
        elif melody:
            melody_path = self.workspace.inside(melody)
        else:
            raise AlignSTSError("no melody: upload a MIDI, MusicXML, F0 CSV or singing file, or pick a bundled tune")
        seconds = _seconds(speech_path)
        if seconds > MAX_SPEECH_SECONDS:
            raise AlignSTSError(f"the speech lasts {seconds:.0f} s; this page takes up to {MAX_SPEECH_SECONDS:.0f} s "
                                "(cut it, or use `alignsts convert` for longer files)")
        if engine not in ENGINES or fmt not in FORMATS:
            raise AlignSTSError(f"choose an engine from {', '.join(ENGINES)} and a format from {', '.join(FORMATS)}")
        channel = None
        track_name = None
        if track and track != "auto":
            track_name, _, ch = track.partition(":")
            channel = int(ch) if ch and ch != "-" else None
        options = api.MelodyOptions(track=track_name, channel=channel, transpose=float(transpose),
                                    auto_key=bool(auto_key), exact_octave=bool(exact_octave), tempo=float(tempo))
        job = self.workspace.job()
        song, picture = job / "song.wav", job / "song.png"
        step = (lambda stage, frac: progress(frac, desc=stage)) if progress is not None else None
        with self._lock:  # the queue runs one conversion at a time; the lock keeps it so for Python callers too
            result = self.converter(engine).convert(
                speech_path, melody_path, song, melody_options=options, vibrato=vibrato,
                seed=None if seed is None else int(seed), plot=picture, progress=step)
        download = song
        if fmt == "flac":
            from alignsts_cli.audio import load_audio, save_audio

            audio, sr = load_audio(song)
            download = save_audio(job / "song.flac", audio, sr)
        figures = self.figures(speech_path, song, result)
        status = (f"sang {result.seconds:.1f} s with the {result.engine} engine"
                  + "".join(f"; {n}" for n in result.info.get("notices", [])))
        return Song(song, download, picture if picture.exists() else None, figures, status, result)

    @staticmethod
    def figures(speech: Path, song: Path, result) -> str:
        """Pitch and chroma accuracy against the melody and speaker similarity to the speech, as Markdown."""
        from alignsts_cli.audio import load_audio
        from alignsts_cli.training.metrics import melody_accuracy, speaker_similarity

        sung, sr = load_audio(song)
        speech_audio, speech_sr = load_audio(speech)
        lines = ["| figure | value |", "|---|---:|"]
        try:
            acc = melody_accuracy(sung, sr, result.melody)
            lines += [f"| pitch accuracy (frames within 50 cents of the melody) | {acc['raw_pitch_accuracy']:.3f} |",
                      f"| chroma accuracy (octaves forgiven) | {acc['raw_chroma_accuracy']:.3f} |"]
        except ValueError:
            lines.append("| pitch accuracy | - (the melody has no note to judge) |")
        sim = speaker_similarity(speech_audio, sung, speech_sr, output_sr=sr)
        lines.append(f"| speaker similarity to the speech (Resemblyzer cosine) | {sim:.3f} |")
        return "\n".join(lines)

    def tracks(self, melody: str | None) -> tuple[list[str], list[list], str]:
        """The track choices, the ``inspect`` table and its notes of a score (MIDI, MusicXML)."""
        from alignsts_cli import api
        from alignsts_cli.melody import melody_kind

        if not melody:
            return ["auto"], [], ""
        path = self.workspace.inside(melody)
        if melody_kind(path) not in ("midi", "musicxml"):
            return ["auto"], [], "not a score: nothing to choose"
        rows, notes = api.inspect_melody(path)
        choices = ["auto"] + [f"{r['track']}:{r['channel'] or '-'}" for r in rows]
        table = [[r["track"], r["channel"] or "-", r["name"] or "-", r["notes"], f"{r['low']}-{r['high']}",
                  round(r["seconds"], 1), round(r["score"], 1), "sung" if r["default"] else ""] for r in rows]
        return choices, table, "\n".join(notes)


def _seconds(path: Path) -> float:
    """The length a sound file's header gives (0 when it has none: ``convert`` then says what is wrong)."""
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # unreadable or not audio: the conversion reports it in its own words
        return 0.0


def build(studio: Studio, max_upload_mb: float = MAX_UPLOAD_MB):
    """The page (a ``gradio.Blocks``)."""
    import gradio as gr

    def convert(speech, melody, tune, engine, track, transpose, auto_key, exact_octave, tempo, vibrato, seed, fmt,
                progress=gr.Progress()):
        try:
            song = studio.convert(speech, melody, tune, engine=engine, track=track, transpose=transpose,
                                  auto_key=auto_key, exact_octave=exact_octave, tempo=tempo,
                                  vibrato=None if vibrato is None or vibrato < 0 else vibrato,
                                  seed=None if seed is None or seed < 0 else seed, fmt=fmt, progress=progress)
        except AlignSTSError as exc:
            return None, None, None, "", f"**error:** {exc}"
        except Exception as exc:  # a bug: one line, never a traceback on the page
            return None, None, None, "", f"**error:** internal error ({type(exc).__name__}: {exc}); please report it"
        return (str(song.audio), str(song.download), str(song.picture) if song.picture else None, song.figures,
                song.status)

    def tracks(melody):
        try:
            choices, table, notes = studio.tracks(melody)
        except AlignSTSError as exc:
            return gr.update(choices=["auto"], value="auto"), [], f"**error:** {exc}"
        return gr.update(choices=choices, value="auto"), table, notes

    with gr.Blocks(title="alignsts: speech to singing") as page:
        gr.Markdown("# alignsts: your speech, sung\nGive a recording of speech and a melody; the song keeps your "
                    f"voice and your words. Uploads: up to {max_upload_mb:g} MB; speech up to "
                    f"{MAX_SPEECH_SECONDS:.0f} s; melodies up to 6 min.")
        with gr.Row():
            with gr.Column():
                speech = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech",
                                  elem_id="speech")
                melody = gr.File(label="Melody file (MIDI, MusicXML, F0 CSV or singing)", type="filepath",
                                 elem_id="melody")
                tune = gr.Dropdown([NO_TUNE, *TUNES], value=NO_TUNE, label="...or a bundled tune", elem_id="tune")
                track = gr.Dropdown(["auto"], value="auto", label="Part to sing (track:channel)", elem_id="track")
                parts = gr.Dataframe(headers=["track", "ch", "name", "notes", "range", "ends at s", "score", ""],
                                     label="Parts of the score (best first)", interactive=False)
                part_notes = gr.Markdown()
            with gr.Column():
                engine = gr.Dropdown(list(ENGINES), value="auto", label="Engine", elem_id="engine")
                transpose = gr.Slider(-24, 24, value=0, step=1, label="Transpose (semitones)")
                auto_key = gr.Checkbox(label="Auto key (move by octaves to the voice)")
                exact_octave = gr.Checkbox(label="Exact octave (never move the melody)")
                tempo = gr.Slider(0.25, 4, value=1.0, step=0.05, label="Tempo (2 = twice as fast)")
                vibrato = gr.Number(value=-1, label="Vibrato depth in cents (-1: the engine's default)")
                seed = gr.Number(value=-1, precision=0, label="Seed (neural engine; -1: fixed default)")
                fmt = gr.Radio(list(FORMATS), value="wav", label="Download as")
                button = gr.Button("Convert", variant="primary", elem_id="convert")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            song = gr.Audio(label="Song", type="filepath", interactive=False, elem_id="song")
            download = gr.File(label="Download", interactive=False, elem_id="download")
        picture = gr.Image(label="Speech and song, F0 against the notes, the syllable-to-note plan", type="filepath",
                           interactive=False, elem_id="picture")
        figures = gr.Markdown(elem_id="figures")
        melody.change(tracks, melody, [track, parts, part_notes])
        button.click(convert, [speech, melody, tune, engine, track, transpose, auto_key, exact_octave, tempo,
                               vibrato, seed, fmt], [song, download, picture, figures, status],
                     concurrency_limit=1, concurrency_id="convert")
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return page


def is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port that is out of range or already taken (before any work)."""
    import socket

    if not 1 <= port <= 65535:
        raise AlignSTSError(f"--port {port}: give a port from 1 to 65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise AlignSTSError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another with --port, "
                            "or stop what uses it") from None


def serve(host: str = "127.0.0.1", port: int = 7860, *, device: str = "auto", max_upload_mb: float = MAX_UPLOAD_MB,
          ready=None) -> None:
    """Run the page until interrupted; the workspace is removed when it stops. ``ready(url)`` is called
    once it listens."""
    if not 0 < max_upload_mb <= 10_000:
        raise AlignSTSError(f"--max-upload-mb {max_upload_mb:g}: give a size above 0 and up to 10000 MB")
    check_port(host, port)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise AlignSTSError("the web page needs Gradio: pip install 'alignsts[web]'")
    workspace = Workspace()
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.uploads)  # before gradio is imported: uploads land here
    try:
        page = build(Studio(workspace, device=device), max_upload_mb)
        page.launch(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_mb * 1024 * 1024),
                    prevent_thread_lock=True, quiet=True, footer_links=[])
        if ready is not None:
            ready(page.local_url)
        page.block_thread()
    finally:
        workspace.remove()
