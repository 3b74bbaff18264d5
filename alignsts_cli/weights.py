"""``weights.lock``: which checkpoints the tool uses, where they come from, how they are verified.

The lock is a small TOML file (at the repository root, and inside the package when
installed). Each ``[[component]]`` is one of:

- a file set on the Hugging Face Hub: ``repo``, ``revision`` (40-hex commit, or
  ``"unpinned"`` where the commit cannot be known in advance) and ``files``, each
  ``{ name, sha256, size }`` (sha256/size may be missing while unpinned);
- a file bundled in the package: ``path`` (relative to the package) and ``sha256``.

Downloads go through ``huggingface_hub`` into its cache (``HF_HOME`` /
``HF_HUB_CACHE``, or ``cache_dir``), honour ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``, and
every file is checked against its sha256; a mismatch is fetched again once, then
refused. An unpinned component is pinned by its first successful download: the
resolved commit and the files' sha256 are recorded beside the cache
(``alignsts-pins.json``) and later loads are checked against them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from alignsts_cli.errors import AlignSTSError, DownloadFailed, WeightsDamaged, WeightsMissing

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_LOCK = Path(__file__).with_name("weights.lock")
PINS_FILE = "alignsts-pins.json"
VERIFIED_FILE = "alignsts-verified.json"
UNPINNED = "unpinned"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# (bytes done, bytes total, description) while a file downloads
ByteProgress = Callable[[int, int, str], None]


@dataclass
class LockedFile:
    name: str
    sha256: str | None = None
    size: int | None = None


@dataclass
class Component:
    name: str  # what it is for: content | acoustic | vocoder | ...
    description: str = ""
    repo: str | None = None
    revision: str | None = None
    files: list[LockedFile] = field(default_factory=list)
    path: str | None = None  # bundled: relative to the package folder
    sha256: str | None = None  # bundled file's digest
    size: int | None = None

    @property
    def bundled(self) -> bool:
        return self.path is not None

    @property
    def pinned(self) -> bool:
        return self.bundled or (
            self.revision is not None and bool(_HEX40.match(self.revision)) and all(f.sha256 for f in self.files)
        )


@dataclass
class Resolved:
    """Where a component's verified files are on disk."""

    component: Component
    files: dict[str, Path]  # name -> path
    revision: str | None = None  # the commit the files came from (Hub components)
    pinned_now: bool = False  # this call pinned an unpinned component

    @property
    def folder(self) -> Path:
        return next(iter(self.files.values())).parent


def default_lock() -> Path:
    """The lock in use: ``ALIGNSTS_WEIGHTS_LOCK`` when set, else the one shipped with the package."""
    return Path(os.environ.get("ALIGNSTS_WEIGHTS_LOCK") or PACKAGE_LOCK)


def read_lock(path: Path | None = None) -> list[Component]:
    """The components listed in a lock file (default: ``default_lock()``; empty when it lists none)."""
    path = Path(path) if path is not None else default_lock()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        fix = "reinstall alignsts" if path == Path(PACKAGE_LOCK) else "check the path"
        raise AlignSTSError(f"{path}: no such weights.lock; {fix}") from None
    except IsADirectoryError:
        raise AlignSTSError(f"{path}: is a folder; give the weights.lock file itself") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = "not a text file" if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc)
        raise AlignSTSError(f"{path}: cannot be read as a weights.lock ({why}); give a TOML lock file") from None
    except tomllib.TOMLDecodeError as exc:
        raise AlignSTSError(f"{path}: weights.lock is not valid TOML ({exc}); restore it from the release") from None
    comps = []
    for entry in data.get("component", []):
        try:
            files = [LockedFile(**f) for f in entry.pop("files", [])]
            comp = Component(files=files, **entry)
        except TypeError as exc:
            raise AlignSTSError(f"{path}: a [[component]] entry is malformed ({exc}); fix weights.lock") from None
        if not comp.bundled and not (comp.repo and comp.files):
            raise AlignSTSError(f"{path}: component '{comp.name}' needs either path+sha256 or repo+files")
        if comp.bundled and not (comp.sha256 and _HEX64.match(comp.sha256)):
            raise AlignSTSError(f"{path}: bundled component '{comp.name}' needs its sha256")
        if comp.revision is None and not comp.bundled:
            comp.revision = UNPINNED
        comps.append(comp)
    return comps


def find(components: list[Component], name: str) -> Component | None:
    return next((c for c in components if c.name == name), None)


# --------------------------------------------------------------------------- environment

def hub_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache folder: ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _json_save(path: Path, data: dict) -> None:
    from alignsts_cli.files import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data, sort_keys=True)


def _pins(cache: Path) -> dict:
    return _json_load(cache / PINS_FILE)


def expected_digests(comp: Component, cache: Path) -> tuple[str | None, dict[str, str | None]]:
    """(revision, {file: sha256}) to check against: the lock's, or the local pin of an unpinned entry."""
    if comp.pinned:
        return comp.revision, {f.name: f.sha256 for f in comp.files}
    pin = _pins(cache).get(f"{comp.repo}", {})
    return pin.get("revision"), {f.name: f.sha256 or pin.get("files", {}).get(f.name, {}).get("sha256") for f in comp.files}


def _verified(path: Path, expected: str | None, cache: Path) -> bool:
    """sha256 check, remembered by (path, size, mtime) so a large file is hashed once."""
    if expected is None:
        return True
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache / VERIFIED_FILE
    memo = _json_load(memo_path)
    if memo.get(key) == expected:
        return True
    ok = sha256_file(path) == expected
    if ok:
        memo[key] = expected
        try:
            _json_save(memo_path, memo)
        except (OSError, AlignSTSError):
            pass  # a read-only cache only costs a re-hash next time
    return ok


# --------------------------------------------------------------------------- bundled

def _resolve_bundled(comp: Component) -> Resolved:
    path = (PACKAGE_DIR / comp.path).resolve()
    if not path.is_file():
        raise WeightsMissing(f"bundled weights '{comp.name}' are missing ({path}); reinstall alignsts")
    if sha256_file(path) != comp.sha256:
        raise WeightsDamaged(
            f"bundled weights '{comp.name}' ({path}) do not match their sha256 in weights.lock; reinstall alignsts"
        )
    return Resolved(comp, {path.name: path})


# --------------------------------------------------------------------------- Hub

def _hub_download(comp: Component, name: str, revision: str, cache: Path, *, local_only: bool, force: bool,
                  progress: ByteProgress | None):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry chatter; failures reach the user as one line from us
    kwargs = {}
    if os.environ.get("HF_ENDPOINT"):
        kwargs["endpoint"] = os.environ["HF_ENDPOINT"].rstrip("/")
    if progress is not None and not local_only:
        kwargs["tqdm_class"] = _tqdm_for(progress, f"{comp.name}: {name}")
    return Path(hf_hub_download(
        comp.repo, name, revision=revision, cache_dir=str(cache), local_files_only=local_only,
        force_download=force, **kwargs,
    ))


def _tqdm_for(progress: ByteProgress, label: str):
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # forwards huggingface_hub's byte counts to our progress callback
        def __init__(self, *a, **kw):
            kw["disable"] = True
            super().__init__(*a, **kw)
            self._done = 0
            self._total = kw.get("total") or 0

        def update(self, n=1):
            self._done += n or 0
            progress(self._done, self._total or self.total or 0, label)

    return _Bar


def _commit_of(path: Path) -> str | None:
    parts = path.parts
    if "snapshots" in parts:
        rev = parts[parts.index("snapshots") + 1]
        return rev if _HEX40.match(rev) else None
    return None


def _remove_cached(path: Path) -> None:
    real = Path(os.path.realpath(path))
    for p in {real, path}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def resolve(
    comp: Component,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: ByteProgress | None = None,
) -> Resolved:
    """Verified local files of ``comp``.

    ``download=False`` (what ``convert`` does) never touches the network: a missing file
    is an error that names the command to run. ``download=True`` fetches what is missing
    (unless ``HF_HUB_OFFLINE``) and fetches a corrupt file again, once.
    """
    if comp.bundled:
        return _resolve_bundled(comp)
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache(cache_dir)
    pinned_rev, digests = expected_digests(comp, cache)
    revision = comp.revision if comp.pinned else (pinned_rev or "main")
    local_only = not download or offline()
    files: dict[str, Path] = {}
    commit = None
    for f in comp.files:
        want = digests.get(f.name)
        try:
            path = _hub_download(comp, f.name, revision, cache, local_only=local_only, force=False, progress=progress)
        except LocalEntryNotFoundError:
            if download and not offline():  # the Hub could not be reached and nothing is cached
                endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
                raise DownloadFailed(
                    f"could not reach {endpoint} to download {comp.repo}/{f.name}; check the network connection "
                    "(or set HF_ENDPOINT to a mirror) and run `alignsts download-weights` again"
                ) from None
            if offline() and download:
                raise WeightsMissing(
                    f"HF_HUB_OFFLINE is set and '{comp.name}' ({comp.repo}/{f.name}) is not in the cache {cache}; "
                    "unset HF_HUB_OFFLINE and run `alignsts download-weights`"
                ) from None
            raise WeightsMissing(
                f"the '{comp.name}' weights ({comp.repo}/{f.name}) are not downloaded; run `alignsts download-weights`"
                + (f" --cache-dir {cache_dir}" if cache_dir else "")
            ) from None
        except AlignSTSError:
            raise
        except Exception as exc:  # network, HTTP and repository errors from the Hub client
            raise DownloadFailed(
                f"could not download {comp.repo}/{f.name} at revision {revision} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); check the network, or set HF_ENDPOINT to a mirror"
            ) from None
        if (f.size is not None and path.stat().st_size != f.size) or not _verified(path, want, cache):
            if local_only:
                raise WeightsDamaged(
                    f"the cached '{comp.name}' file {f.name} is corrupt (sha256 differs from weights.lock); "
                    "run `alignsts download-weights` to fetch it again"
                )
            _remove_cached(path)
            path = _hub_download(comp, f.name, revision, cache, local_only=False, force=True, progress=progress)
            if (f.size is not None and path.stat().st_size != f.size) or not _verified(path, want, cache):
                _remove_cached(path)
                raise WeightsDamaged(
                    f"{comp.repo}/{f.name} at revision {revision} does not match its sha256 in weights.lock even "
                    "after downloading it again; the file on the Hub has changed: update alignsts or report it"
                )
        files[f.name] = path
        commit = commit or _commit_of(path)
    pinned_now = False
    if not comp.pinned and pinned_rev is None:
        pins = _pins(cache)
        pins[comp.repo] = {
            "revision": commit,
            "files": {n: {"sha256": sha256_file(p), "size": p.stat().st_size} for n, p in files.items()},
        }
        _json_save(cache / PINS_FILE, pins)
        pinned_now = True
    return Resolved(comp, files, commit or (revision if revision != "main" else None), pinned_now)


@dataclass
class Status:
    component: Component
    state: str  # present | missing | corrupt
    revision: str | None
    size: int  # bytes on disk
    detail: str = ""


def status(comp: Component, cache_dir: str | os.PathLike | None = None) -> Status:
    """What is on disk for ``comp``, without touching the network."""
    try:
        res = resolve(comp, cache_dir=cache_dir, download=False)
    except WeightsDamaged as exc:
        return Status(comp, "corrupt", comp.revision, 0, str(exc))
    except AlignSTSError as exc:
        return Status(comp, "missing", comp.revision, 0, str(exc))
    size = sum(p.stat().st_size for p in res.files.values())
    return Status(comp, "present", res.revision, size)
