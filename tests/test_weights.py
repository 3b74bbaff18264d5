"""weights.lock and the real download path, against a local Hub stand-in on 127.0.0.1."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub  # noqa: F401  (imported before any test sets HF_HUB_OFFLINE)
import pytest

from alignsts_cli import weights as W
from alignsts_cli.errors import AlignSTSError
from hub_server import FakeHub

REPO = "alignsts-test/tiny"
FILES = {"config.json": b'{"hidden": 8}', "model.safetensors": os.urandom(200_000)}


def lock_text(commit=None, pinned=True):
    lines = ["[[component]]", 'name = "acoustic"', f'repo = "{REPO}"']
    lines.append(f'revision = "{commit}"' if pinned else 'revision = "unpinned"')
    entries = []
    for name, data in FILES.items():
        if pinned:
            entries.append(f'{{ name = "{name}", sha256 = "{hashlib.sha256(data).hexdigest()}", size = {len(data)} }}')
        else:
            entries.append(f'{{ name = "{name}" }}')
    lines.append("files = [" + ", ".join(entries) + "]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.stop()


def _component(tmp_path, text):
    lock = tmp_path / "weights.lock"
    lock.write_text(text)
    (comp,) = W.read_lock(lock)
    return comp


def test_repository_lock_parses():
    for comp in W.read_lock(Path(__file__).resolve().parents[1] / "weights.lock"):
        assert comp.bundled or comp.repo


def test_download_verify_repair_offline(hub, tmp_path, monkeypatch):
    commit = hub.publish(REPO, FILES)
    comp = _component(tmp_path, lock_text(commit))
    cache = tmp_path / "cache"
    # convert never downloads: nothing cached yet gives the command to run.
    with pytest.raises(AlignSTSError, match="alignsts download-weights"):
        W.resolve(comp, cache_dir=cache)
    seen = []
    res = W.resolve(comp, cache_dir=cache, download=True, progress=lambda d, t, label: seen.append((d, t)))
    assert res.revision == commit
    assert {n: p.read_bytes() for n, p in res.files.items()} == FILES
    assert hub.downloads[(REPO, "model.safetensors")] == 1
    assert seen and seen[-1][0] == seen[-1][1] > 0  # the progress callback saw the bytes arrive
    assert W.status(comp, cache).state == "present"

    # A corrupted cache file is detected, and download-weights repairs it (one more GET).
    blob = Path(os.path.realpath(res.files["model.safetensors"]))
    blob.write_bytes(b"garbage" + FILES["model.safetensors"][7:])
    assert W.status(comp, cache).state == "corrupt"
    with pytest.raises(AlignSTSError, match="corrupt"):
        W.resolve(comp, cache_dir=cache)
    res = W.resolve(comp, cache_dir=cache, download=True)
    assert res.files["model.safetensors"].read_bytes() == FILES["model.safetensors"]
    assert hub.downloads[(REPO, "model.safetensors")] == 2

    # Offline, served from the cache; the server is not asked.
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = W.resolve(comp, cache_dir=cache, download=True)
    assert res.files["config.json"].read_bytes() == FILES["config.json"]
    # Offline with an empty cache: the right message.
    with pytest.raises(AlignSTSError, match="HF_HUB_OFFLINE is set"):
        W.resolve(comp, cache_dir=tmp_path / "empty-cache", download=True)


def test_changed_file_on_the_hub_is_refused(hub, tmp_path):
    commit = hub.publish(REPO, FILES)
    comp = _component(tmp_path, lock_text(commit))
    hub.tamper[(REPO, "model.safetensors")] = os.urandom(200_000)
    with pytest.raises(AlignSTSError, match="does not match its sha256"):
        W.resolve(comp, cache_dir=tmp_path / "c", download=True)
    assert hub.downloads[(REPO, "model.safetensors")] == 2  # fetched again once, then refused
    leftovers = [p for p in (tmp_path / "c").rglob("model.safetensors") if p.exists()]
    assert leftovers == []  # the bad file is not left in the cache


def test_unpinned_entry_is_pinned_by_first_download(hub, tmp_path):
    commit = hub.publish(REPO, FILES)
    comp = _component(tmp_path, lock_text(pinned=False))
    assert not comp.pinned
    cache = tmp_path / "cache"
    res = W.resolve(comp, cache_dir=cache, download=True)
    assert res.pinned_now and res.revision == commit
    pin = W._pins(cache)[REPO]
    assert pin["revision"] == commit
    assert pin["files"]["model.safetensors"]["sha256"] == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    again = W.resolve(comp, cache_dir=cache)
    assert not again.pinned_now and again.revision == commit
    Path(os.path.realpath(again.files["config.json"])).write_bytes(b"{}")
    with pytest.raises(AlignSTSError, match="corrupt"):
        W.resolve(comp, cache_dir=cache)


def test_bad_lock_files(tmp_path):
    with pytest.raises(AlignSTSError, match="not valid TOML"):
        _component(tmp_path, "[[component]\n")
    with pytest.raises(AlignSTSError, match="needs either"):
        _component(tmp_path, '[[component]]\nname = "x"\n')
    with pytest.raises(AlignSTSError, match="needs its sha256"):
        _component(tmp_path, '[[component]]\nname = "x"\npath = "bundled/x.safetensors"\n')


def test_download_weights_command(hub, tmp_path):
    commit = hub.publish(REPO, FILES)
    lock = tmp_path / "weights.lock"
    lock.write_text(lock_text(commit))
    env = dict(os.environ, HF_ENDPOINT=hub.url)
    env.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "alignsts_cli", "download-weights", "--lock", str(lock), "--cache-dir",
           str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "acoustic" in proc.stdout and "present" in proc.stdout and commit[:10] in proc.stdout
    listed = subprocess.run(cmd + ["--list"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and "present" in listed.stdout
    hub.stop()
    env["HF_HUB_OFFLINE"] = "1"
    empty = [*cmd[:-1], str(tmp_path / "empty")]
    proc = subprocess.run(empty, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bundled_component_is_verified(tmp_path):
    """A bundled file whose sha256 differs from the lock's is refused, not loaded."""
    target = W.PACKAGE_DIR / "training" / "configs" / "compact-16k.json"  # any file shipped in the package
    good = hashlib.sha256(target.read_bytes()).hexdigest()
    comp = _component(tmp_path, f'[[component]]\nname = "acoustic"\npath = "training/configs/compact-16k.json"\nsha256 = "{good}"\n')
    assert W.resolve(comp).files == {"compact-16k.json": target}
    bad = _component(tmp_path, f'[[component]]\nname = "acoustic"\npath = "training/configs/compact-16k.json"\nsha256 = "{"0" * 64}"\n')
    with pytest.raises(AlignSTSError, match="do not match their sha256"):
        W.resolve(bad)
    assert W.status(bad).state == "corrupt"
