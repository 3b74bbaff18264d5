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
