"""The command line as a user runs it: real processes, exit codes, stderr, files on disk."""
import os
import subprocess
import sys

import mido
import numpy as np
import soundfile as sf

from conftest import EXAMPLES, vowel, write_midi

SPEECH = EXAMPLES / "speech.wav"
MELODY = EXAMPLES / "melody.mid"


def run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "ALIGNSTS_DEBUG"}
    return subprocess.run([sys.executable, "-m", "alignsts_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def one_line_error(proc):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("alignsts: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def test_help_and_version():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("convert", "batch", "download-weights", "extract-f0"):
        assert cmd in proc.stdout
    assert run("--version").stdout.startswith("alignsts ")


def _readme_first_convert() -> list[str]:
    """The `alignsts convert ...` of the README's first command (the quick start's first bash block)."""
    import re
    import shlex

    readme = (EXAMPLES.parent / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    command = next(part for part in block.split("&&") if part.strip().startswith("alignsts convert"))
    return shlex.split(command)[2:]  # what follows `alignsts convert`


def test_readme_first_command_sings_with_the_engine_the_scorecard_chose(tmp_path):
    """The README's first command, as written (run from the repository root): psola, the scorecard's choice."""
    args = _readme_first_convert()
    assert "--engine" not in args and "sung.wav" in args
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNSTS_DEBUG", "ALIGNSTS_WEIGHTS_LOCK")}
    args = [str(tmp_path / "sung.wav") if a == "sung.wav" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "convert", *args], capture_output=True, text=True,
                          cwd=EXAMPLES.parent, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "psola engine" in proc.stdout and not proc.stderr, proc.stdout + proc.stderr
    x, sr = sf.read(tmp_path / "sung.wav")
    assert sr == sf.info(SPEECH).samplerate  # psola sings at the speech's own rate
    assert abs(len(x) / sr - mido.MidiFile(MELODY).length) < 0.05 * mido.MidiFile(MELODY).length


def test_convert_bundled_example(tmp_path):
    """--engine alignsts reaches the bundled AlignSTS voice, offline, with no weights downloaded."""
    out, png = tmp_path / "sung.wav", tmp_path / "sung.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "no-hf"), ALIGNSTS_HOME=str(tmp_path / "home"))
    env.pop("ALIGNSTS_WEIGHTS_LOCK", None)
    env.pop("ALIGNSTS_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "convert", str(SPEECH), "--melody", str(MELODY),
                           "-o", str(out), "--plot", str(png), "--engine", "alignsts"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "AlignSTS engine" in proc.stdout and "(bundled)" in proc.stdout and not proc.stderr, proc.stdout + proc.stderr
    x, sr = sf.read(out)
    assert sr == 16000
    mel = mido.MidiFile(MELODY)
    assert abs(len(x) / sr - mel.length) < 0.05 * mel.length
    assert np.sqrt(np.mean(x ** 2)) > 0.01
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second run refuses to overwrite, then replaces with --overwrite.
    before = out.read_bytes()
    assert "already exists" in one_line_error(run("convert", SPEECH, "-m", MELODY, "-o", out, "--engine", "alignsts"))
    assert out.read_bytes() == before
    assert run("convert", SPEECH, "-m", MELODY, "-o", out, "--overwrite", "--transpose", "2",
               "--engine", "alignsts").returncode == 0
    assert out.read_bytes() != before


def test_flac_output_and_default_name(tmp_path):
    speech = tmp_path / "talk.wav"
    speech.write_bytes(SPEECH.read_bytes())
    assert run("convert", speech, "-m", MELODY, "-o", tmp_path / "o.flac").returncode == 0
    assert sf.info(tmp_path / "o.flac").format == "FLAC"
    assert run("convert", speech, "-m", MELODY).returncode == 0
    assert (tmp_path / "talk-sung.wav").exists()


def _bad_inputs(tmp_path):
    d = tmp_path
    (d / "empty.wav").write_bytes(b"")
    (d / "trunc.wav").write_bytes(SPEECH.read_bytes()[:20000])
    (d / "corrupt.wav").write_bytes(os.urandom(5000))
    sf.write(d / "silent.wav", np.zeros(32000), 16000)
    sf.write(d / "short.wav", vowel(150, 0.2), 16000)
    nonotes = mido.MidiFile()
    nonotes.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)]))
    nonotes.save(str(d / "nonotes.mid"))
    write_midi(d / "drums.mid", [(0, 1, 36), (1, 1, 38)], channel=9)
    write_midi(d / "long.mid", [(0, 1200, 48)])  # 10 minutes at 120 bpm
    write_midi(d / "high.mid", [(0, 1, 100), (1, 1, 102)])  # ~2.6-3 kHz
    (d / "garbage.csv").write_text("this,is\nnot,numbers\n")
    (d / "nan.csv").write_text("time,frequency\n0.0,nan\n0.01,nan\n")
    (d / "fake.mid").write_text("time,f0\n0,220\n")
    return {
        "missing speech": (["convert", d / "nope.wav", "-m", MELODY], "no such file"),
        "empty speech": (["convert", d / "empty.wav", "-m", MELODY], "empty"),
        "truncated speech": (["convert", d / "trunc.wav", "-m", MELODY], "truncated"),
        "corrupt speech": (["convert", d / "corrupt.wav", "-m", MELODY], "cannot be read as audio"),
        "silent speech": (["convert", d / "silent.wav", "-m", MELODY], "silent"),
        "short speech": (["convert", d / "short.wav", "-m", MELODY], "at least 0.3 s"),
        "missing melody": (["convert", SPEECH, "-m", d / "nope.mid"], "no such MIDI file"),
        "midi without notes": (["convert", SPEECH, "-m", d / "nonotes.mid"], "no notes"),
        "midi of drums": (["convert", SPEECH, "-m", d / "drums.mid"], "only drum notes"),
        "10-minute melody": (["convert", SPEECH, "-m", d / "long.mid"], "split the song"),
        # As written, with --exact-octave (by default it is sung 4 octaves lower, in the voice's range).
        "melody too high": (["convert", SPEECH, "-m", d / "high.mid", "--exact-octave"], "leave out --exact-octave"),
        "melody far from the voice": (["convert", SPEECH, "-m", MELODY, "--transpose", "30"], "after transposing by +30"),
        "garbage csv": (["convert", SPEECH, "-m", d / "garbage.csv"], "not numbers"),
        "nan csv": (["convert", SPEECH, "-m", d / "nan.csv"], "no voiced frames"),
        "wrong kind": (["convert", SPEECH, "-m", d / "fake.mid"], "not a valid MIDI"),
        "unknown melody type": (["convert", SPEECH, "-m", d / "x.xyz"], "no such"),
        "bad engine": (["convert", SPEECH, "-m", MELODY, "--engine", "magic"], "--engine"),
        "bad tempo": (["convert", SPEECH, "-m", MELODY, "--tempo", "0"], "--tempo"),
        "bad precision": (["convert", SPEECH, "-m", MELODY, "--precision", "half"], "--precision"),
        "bad threads": (["convert", SPEECH, "-m", MELODY, "--threads", "0"], "--threads"),
    }


def test_bad_input_gives_one_line_and_no_output(tmp_path):
    cases = _bad_inputs(tmp_path)
    for name, (args, expected) in cases.items():
        out = tmp_path / "out" / f"{name.replace(' ', '_')}.wav"
        line = one_line_error(run(*args, "-o", out))
        assert expected in line, f"{name}: {line}"
        assert not out.exists(), name
    leftovers = [p for p in (tmp_path / "out").rglob("*")] if (tmp_path / "out").exists() else []
    assert leftovers == []  # no partial or temporary files either


def test_unwritable_output_and_input_protection(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert "cannot write" in one_line_error(run("convert", SPEECH, "-m", MELODY, "-o", blocker / "o.wav"))
    copy = tmp_path / "speech.wav"
    copy.write_bytes(SPEECH.read_bytes())
    line = one_line_error(run("convert", copy, "-m", MELODY, "-o", copy, "--overwrite"))
    assert "never overwritten" in line and copy.read_bytes() == SPEECH.read_bytes()


def test_extract_f0_round_trip(tmp_path):
    sr = 22050
    ref = tmp_path / "ref.wav"
    sf.write(ref, np.concatenate([vowel(147, 0.6, sr), np.zeros(sr // 5), vowel(196, 0.6, sr)]), sr)
    proc = run("extract-f0", ref, "--midi", tmp_path / "ref.mid", "--plot", tmp_path / "ref.png")
    assert proc.returncode == 0, proc.stderr
    csv = tmp_path / "ref.f0.csv"
    assert csv.read_text().splitlines()[0] == "time,frequency,confidence"
    notes = [m.note for m in mido.MidiFile(tmp_path / "ref.mid") if m.type == "note_on" and m.velocity]
    assert notes == [50, 55]  # D3, G3
    assert (tmp_path / "ref.png").stat().st_size > 1000
    # The CSV is a melody the converter accepts, and the result follows it.
    out = tmp_path / "sung.wav"
    assert run("convert", SPEECH, "-m", csv, "-o", out).returncode == 0
    x, out_sr = sf.read(out)
    assert abs(len(x) / out_sr - 1.4) < 0.07
    assert "already exists" in one_line_error(run("extract-f0", ref))
    assert run("extract-f0", ref, "--hop", "0.005", "-o", tmp_path / "fine.csv").returncode == 0
    assert len((tmp_path / "fine.csv").read_text().splitlines()) > 1.8 * len(csv.read_text().splitlines())


def test_extract_f0_bad_input(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(16000), 16000)
    assert "silent" in one_line_error(run("extract-f0", tmp_path / "s.wav"))
    assert not (tmp_path / "s.f0.csv").exists()


def test_download_weights_lists_the_lock(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNSTS_WEIGHTS_LOCK", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "download-weights", "--list"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "facebook/wav2vec2-base-960h" in proc.stdout and "missing" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "download-weights"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr


def _batch_folder(tmp_path):
    d = tmp_path / "takes"
    (d / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        (d / f"{name}.wav").write_bytes(SPEECH.read_bytes())
    write_midi(d / "a.mid", [(0, 1, 48), (1, 1, 50)])
    write_midi(d / "sub" / "c.mid", [(0, 2, 52)])
    return d


def test_batch_pairs_by_stem_and_keeps_going(tmp_path):
    d = _batch_folder(tmp_path)
    sf.write(d / "broken.wav", np.zeros(16000), 16000)
    write_midi(d / "broken.mid", [(0, 1, 48)])
    proc = run("batch", d, "-o", tmp_path / "out")
    assert proc.returncode == 1  # b has no melody, broken is silent
    assert (tmp_path / "out" / "a.wav").exists() and (tmp_path / "out" / "sub" / "c.wav").exists()
    assert not (tmp_path / "out" / "b.wav").exists() and not (tmp_path / "out" / "broken.wav").exists()
    assert "2 converted, 0 skipped, 2 failed" in " ".join(proc.stdout.split())
    assert "no melody found" in proc.stdout and "silent" in proc.stdout
    # Finished outputs are skipped on the next run unless --overwrite.
    again = run("batch", d, "-o", tmp_path / "out")
    assert "0 converted, 2 skipped, 2 failed" in " ".join(again.stdout.split())
    forced = run("batch", d, "-o", tmp_path / "out", "--overwrite")
    assert "2 converted, 0 skipped" in " ".join(forced.stdout.split())


def test_batch_one_melody_for_all_and_manifest(tmp_path):
    d = _batch_folder(tmp_path)
    proc = run("batch", d, "--melody", MELODY, "--no-recursive")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "takes-sung"
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]
    (d / "pairs.csv").write_text("speech,melody,output\na.wav,sub/c.mid,first.wav\nsub/c.wav,a.mid,\n")
    proc = run("batch", d, "-o", tmp_path / "m")
    assert proc.returncode == 0, proc.stdout
    assert (tmp_path / "m" / "first.wav").exists() and (tmp_path / "m" / "sub" / "c.wav").exists()
    x, sr = sf.read(tmp_path / "m" / "first.wav")
    assert abs(len(x) / sr - 1.0) < 0.05  # two beats of sub/c.mid at 120 bpm


def test_batch_bad_folder(tmp_path):
    assert "no such folder" in one_line_error(run("batch", tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "no audio files" in one_line_error(run("batch", tmp_path / "empty"))


def test_help_shows_the_defaults_written_in_brackets():
    # rich reads "[...]" as markup and drops it unless escaped
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "alignsts_cli", "convert", "--help"], capture_output=True, text=True,
                         env=env, timeout=120).stdout
    assert "[default: SPEECH-sung.wav]" in out and "[default: the tune, see alignsts inspect]" in out
    out = subprocess.run([sys.executable, "-m", "alignsts_cli", "extract-f0", "--help"], capture_output=True,
                         text=True, env=env, timeout=120).stdout
    assert "--f0-method" in out and "default: 50 with swift" in out
