"""Hard inputs and faults, as a hostile user would try them: no hang, no internal error, no code run from a
checkpoint, no partial or stray file. One test per case; the readers are fuzzed in tests/test_fuzz.py."""
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import mido
import numpy as np
import pytest

from alignsts_cli import api, files
from alignsts_cli.batch import Job, run_jobs
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import load_f0_csv, load_melody, notes_from_contour

from test_cli import one_line_error, run

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "speech.wav"
MELODY = ROOT / "examples" / "melody.mid"


def raw_midi(path: Path, division: int, track: bytes = b"") -> Path:
    """A one-track MIDI file written byte by byte (``division`` as the header's signed 16 bits), so that values
    no MIDI library would write can be tried. The default track: middle C for 480 ticks."""
    track = track or b"\x00\x90\x3c\x40" + b"\x83\x60\x80\x3c\x00" + b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHh", 6, 0, 1, division) + b"MTrk" + struct.pack(">I", len(track))
                     + track)
    return path


def bounded(fn, *, megabytes: float = 64.0):
    """Run ``fn`` and check it allocated at most ``megabytes`` at its peak (numpy arrays included)."""
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < megabytes * 1e6, f"peak {peak / 1e6:.0f} MB"


# --------------------------------------------------------------------------- 1. hangs and huge allocations

@pytest.mark.parametrize("rows", ["0,220\n0.01,220\n100000,220\n", "0,220\n10000000,220\n", "0,220\n0.5,220\n1e300,220\n"])
def test_a_tiny_csv_that_ends_far_away_is_refused_before_any_work(tmp_path, rows):
    path = tmp_path / "far.csv"
    path.write_text("time,f0\n" + rows)
    with pytest.raises(AlignSTSError, match=r"far.csv: the melody lasts .* more than the 6 min"):
        bounded(lambda: load_f0_csv(path))


def test_a_midi_note_of_2_to_the_28_ticks_is_refused_before_it_is_rendered(tmp_path):
    mid = mido.MidiFile(ticks_per_beat=480)
    mid.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, velocity=64, time=0),
                                      mido.Message("note_off", note=60, velocity=0, time=2**28)]))
    mid.save(str(tmp_path / "long.mid"))
    assert (tmp_path / "long.mid").stat().st_size < 64
    with pytest.raises(AlignSTSError, match=r"long.mid: the melody lasts 4660 min"):
        bounded(lambda: load_melody(tmp_path / "long.mid"))


def test_a_long_csv_is_segmented_in_linear_time(tmp_path):
    # An hour of 50 ms steps between three pitches: every step is a glide to join. The running median over
    # whole notes made this quadratic (a 63-byte file with a last time of 1e5 s hung for over 25 minutes).
    steps = np.tile(np.repeat([0.0, 2.0, 0.0, -2.0], 5), 18000)
    f0 = 220.0 * 2.0 ** (steps / 12.0)
    t0 = time.perf_counter()
    notes = bounded(lambda: notes_from_contour(f0), megabytes=200)
    assert notes and time.perf_counter() - t0 < 120  # about 2 s here; the quadratic version took hours


def test_a_thick_chord_is_reduced_to_its_top_line_in_linear_time():
    from alignsts_cli.melody import Note, skyline

    # 20,000 notes sounding at once (60 kB of MIDI): a pass over all sounding notes at every note edge took
    # minutes; a heap takes a fraction of a second.
    chord = [Note(i * 1e-4, 300.0, 40.0 + i % 60) for i in range(20000)]
    t0 = time.perf_counter()
    line = skyline(chord)
    assert time.perf_counter() - t0 < 20
    assert line[-1].pitch == 99.0 and line[-1].end == 300.0


def test_an_hour_long_recording_header_is_refused_before_decoding(tmp_path):
    import soundfile as sf

    path = tmp_path / "hours.flac"  # an hour and a minute of silence: small as FLAC, 700 MB as samples
    with sf.SoundFile(str(path), "w", samplerate=8000, channels=1, format="FLAC") as fh:
        block = np.zeros(8000 * 60, dtype=np.float32)
        for _ in range(61):
            fh.write(block)
    from alignsts_cli.audio import load_audio

    with pytest.raises(AlignSTSError, match="hours.flac: lasts 61 min, more than the 60 min"):
        bounded(lambda: load_audio(path))


# --------------------------------------------------------------------------- 2. bad values

def test_zero_ticks_per_beat_is_a_user_error(tmp_path):
    line = one_line_error(run("convert", SPEECH, "-m", raw_midi(tmp_path / "tpb0.mid", 0), "-o", tmp_path / "o.wav"))
    assert "tpb0.mid: the header gives 0 ticks per beat" in line


def test_smpte_timed_midi_is_read(tmp_path):
    # -25 frames per second, 40 ticks per frame: 480 ticks are 0.48 s, whatever the tempo says.
    melody = load_melody(raw_midi(tmp_path / "smpte.mid", -(25 << 8) + 40))
    assert len(melody.notes) == 1 and melody.notes[0].pitch == 60
    assert melody.notes[0].end == pytest.approx(0.48)


def test_set_tempo_zero_is_a_user_error(tmp_path):
    track = b"\x00\xff\x51\x03\x00\x00\x00" + b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00\x00\xff\x2f\x00"
    with pytest.raises(AlignSTSError, match="tempo0.mid: track 0 sets a tempo of 0 at tick 0"):
        load_melody(raw_midi(tmp_path / "tempo0.mid", 480, track))


def test_notes_too_short_to_sing_are_a_user_error(tmp_path):
    from alignsts_cli.melody import prepare_melody

    track = b"\x00\xff\x51\x03\x00\x00\x01" + b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00\x00\xff\x2f\x00"  # 1 µs a beat
    melody = load_melody(raw_midi(tmp_path / "fast.mid", 480, track))
    with pytest.raises(AlignSTSError, match="fast.mid: the notes last only 0.01 s in all, too short to sing"):
        prepare_melody(melody)


def test_a_csv_wholly_before_time_zero_is_a_user_error(tmp_path):
    (tmp_path / "neg.csv").write_text("-1e300,1\n")  # found by the 10,000-example fuzz run
    with pytest.raises(AlignSTSError, match="neg.csv: every row is before time 0"):
        load_f0_csv(tmp_path / "neg.csv")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_csv_time_that_is_not_finite_names_the_line(tmp_path, value):
    path = tmp_path / "t.csv"
    path.write_text(f"time,f0\n0,220\n0.5,220\n{value},220\n")
    with pytest.raises(AlignSTSError, match="t.csv: line 4 has no valid time"):
        load_f0_csv(path)


@pytest.mark.parametrize("option,value,says", [
    ("--transpose", "nan", "--transpose nan: give semitones from -48 to 48"),
    ("--transpose", "inf", "--transpose inf: give semitones"),
    ("--vibrato", "1e9", "--vibrato 1000000000.0: give a depth in cents from 0 to 200"),
    ("--vibrato", "inf", "--vibrato inf: give a depth"),
    ("--vibrato", "nan", "--vibrato nan: give a depth"),
    ("--vibrato", "-1e9", "--vibrato -1000000000.0: give a depth"),
    ("--seed", str(2**64), f"--seed {2**64}: use a whole number from 0 to 2^64-1"),
    ("--tempo", "nan", "--tempo nan: use a factor between 0.1 and 10"),
    ("--confidence", "nan", "--confidence nan: use a value from 0 to 1"),
])
def test_options_out_of_range_are_refused_before_any_work(tmp_path, option, value, says):
    with pytest.raises(AlignSTSError) as err:
        kwargs = {"vibrato": float(value)} if option == "--vibrato" else {"seed": int(value)} if option == "--seed" else {}
        names = {"--transpose": "transpose", "--tempo": "tempo", "--confidence": "confidence"}
        options = api.MelodyOptions(**({names[option]: float(value)} if option in names else {}))
        # No such speech file: the options must be refused first.
        api.Converter("psola").convert(tmp_path / "none.wav", MELODY, tmp_path / "o.wav", melody_options=options,
                                       **kwargs)
    assert says in str(err.value)


def test_option_errors_from_the_command_line_are_one_line(tmp_path):
    for args in (("--transpose", "nan"), ("--vibrato", "inf"), ("--engine", "alignsts", "--seed", str(2**70))):
        assert args[-2] in one_line_error(run("convert", SPEECH, "-m", MELODY, *args, "-o", tmp_path / "o.wav"))
    assert not (tmp_path / "o.wav").exists()


def test_a_batch_with_a_bad_option_fails_once_not_per_file(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        (tmp_path / "in" / f"{name}.wav").write_bytes(SPEECH.read_bytes())
    line = one_line_error(run("batch", tmp_path / "in", "--melody", MELODY, "--vibrato", "nan", "-o", tmp_path / "out"))
    assert line.startswith("alignsts: error: --vibrato nan")
    assert not any((tmp_path / "out").glob("*.wav"))


def test_download_weights_lock_that_is_binary_or_a_folder(tmp_path):
    (tmp_path / "bin.lock").write_bytes(bytes(range(256)) * 4)
    assert "bin.lock: cannot be read as a weights.lock (not a text file)" in one_line_error(
        run("download-weights", "--lock", tmp_path / "bin.lock"))
    (tmp_path / "dir.lock").mkdir()
    assert "dir.lock: is a folder" in one_line_error(run("download-weights", "--lock", tmp_path / "dir.lock"))
    assert "no.lock: no such weights.lock; check the path" in one_line_error(
        run("download-weights", "--lock", tmp_path / "no.lock"))


def test_an_archive_with_a_link_to_an_absolute_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNSTS_HOME", str(tmp_path / "home"))
    with tarfile.open(tmp_path / "release.tar", "w") as tf:
        entry = tarfile.TarInfo("checkpoints/link")
        entry.type, entry.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(entry)
    line = one_line_error(run("import-checkpoint", tmp_path / "release.tar"))
    assert "release.tar: the archive holds an unsafe entry" in line and "absolute path" in line
    import zipfile

    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("README.txt", "no checkpoint here")
    assert "empty.zip: the archive holds no .ckpt checkpoint" in one_line_error(
        run("import-checkpoint", tmp_path / "empty.zip"))
    whole = (tmp_path / "empty.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[:30] + whole[-22:])  # the central directory points at nothing
    assert "cut.zip: the archive is damaged" in one_line_error(run("import-checkpoint", tmp_path / "cut.zip"))


# --------------------------------------------------------------------------- 3. pickles run no code

class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("ALIGNSTS_HOME", str(tmp_path / "home"))
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {"model": {}}, "hook": _Shell(marker)}, tmp_path / "evil.ckpt")
    line = one_line_error(run("import-checkpoint", tmp_path / "evil.ckpt"))
    assert "evil.ckpt: the checkpoint holds a Python object beyond tensors and numbers (posix.system)" in line
    assert not marker.exists()
    # The same file in the authors' legacy format, and as their vocoder.
    torch.save({"state_dict": {"model_gen": {}}, "x": _Shell(marker)}, tmp_path / "v.ckpt",
               _use_new_zipfile_serialization=False)
    from alignsts_cli.model.foreign import load_official_nsf

    with pytest.raises(AlignSTSError, match="could run code when loaded, so it is refused"):
        load_official_nsf(tmp_path / "v.ckpt")
    assert not marker.exists()


def test_a_checkpoint_with_numpy_scalars_still_loads(tmp_path):
    import torch

    from alignsts_cli.model.foreign import load_pickle_checkpoint

    ckpt = {"global_step": 5, "checkpoint_callback_best": np.float64(0.25), "dtype": np.dtype("float32"),
            "optimizer_states": [{"param_groups": [{"lr": 0.1, "betas": (0.9, 0.98)}]}],
            "state_dict": {"model": {"w": torch.ones(2)}}}
    torch.save(ckpt, tmp_path / "ok.ckpt", _use_new_zipfile_serialization=False)
    back = load_pickle_checkpoint(tmp_path / "ok.ckpt", "checkpoint")
    assert back["checkpoint_callback_best"] == 0.25 and torch.equal(back["state_dict"]["model"]["w"], torch.ones(2))


# --------------------------------------------------------------------------- 4. damaged bundled weights

def test_damaged_bundled_weights_are_an_error_never_a_silent_fallback(tmp_path):
    from alignsts_cli import weights

    text = Path(weights.PACKAGE_LOCK).read_text()
    at = re.search(r'^sha256 = "', text, re.M).end()  # the first component's digest, one hex digit changed
    lock = tmp_path / "weights.lock"
    lock.write_text(text[:at] + ("1" if text[at] == "0" else "0") + text[at + 1:])
    env = {**os.environ, "ALIGNSTS_WEIGHTS_LOCK": str(lock)}
    env.pop("ALIGNSTS_DEBUG", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "alignsts_cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    listed = cli("download-weights", "--list")
    assert listed.returncode == 1 and "damaged" in listed.stderr and "corrupt" in listed.stdout
    neural = cli("convert", SPEECH, "-m", MELODY, "--engine", "alignsts", "-o", tmp_path / "n.wav")
    assert "do not match their sha256" in one_line_error(neural) and not (tmp_path / "n.wav").exists()
    # auto is psola, which reads no weights: it runs, and says which engine it ran.
    auto = cli("convert", SPEECH, "-m", MELODY, "-o", tmp_path / "a.wav")
    assert auto.returncode == 0 and "psola engine" in auto.stdout


# --------------------------------------------------------------------------- 5. signals during the write

_WRITER = """
import os, signal, sys, time
from alignsts_cli.cli import _terminated
from alignsts_cli.files import atomic_output
signal.signal(signal.SIGTERM, _terminated)
try:
    with atomic_output(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half a song")
        print("writing", flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_sigterm_during_the_write_leaves_nothing(tmp_path):
    proc = _writer(tmp_path / "song.wav")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_leftovers_are_removed_by_the_next_run_but_a_live_write_is_not(tmp_path):
    proc = _writer(tmp_path / "song.wav")
    live = _writer(tmp_path / "other.wav")
    proc.kill()
    proc.wait(timeout=30)
    left = list(tmp_path.glob(".song.wav.*.part"))
    assert len(left) == 1
    old = time.time() - 60
    for part in tmp_path.glob(".*.part"):
        os.utime(part, (old, old))
    files.check_output_path(tmp_path / "song.wav")
    files.check_output_path(tmp_path / "other.wav")
    assert not left[0].exists()
    assert len(list(tmp_path.glob(".other.wav.*.part"))) == 1  # its writer is alive and holds it
    live.kill()
    live.wait(timeout=30)


def test_sigterm_to_a_conversion_exits_130_with_no_output(tmp_path):
    # The world engine on a 20 s melody takes seconds; the signal lands while it sings.
    proc = subprocess.Popen([sys.executable, "-m", "alignsts_cli", "convert", SPEECH, "-m", MELODY, "--tempo", "0.5",
                             "--engine", "world", "-o", tmp_path / "o.wav"], stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal")
    assert proc.returncode == 130 and "interrupted" in err
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 6. two batches, one folder

def test_an_output_claimed_by_another_run_is_skipped_not_failed(tmp_path):
    out = tmp_path / "out"
    jobs = [Job(SPEECH, MELODY, out / "a.wav")]
    with files.claim(out / "a.wav"):  # another batch is converting it
        busy = subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; from alignsts_cli import api; from alignsts_cli.batch import Job, "
            "run_jobs; o = run_jobs(api.Converter('psola'), [Job(Path(sys.argv[1]), Path(sys.argv[2]), "
            "Path(sys.argv[3]))]); print(o[0].status, o[0].note)"), SPEECH, MELODY, out / "a.wav"],
            capture_output=True, text=True, timeout=300)
    assert busy.stdout.strip() == "skipped made by another run at the same time", busy.stderr
    assert not (out / "a.wav").exists() and not list(out.glob(".*"))
    # Finished by the other run after this one listed its jobs: skipped too.
    outcomes = run_jobs(_Finisher(), jobs)
    assert [o.status for o in outcomes] == ["skipped"]


class _Finisher(api.Converter):
    """A converter whose first job is written by "another run" just before it is claimed."""

    def __init__(self):
        super().__init__("psola")

    def convert_many(self, jobs, **options):
        Path(jobs[0][2]).parent.mkdir(parents=True, exist_ok=True)
        Path(jobs[0][2]).write_bytes(b"made elsewhere")
        return super().convert_many(jobs, **options)


def test_two_batches_into_one_folder_split_the_work(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"s{i}.wav").write_bytes(SPEECH.read_bytes())
    cmd = [sys.executable, "-m", "alignsts_cli", "batch", str(tmp_path / "in"), "--melody", str(MELODY),
           "-o", str(tmp_path / "out")]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    assert [r[2] for r in results] == [0, 0], results
    converted = sum(int(out.split(" converted")[0].split()[-1]) for out, _, _ in results)
    assert converted == 4 and all(" 0 failed" in out for out, _, _ in results)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"s{i}.wav" for i in range(4)]


# --------------------------------------------------------------------------- 7. messages

def test_messages_name_the_file_and_say_what_to_do(tmp_path):
    import soundfile as sf

    (tmp_path / "folder.wav").mkdir()
    line = one_line_error(run("convert", tmp_path / "folder.wav", "-m", MELODY, "-o", tmp_path / "o.wav"))
    assert "folder.wav: is a folder, not a speech file; give one of the files in it" in line
    sf.write(str(tmp_path / "hiss.wav"), np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 16000)
    line = one_line_error(run("convert", tmp_path / "hiss.wav", "-m", MELODY, "-o", tmp_path / "o.wav"))
    assert "hiss.wav: no voiced speech found" in line and "give a recording of someone speaking" in line
    (tmp_path / "empty.mid").write_bytes(b"")
    assert "empty.mid: the MIDI file is empty (0 bytes); export the melody again" in one_line_error(
        run("convert", SPEECH, "-m", tmp_path / "empty.mid", "-o", tmp_path / "o.wav"))
    (tmp_path / "empty.csv").write_text("\n\n")
    assert "empty.csv: the CSV is empty" in one_line_error(
        run("convert", SPEECH, "-m", tmp_path / "empty.csv", "-o", tmp_path / "o.wav"))
    (tmp_path / "header.csv").write_text("time,frequency\n")
    assert "header.csv: the CSV has a header but no rows of data; add rows" in one_line_error(
        run("convert", SPEECH, "-m", tmp_path / "header.csv", "-o", tmp_path / "o.wav"))
    assert "speech.wav: is a file, not a folder; `alignsts convert` sings one file" in one_line_error(
        run("batch", SPEECH))
    assert not (tmp_path / "o.wav").exists()


def test_no_error_message_says_an_before_a_consonant():
    for source in (ROOT / "alignsts_cli").rglob("*.py"):
        text = source.read_text()
        assert not re.search(r"\ban \{what\}", text), source
        assert not re.search(r"\ban (speech|melody|MIDI|CSV)\b", text), source

