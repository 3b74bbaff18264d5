"""Safe output files: checked before the work starts, written atomically after.

Every file the tool writes (audio, CSV, MIDI, PNG) goes through ``atomic_output``:
the data lands in a hidden temporary file beside the target and is renamed over
it only once complete, so an interrupted run or a full disk never leaves a
partial or half-overwritten file behind. The writer holds a lock on its temporary file while it writes;
one left by a run that was killed (SIGKILL, a power cut) is unlocked, and the next run that checks an output of
that name removes it (``check_output_path``). ``claim`` lets runs that share an output folder (two batches)
split the work: an output is converted by whoever holds its claim.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from alignsts_cli.errors import AlignSTSError

try:  # POSIX advisory locks; elsewhere no lock is taken and nothing is cleaned
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: A temporary file older than this, seconds, that no writer holds is left over from a killed run.
STALE_AFTER = 2.0


class OutputClaimed(AlignSTSError):
    """Another run is writing this output (or has just written it): leave it to that run."""


def _lock(fd: int, *, wait: bool = False) -> bool:
    """Take the exclusive lock of an open file; False when another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _held_elsewhere(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return True  # gone already, or not ours to judge
    try:
        return not _lock(fd)
    finally:
        os.close(fd)


def remove_stale_parts(target: Path) -> None:
    """Remove the temporary files of ``target`` (``.NAME.*.part``, ``.NAME.claim``) that runs killed while
    writing left behind: unlocked and more than ``STALE_AFTER`` seconds old."""
    import time

    if fcntl is None or not target.parent.is_dir():
        return
    for leftover in [*target.parent.glob(f".{target.name}.*.part"), target.parent / f".{target.name}.claim"]:
        try:
            if time.time() - leftover.stat().st_mtime > STALE_AFTER and not _held_elsewhere(leftover):
                leftover.unlink()
        except OSError:
            continue


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    suffixes: Iterable[str] | None = None,
) -> Path:
    """Validate an output path before any work is done; return it as a Path.

    Refuses an input file (whatever ``overwrite`` says), an existing file unless
    ``overwrite``, an unknown extension, and a folder that cannot be written.
    Missing parent folders are created.
    """
    out = Path(path).expanduser()
    if suffixes is not None:
        allowed = [s.lower() for s in suffixes]
        if out.suffix.lower() not in allowed:
            raise AlignSTSError(
                f"{out}: output must end in {' or '.join(allowed)}; choose a name with one of those extensions"
            )
    for inp in inputs:
        if inp is not None and (_same_file(out, Path(inp)) or out.resolve() == Path(inp).expanduser().resolve()):
            raise AlignSTSError(f"{out}: this is an input file and is never overwritten; choose another output name")
    if out.is_dir():
        raise AlignSTSError(f"{out}: is a folder; give a file name for the output")
    if out.exists() and not overwrite:
        raise AlignSTSError(f"{out}: already exists; pass --overwrite to replace it or choose another name")
    remove_stale_parts(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Probe with a real file: permission bits say nothing when running as root.
        fd, probe = tempfile.mkstemp(prefix=".alignsts-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AlignSTSError(
            f"{parent}: cannot write to this folder ({exc.strerror or exc}); choose a writable output location"
        ) from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe_write_error(path: Path, exc: OSError) -> AlignSTSError:
    if exc.errno == errno.ENOSPC:
        return AlignSTSError(f"{path}: the disk is full, nothing was written; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AlignSTSError(f"{path}: permission denied, nothing was written; choose a writable output location")
    return AlignSTSError(f"{path}: could not be written ({exc.strerror or exc}); nothing was written")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any error the temporary file is removed and ``path`` is left untouched.
    OS errors (disk full, permissions) become an ``AlignSTSError``. The temporary file stays locked
    while it is written, which tells a later run that it is not a leftover.
    """
    target = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise _describe_write_error(target, exc) from None
    tmp = Path(tmp_name)
    try:
        _lock(fd, wait=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _describe_write_error(target, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim(path: str | os.PathLike) -> Iterator[None]:
    """Hold the claim on output ``path`` while it is made: a locked ``.NAME.claim`` file beside it.

    Raises ``OutputClaimed`` when another run holds it. The lock goes with the process, so a run that
    is killed frees its claims at once.
    """
    target = Path(path)
    lock = target.parent / f".{target.name}.claim"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise _describe_write_error(target, exc) from None
    try:
        if not _lock(fd):
            raise OutputClaimed(f"{target}: another alignsts run is writing it")
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data, *, indent: int = 1, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (UTF-8, one trailing newline) to ``path`` atomically."""
    import json

    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def read_json(path: Path, *, missing: str, unreadable: str, fix: str):
    """JSON data of a file a user gives, with one-line errors: ``"{path}: {missing}"`` when it is not there,
    ``"{path}: {unreadable} ({why}); {fix}"`` when it cannot be read or parsed."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlignSTSError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlignSTSError(f"{path}: {unreadable} ({exc}); {fix}") from None


def read_path_rows(path: str | os.PathLike, *, header: tuple[str, ...], what: str, example: str) -> list[list[str]]:
    """Rows of a small CSV that lists files (``batch``'s pairs.csv, ``evaluate --pairs``), cells stripped.

    Blank rows and rows starting with ``#`` are skipped; a first row naming ``header`` is dropped.
    ``what`` names the file in messages ("the manifest"); ``example`` says what a row holds.
    """
    import csv

    p = Path(path)
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignSTSError(f"{p}: cannot read {what} ({exc}); it must be a text CSV") from None
    rows = [[c.strip() for c in r] for r in rows if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if rows and [c.lower() for c in rows[0][:len(header)]] == list(header):
        rows = rows[1:]
    if not rows:
        raise AlignSTSError(f"{p}: {what} lists no pairs; write rows of {example}")
    return rows
