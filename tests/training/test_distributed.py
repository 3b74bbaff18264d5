"""Training on several processes (training/distributed.py, train.py): torchrun with gloo on the CPU.

Two ranks must make the same run as one process with the same global batch and seed: the same loss at
every step and the same weights, one log and one set of checkpoints (rank 0's), and a run started on
two processes resumes on one with its step count and optimizer state. The items of the toy cache are
all of one length, so the split of a batch changes no loss normalisation and the match is exact up to
float rounding; dropout is off (each rank draws its own dropout masks, as any DDP run does).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import load_model
from alignsts_cli.training import distributed
from alignsts_cli.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import TINY_MODEL, write_cache  # noqa: E402

torch.set_num_threads(1)
NO_DROPOUT = dict(predictor_dropout=0.0, aligner_dropout=0.0, attn_dropout=0.0, ffn_dropout=0.0)


def one_length_cache(root: Path) -> Path:
    """The toy cache of test_train with every item cut to the shortest item's lengths."""
    write_cache(root, n_train=10, n_valid=2, seed=3)
    records = json.loads((root / "items.json").read_text())
    arrays = {r["id"]: dict(np.load(root / "items" / f"{r['id']}.npz")) for r in records}
    shortest = {k: min(len(a[k]) for a in arrays.values()) for k in next(iter(arrays.values())) if k not in
                ("speaker", "sing_speaker")}
    shortest["f0"] = shortest["mel"]
    for r in records:
        a = {k: (v[:shortest[k]] if k in shortest else v) for k, v in arrays[r["id"]].items()}
        np.savez(root / "items" / f"{r['id']}.npz", **a)
        r.update(frames=shortest["mel"], content_frames=shortest["content"],
                 sing_content_frames=shortest["sing_content"])
    (root / "items.json").write_text(json.dumps(records))
    return root


def config(steps: int) -> TrainConfig:
    return TrainConfig(model={**TINY_MODEL, **NO_DROPOUT}, steps=steps, batch_size=4, lr=3e-3, warmup=2,
                       log_every=1, valid_every=3, ckpt_every=3, n_samples=0, valid_max_items=2, vocoder=None,
                       seed=0, num_threads=1, device="cpu")


def losses(run: Path) -> dict[int, dict]:
    with open(run / "log.csv", newline="") as f:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if k not in ("step", "time")}
                for r in csv.DictReader(f)}


def files(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())


def torchrun(cache: Path, run: Path, cfg: Path, nproc: int, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alignsts_cli", "train", str(cache), "-o", str(run), "-c", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "ALIGNSTS_DIST_TIMEOUT": "120", **env})


def test_two_ranks_train_as_one_process_and_resume_on_one(tmp_path):
    cache = one_length_cache(tmp_path / "cache")
    cfg_file = tmp_path / "six.json"
    config(6).save(cfg_file)
    single = train(cache, tmp_path / "single", config(6))
    assert single["world_size"] == 1 and single["step"] == 6

    proc = torchrun(cache, tmp_path / "ddp", cfg_file, 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on 2 processes (gloo), 2 of the 4 items of each step per process" in proc.stdout
    assert proc.stdout.count("trained to step 6") == 1  # rank 0 speaks for the run
    one, two = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(two) == list(range(1, 7))
    for step in one:
        for term in ("l1", "ssim", "vq", "rhythm_ce", "guided_attn", "total", "grad_norm"):
            assert two[step][term] == pytest.approx(one[step][term], rel=2e-4, abs=1e-6), (step, term)
    assert one[6]["total"] < one[1]["total"]  # it learns: the match is not of two idle runs
    # one log, one valid log, one set of checkpoints: what a single process writes, no file per rank
    assert files(tmp_path / "ddp") == files(tmp_path / "single")
    for name, w in load_model(tmp_path / "single" / "checkpoints" / "step_6").state_dict().items():
        got = load_model(tmp_path / "ddp" / "checkpoints" / "step_6").state_dict()[name]
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-5, msg=name)

    # Resume the two-process run on one process, to step 9: the step count and the optimizer go on,
    # as the one-process run resumed to step 9 does.
    nine = train(cache, tmp_path / "ddp", config(9))
    assert nine["resumed_from"] == 6 and nine["world_size"] == 1
    train(cache, tmp_path / "single", config(9))
    one, two = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(two) == list(range(1, 10))
    for step in (7, 8, 9):
        assert two[step]["total"] == pytest.approx(one[step]["total"], rel=2e-4), step
    fresh_optimizer = losses(tmp_path / "single")  # (a resumed run with a new optimizer would differ at once)
    assert fresh_optimizer[7]["lr"] == two[7]["lr"]


def test_accumulation_is_the_same_step(tmp_path):
    """Two micro-batches of 2 make the update of one batch of 4 (with the official codebook start: the
    data-seeded one, vq_data_init, seeds from the first micro-batch only)."""
    cache = one_length_cache(tmp_path / "cache")
    official_start = {**config(3).to_dict(), "model": {**TINY_MODEL, **NO_DROPOUT, "vq_data_init": False}}
    train(cache, tmp_path / "whole", TrainConfig(**official_start))
    train(cache, tmp_path / "parts", TrainConfig(**{**official_start, "accumulate": 2}))
    whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    for step in (1, 2, 3):
        assert parts[step]["total"] == pytest.approx(whole[step]["total"], rel=2e-4), step


def test_bfloat16_autocast_trains_on_the_cpu(tmp_path):
    cache = one_length_cache(tmp_path / "cache")
    res = train(cache, tmp_path / "bf16", TrainConfig(**{**config(2).to_dict(), "precision": "bfloat16"}))
    assert res["precision"] == "bfloat16" and np.isfinite(res["losses"]["total"])
    with pytest.raises(AlignSTSError, match="float16 needs a CUDA GPU"):
        train(cache, tmp_path / "fp16", TrainConfig(**{**config(2).to_dict(), "precision": "float16"}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_half_set_up_environment_says_what_is_missing(tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AlignSTSError, match="RANK, MASTER_ADDR, MASTER_PORT are not set; start every rank with torchrun"):
        distributed.join("cpu")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(AlignSTSError, match="RANK=2 is outside 0..1"):
        distributed.join("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.join("cpu") == distributed.World()  # one process: nothing to join


def test_a_rank_that_cannot_reach_the_others_exits_with_one_line(tmp_path):
    cache = one_length_cache(tmp_path / "cache")
    cfg = tmp_path / "c.json"
    config(2).save(cfg)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "ALIGNSTS_DIST_TIMEOUT": "4"}
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "train", str(cache), "-o", str(tmp_path / "r"),
                           "-c", str(cfg)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "rank 1 of 2 could not join the others at 127.0.0.1:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()
