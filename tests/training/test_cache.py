"""The prepared cache (alignsts_cli/training/cache.py): prepare, resume, the reader and its torch batches."""
import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from alignsts_cli.training import cache as C
from alignsts_cli.training import corpus as corpus_maker
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.features import content_frames
from alignsts_cli.melody import extract_f0, load_midi
from alignsts_cli.profiles import get_profile



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    if corpus_maker.shutil.which("festival") is None:
        pytest.fail("Festival is not installed; run `bash scripts/install-festival.sh`")
    corpus_maker.make_corpus(out, seed=1, voices=4, sentences=4, melodies=3, items=6)
    # One more item whose speech is silent: prepare must leave it out and say why.
    sf.write(out / "speech" / "silent.wav", np.zeros(16000, np.float32), 16000)
    with open(out / "manifest.csv", newline="") as fh:
        train = next(r for r in csv.DictReader(fh) if r["split"] == "train")
    with open(out / "manifest.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["zz-silent", train["speaker"], "speech/silent.wav", train["singing"],
                                 "nothing", train["song"], "train", ""])
    return out


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def cache(corpus, tmp_path_factory):
    """Prepared in two runs: the first is interrupted after two items, the second resumes."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    seen = []

    def stop_after_two(done, total, item_id):
        seen.append(item_id)
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        C.prepare(corpus, out, progress=stop_after_two)
    assert len(list((out / "items").glob("*.npz"))) == 2
    assert not list((out / "items").glob(".*"))  # no partial files left behind
    assert not (out / "items.json").exists()
    with pytest.raises(AlignSTSError, match="unfinished"):
        C.read_cache(out)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "items").glob("*.npz")}
    calls = []
    res = C.prepare(corpus, out, progress=lambda d, t, i: calls.append((d, t, i)))
    assert res.reused == 2 and res.computed == 4 and res.items == 6  # + 1 failed
    assert [c[2] for c in calls[:2]] == seen and calls[-1][:2] == (7, 7)
    assert {p: (out / "items" / p).stat().st_mtime_ns for p in first} == first  # done items not redone
    assert res.failed and res.failed[0][0] == "zz-silent" and "silent" in res.failed[0][1]
    return out


def test_cache_json_and_items(cache, corpus):
    c = C.read_cache(cache)
    info, items = c.info, c.items
    for key, value in {"format": "alignsts-cache", "version": 1, "profile": "compact-16k", "content_kind": "mfcc",
                       "content_dim": 20, "speaker_dim": 256, "items": 6}.items():
        assert info[key] == value
    assert info["source"] == str(corpus.resolve())
    assert info["failed"][0]["id"] == "zz-silent"
    assert len(items) == 6 and {it["split"] for it in items} == {"train", "valid", "test"}
    with open(corpus / "manifest.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    for it in items:
        r = rows[it["id"]]
        fields = ("speaker", "song", "text", "split")
        assert [it[k] for k in fields] == [r["lyrics" if k == "text" else k] for k in fields]
        assert it["singing"] == str(corpus / r["singing"]) and it["speech"] == str(corpus / r["speech"])


def test_item_arrays(cache, corpus):
    p = get_profile("compact-16k")
    c = C.read_cache(cache)
    _, items = c.info, c.items
    for it in items:
        with np.load(cache / "items" / f"{it['id']}.npz") as z:
            a = {k: z[k] for k in z.files}
        assert set(a) == set(C.ITEM_ARRAYS) and all(v.dtype == np.float32 for v in a.values())
        sing, sr = sf.read(it["singing"], dtype="float32")
        speech, _ = sf.read(it["speech"], dtype="float32")
        assert sr == p.sample_rate
        T = p.num_frames(len(sing))
        assert a["mel"].shape == (T, 80) and a["f0"].shape == (T,) and it["frames"] == T
        assert a["speech_mel"].shape == (p.num_frames(len(speech)), 80)
        assert a["content"].shape == (content_frames(len(speech) / sr), 20) == (it["content_frames"], 20)
        assert a["sing_content"].shape == (content_frames(len(sing) / sr), 20) == (it["sing_content_frames"], 20)
        for key in ("speaker", "sing_speaker"):
            assert a[key].shape == (256,) and np.linalg.norm(a[key]) == pytest.approx(1.0, abs=1e-3)
        assert np.all(np.isfinite(a["mel"])) and a["mel"].min() >= p.log_floor - 1e-4
        # F0 on the mel grid: f0[t] is the pitch at t·hop, so the middle of every note carries its pitch.
        assert np.array_equal(a["f0"], extract_f0(sing, sr, hop=0.01)[0][:T].astype(np.float32))
        notes = load_midi(corpus / "melody" / f"{it['id']}.mid").notes
        t = np.arange(T) * p.hop_length / p.sample_rate
        voiced_share = []
        for n in notes:
            sel = (t > n.start + 0.3 * n.duration) & (t < n.end - 0.3 * n.duration)
            voiced = a["f0"][sel][a["f0"][sel] > 0]
            voiced_share.append(len(voiced) / max(sel.sum(), 1))
            if len(voiced) >= 3:  # consonants take part of the short notes
                assert abs(1200 * np.log2(np.median(voiced) / (440 * 2 ** ((n.pitch - 69) / 12)))) < 30
        assert np.mean(voiced_share) > 0.7
        assert np.all(a["f0"][t < 0.05] == 0)  # the silent lead-in is unvoiced


def test_prepare_refuses_other_settings(cache, corpus):
    with pytest.raises(AlignSTSError, match="content_dim 20, not 13"):
        C.prepare(corpus, cache, content_dim=13)


def test_dataset_and_collate(cache):
    p = get_profile("compact-16k")
    c = C.read_cache(cache)
    _, items = c.info, c.items
    ds = C.CacheDataset(cache, "train")
    want = [it for it in items if it["split"] == "train"]
    assert len(ds) == len(want) >= 2
    s = ds[0]
    assert s["id"] == want[0]["id"] and s["mel"].shape == (want[0]["frames"], 80)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=ds.collate)
    b = next(iter(loader))
    B = len(ds)
    frames = torch.tensor([it["frames"] for it in want])
    assert torch.equal(b["lengths"], frames)
    assert torch.equal(b["content_lengths"], torch.tensor([it["content_frames"] for it in want]))
    assert torch.equal(b["sing_content_lengths"], torch.tensor([it["sing_content_frames"] for it in want]))
    assert torch.equal(b["speech_lengths"], torch.tensor([it["speech_frames"] for it in want]))
    assert b["mel"].shape == (B, int(frames.max()), 80) and b["f0"].shape == (B, int(frames.max()))
    assert b["content"].shape == (B, int(b["content_lengths"].max()), 20)
    assert b["speaker"].shape == b["sing_speaker"].shape == (B, 256)
    assert b["speech_mel"].shape == (B, int(b["speech_lengths"].max()), 80)
    assert b["ids"] == [it["id"] for it in want]
    short = int(frames.argmin())
    n = int(frames[short])
    assert torch.equal(b["mel"][short, :n], ds[short]["mel"])
    if n < b["mel"].shape[1]:
        assert torch.all(b["mel"][short, n:] == p.log_floor) and torch.all(b["f0"][short, n:] == 0)
    assert len(C.CacheDataset(cache, ["valid", "test"])) == len(items) - len(want)
    assert len(C.CacheDataset(cache, "train", max_frames=int(frames.min()))) == int((frames == frames.min()).sum())
    with pytest.raises(AlignSTSError, match="unknown split"):
        C.CacheDataset(cache, "dev")


def test_load_cache_errors(tmp_path, cache):
    with pytest.raises(AlignSTSError, match="not a prepared cache"):
        C.read_cache(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / "items" / f"{C.read_cache(cache).items[0]['id']}.npz").unlink()
    with pytest.raises(AlignSTSError, match="run `alignsts prepare` again"):
        C.CacheDataset(broken, ["train", "valid", "test"])[0]


def test_shards_and_workers_fill_one_cache_at_once(cache, corpus, tmp_path):
    """Two machines' shards at once (one with two worker processes), then one run finishes the cache:
    the same cache, file for file, as one process made."""
    import json
    import subprocess
    import sys

    from alignsts_cli.shards import Shard

    out = tmp_path / "c2"
    run = [sys.executable, "-m", "alignsts_cli", "prepare", str(corpus), "-o", str(out), "--device", "cpu"]
    ids = [it["id"] for it in C.read_cache(cache).items] + ["zz-silent"]
    assert all(any(Shard(i, 2).holds(x) for x in ids) for i in (1, 2))  # both shards have work
    procs = [subprocess.Popen(run + ["--shard", "1/2", "--workers", "2"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True),
             subprocess.Popen(run + ["--shard", "2/2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "finish the cache once" in logs[0] and not (out / "items.json").exists()
    with pytest.raises(AlignSTSError, match="unfinished"):
        C.read_cache(out)
    done = subprocess.run(run + ["--workers", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 computed, 6 already done" in done.stdout and "left out zz-silent" in done.stderr
    assert json.loads((out / "items.json").read_text()) == json.loads((cache / "items.json").read_text())
    for name in ids[:-1]:
        with np.load(cache / "items" / f"{name}.npz") as a, np.load(out / "items" / f"{name}.npz") as b:
            for key in C.ITEM_ARRAYS:
                np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5, err_msg=f"{name} {key}")


def test_workers_compute_the_same_items(cache, corpus, tmp_path):
    res = C.prepare(corpus, tmp_path / "c3", workers=2)
    assert res.computed == 6 and res.reused == 0 and [f[0] for f in res.failed] == ["zz-silent"]
    assert json.loads((tmp_path / "c3" / "items.json").read_text()) == json.loads((cache / "items.json").read_text())
    with pytest.raises(AlignSTSError, match="--workers 0"):
        C.prepare(corpus, tmp_path / "c4", workers=0)
    assert not (tmp_path / "c4").exists()  # refused before anything was written
