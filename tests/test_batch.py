"""The batch rules (alignsts_cli/batch.py): pairing, and what run_jobs does with each job, for Python callers."""
from pathlib import Path

from alignsts_cli.batch import Job, find_jobs, run_jobs
from alignsts_cli.errors import AlignSTSError


class _Result:
    seconds = 1.5
    info = {}


class FakeConverter:
    """Stands in for api.Converter: fails one named speech file, crashes on another, sings the rest."""

    def __init__(self, fail=(), crash_at=None):
        self.fail, self.crash_at, self.asked = set(fail), crash_at, []

    def convert_many(self, jobs, *, overwrite=False, **options):
        for speech, melody, output in jobs:
            self.asked.append(Path(speech).name)
            if Path(speech).name == self.crash_at:
                raise RuntimeError("boom")
            if Path(speech).name in self.fail:
                yield (speech, melody, output), AlignSTSError(f"{speech}: too short")
            elif Path(speech).name == "bug.wav":
                yield (speech, melody, output), KeyError("x")
            elif Path(speech).name == "low.wav":
                moved = _Result()
                moved.info = {"notices": ["note: m.mid sits 24 semitones above where this voice sings; ..."]}
                yield (speech, melody, output), moved
            else:
                yield (speech, melody, output), _Result()


def _jobs(tmp_path, names, melody=True):
    out = []
    for n in names:
        out.append(Job(tmp_path / n, tmp_path / "m.mid" if melody else None, tmp_path / "out" / n))
    return out


def test_missing_melody_fails_and_finished_outputs_are_skipped(tmp_path):
    jobs = _jobs(tmp_path, ["a.wav", "b.wav"]) + _jobs(tmp_path, ["c.wav"], melody=False)
    jobs[1].output.parent.mkdir(parents=True)
    jobs[1].output.write_bytes(b"done before")
    conv = FakeConverter()
    seen = []
    outcomes = run_jobs(conv, jobs, progress=seen.append)
    assert [o.status for o in outcomes] == ["ok", "skipped", "failed"]
    assert conv.asked == ["a.wav"]  # neither the finished one nor the one without a melody is converted
    assert "no melody found (looked for c.mid" in outcomes[2].note
    assert outcomes[0].seconds == 1.5 and len(seen) == 3
    again = run_jobs(FakeConverter(), jobs, overwrite=True)
    assert [o.status for o in again] == ["ok", "ok", "failed"]


def test_one_failure_never_stops_the_rest(tmp_path):
    jobs = _jobs(tmp_path, ["a.wav", "short.wav", "bug.wav", "d.wav"])
    outcomes = run_jobs(FakeConverter(fail={"short.wav"}), jobs)
    assert [o.status for o in outcomes] == ["ok", "failed", "failed", "ok"]
    assert outcomes[1].note.endswith("too short")
    assert outcomes[2].note.startswith("internal error (KeyError")


def test_a_crash_reports_the_files_not_yet_done(tmp_path):
    jobs = _jobs(tmp_path, ["a.wav", "b.wav", "c.wav"])
    outcomes = run_jobs(FakeConverter(crash_at="b.wav"), jobs)
    assert [o.status for o in outcomes] == ["ok", "failed", "failed"]
    assert all("RuntimeError: boom" in o.note for o in outcomes[1:])


def test_pairs_by_stem_and_by_manifest(tmp_path):
    for n in ("take1.wav", "take1.mid", "take2.wav"):
        (tmp_path / n).write_bytes(b"")
    jobs = find_jobs(tmp_path, tmp_path / "out")
    assert [(j.speech.name, j.melody.name if j.melody else None) for j in jobs] == [
        ("take1.wav", "take1.mid"), ("take2.wav", None)]
    (tmp_path / "pairs.csv").write_text("speech,melody\n# a comment\ntake2.wav,take1.mid,sung/two.wav\n")
    (job,) = find_jobs(tmp_path, tmp_path / "out")
    assert job.melody == tmp_path / "take1.mid" and job.output == tmp_path / "out" / "sung" / "two.wav"


def test_what_convert_would_note_is_in_the_batch_row(tmp_path):
    jobs = _jobs(tmp_path, ["low.wav", "a.wav"])
    by = {o.job.speech.name: o for o in run_jobs(FakeConverter(), jobs)}
    assert by["low.wav"].status == "ok" and "24 semitones above" in by["low.wav"].note
    assert str(jobs[0].output) in by["low.wav"].note
    assert by["a.wav"].note == ""


# ---------------------------------------------------------------------------------------------
# Shards (--shard I/N) and their merged report
# ---------------------------------------------------------------------------------------------

def test_shard_parse_and_stable_partition(tmp_path):
    import pytest

    from alignsts_cli.batch import take_shard
    from alignsts_cli.shards import Shard

    assert Shard.parse("2/3") == Shard(2, 3) and Shard.parse(" 1 / 1 ").name == "1-of-1"
    for bad, why in [("0/3", "count from 1"), ("4/3", "1 to 3"), ("2", "give I/N"), ("a/b", "give I/N"),
                     ("1/0", "must be 1 to")]:
        with pytest.raises(AlignSTSError, match=why):
            Shard.parse(bad)
    names = [f"sub/take{i:02d}.wav" for i in range(40)]
    here = [Job(tmp_path / "in" / n, None, tmp_path / "out" / n) for n in names]
    elsewhere = [Job(Path("/mnt/x/in") / n, None, Path("/mnt/x/out") / n) for n in reversed(names)]  # another machine
    parts = [take_shard(here, tmp_path / "out", Shard(i, 3)) for i in (1, 2, 3)]
    there = [take_shard(elsewhere, "/mnt/x/out", Shard(i, 3)) for i in (1, 2, 3)]
    assert sorted(len(p) for p in parts) != [0, 0, 40] and sum(len(p) for p in parts) == 40
    for mine, theirs in zip(parts, there):  # the same files, whatever the folder's place or the listing order
        assert sorted(j.speech.name for j in mine) == sorted(j.speech.name for j in theirs)
    grown = here + [Job(tmp_path / "in" / "new.wav", None, tmp_path / "out" / "new.wav")]
    for i, part in enumerate(parts, 1):  # adding a file moves no other
        assert set(map(id, part)) <= set(map(id, take_shard(grown, tmp_path / "out", Shard(i, 3))))


def test_twenty_files_in_three_shards_run_at_once_into_one_folder(tmp_path):
    """Three processes, one folder: every output made once, none twice, and the merged report counts 20."""
    import json
    import subprocess
    import sys

    import soundfile as sf

    examples = Path(__file__).resolve().parents[1] / "examples"
    audio, sr = sf.read(examples / "speech.wav")
    (tmp_path / "in").mkdir()
    for i in range(20):
        sf.write(tmp_path / "in" / f"take{i:02d}.wav", audio[: int(1.5 * sr)], sr)
    out = tmp_path / "out"
    run = [sys.executable, "-m", "alignsts_cli", "batch", str(tmp_path / "in"), "-m", str(examples / "melody.mid"),
           "-o", str(out), "--engine", "psola"]
    procs = [subprocess.Popen(run + ["--shard", f"{i}/3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2, 3)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert sorted(p.name for p in out.glob("*.wav")) == [f"take{i:02d}.wav" for i in range(20)]
    reports = [json.loads((out / "batch-reports" / f"{i}-of-3.json").read_text()) for i in (1, 2, 3)]
    converted = [row["key"] for r in reports for row in r["outcomes"] if row["status"] == "ok"]
    assert sorted(converted) == [f"take{i:02d}.wav" for i in range(20)]  # each once: no file sung twice
    assert all(r["jobs_total"] == 20 for r in reports)
    merged = subprocess.run(run[:5] + ["-o", str(out), "--report"], capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    assert "20 converted, 0 skipped, 0 failed" in merged.stdout
    assert "20 of the 20 files listed have their song" in merged.stdout
    (out / "batch-reports" / "2-of-3.json").unlink()  # a shard that has not run yet: said, and rc 1
    missing = subprocess.run(run[:5] + ["-o", str(out), "--report"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no report yet from shard 2/3" in missing.stderr
