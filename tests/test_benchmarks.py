"""benchmarks/run.py runs and reports every figure the README's speed table quotes (values are not
asserted: timings on shared machines are for reading, not for tests)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_reports_every_stage(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--engine", "psola", "--seconds", "2", "--repeats", "1",
         "--batch", "2", "--memory-seconds", "2", "--threads", "1", "--cold-start", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["threads"] == 1 and "psola" in r["engine"] and r["machine"]
    (row,) = r["lengths"]
    assert row["seconds"] == 2 and abs(row["output_seconds"] - 2) < 0.6
    for key in ("rtf_total", "rtf_loading", "rtf_f0", "rtf_psola", "rtf_writing"):
        assert row[key] >= 0, key
    assert row["rtf_total"] >= row["rtf_psola"]
    assert r["batch"]["files"] == 2 and r["batch"]["singing_seconds_per_second"] > 0
    (mem,) = r["memory"]
    assert mem["peak_rss_mb"] > 50 and mem["seconds"] == 2
    assert "real-time factor" in proc.stdout and "peak RSS" in proc.stdout
    assert r["cpu"]["model"] and r["cpu"]["cores"] >= 1 and isinstance(r["cpu"]["features"], list)
    cold = r["cold_start"]
    assert cold["help_seconds"] > 0 and cold["first_convert_seconds"] > 0
    for stage in ("interpreter", "imports", "converter", "convert", "convert.f0", "convert.psola"):
        assert cold["stages"][stage] >= 0, stage
    assert "where a fresh process's first convert goes" in proc.stdout


def test_benchmark_times_the_world_engine(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--engine", "world", "--seconds", "2", "--repeats", "1",
         "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["lengths"]
    assert row["rtf_world"] > 0 and row["rtf_total"] >= row["rtf_world"]
