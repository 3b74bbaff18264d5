"""The pitch trackers of reference singing (``--f0-method``) on sung audio with known notes, scored
against Praat's figures: the default (SwiftF0) must be at least as accurate, with no octave errors, and
must follow a bass below Praat's floor."""
import importlib.util
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from alignsts_cli import melody as M
from alignsts_cli.cli import app
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.training.metrics import tracker_scores

from conftest import REPO

_spec = importlib.util.spec_from_file_location("f0_trackers", REPO / "benchmarks" / "f0_trackers.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
SR = bench.SR


@pytest.fixture(scope="module")
def material():
    """Six melodies (three male, three female) with vibrato, glides and rests, clean and in a noisy room."""
    return bench.own_material(n_voices=len(bench.VOICES), n_notes=6)


def _scores(material, method):
    return [tracker_scores(f0, M.extract_f0(x, SR, method=method)[0]) for _, _, x, f0 in material]


def test_tracker_scores_reads_what_it_says():
    truth = np.r_[np.zeros(10), np.full(50, 200.0), np.zeros(10)]
    assert tracker_scores(truth, truth)["raw_pitch"] == 1.0
    s = tracker_scores(truth, 2 * truth)
    assert s["raw_pitch"] == 0.0 and s["octave_errors"] == 1.0 and s["recall"] == 1.0
    s = tracker_scores(truth, np.where(truth > 0, truth * 2 ** (30 / 1200), 150.0))
    assert s["raw_pitch"] == 1.0 and s["false_alarm"] == 1.0
    assert tracker_scores(truth, np.zeros_like(truth))["recall"] == 0.0


def test_swift_is_at_least_as_accurate_as_praat_on_singing(material):
    swift, praat = _scores(material, "swift"), _scores(material, "praat")
    pool = lambda s, k: sum(x[k] * x["frames"] for x in s) / sum(x["frames"] for x in s)
    print("swift", pool(swift, "raw_pitch"), "praat", pool(praat, "raw_pitch"))
    assert pool(swift, "raw_pitch") >= 0.97
    assert pool(swift, "raw_pitch") >= pool(praat, "raw_pitch") - 0.005
    assert pool(swift, "octave_errors") <= 0.005
    assert max(s["false_alarm"] for s, (g, *_) in zip(swift, material) if g == "clean") <= 0.02


def test_swift_follows_a_bass_below_praats_floor():
    rng = np.random.default_rng(5)
    notes = [(36, 0.6), (38, 0.5), (None, 0.3), (40, 0.6), (35, 0.8), (37, 0.5)]  # 62-82 Hz
    f0, spans = bench.sung_contour(notes, rng)
    x = bench.sing(f0, spans, rng)
    swift = tracker_scores(f0, M.extract_f0(x, SR, method="swift")[0])
    praat = tracker_scores(f0, M.extract_f0(x, SR, method="praat")[0])
    assert swift["raw_pitch"] >= 0.95 and swift["octave_errors"] <= 0.01
    assert praat["raw_pitch"] < 0.6  # its 80 Hz floor: the reason the default is not Praat


def test_reference_melody_and_extract_f0_take_the_method(tmp_path):
    rng = np.random.default_rng(2)
    f0, spans = bench.sung_contour([(36, 0.6), (38, 0.6), (40, 0.6), (36, 0.8)], rng)
    ref = tmp_path / "bass.wav"
    sf.write(ref, bench.sing(f0, spans, rng), SR)
    mel = M.load_melody(ref)
    assert mel.info["f0_method"] == M.REFERENCE_F0_METHOD == "swift"
    assert [round(n.pitch) for n in mel.notes] == [36, 38, 40, 36]
    assert len(M.load_melody(ref, f0_method="praat").notes) < 4

    runner = CliRunner()
    for method in ("swift", "praat"):
        out = tmp_path / f"{method}.csv"
        r = runner.invoke(app, ["extract-f0", str(ref), "-o", str(out), "--f0-method", method])
        assert r.exit_code == 0, r.output
        assert out.read_text().startswith("time,frequency,confidence")
    r = runner.invoke(app, ["extract-f0", str(ref), "-o", str(tmp_path / "x.csv"), "--f0-method", "yin"])
    assert r.exit_code == 1 and "--f0-method yin: use one of swift, praat" in r.output
    assert not (tmp_path / "x.csv").exists()


def test_a_missing_swift_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(M, "_SWIFT", None)
    monkeypatch.setitem(sys.modules, "swift_f0", None)
    with pytest.raises(AlignSTSError, match="pip install swift-f0.*--f0-method praat"):
        M.extract_f0(np.zeros(SR, np.float32), SR, method="swift")
