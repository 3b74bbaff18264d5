"""``weights.lock``: which checkpoints the tool uses and how to verify them.

The lock is a small TOML file at the repository root (and inside the package when
installed). Each ``[[component]]`` names a Hub repository, revision, files, sizes and
sha256, or a bundled path with its sha256. This version of the tool needs no
weights (the psola engine is pure signal processing), so the lock lists nothing yet.
"""
from __future__ import annotations

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from alignsts_cli.errors import AlignSTSError

PACKAGE_LOCK = Path(__file__).with_name("weights.lock")


@dataclass
class Component:
    name: str
    repo: str | None = None
    revision: str | None = None
    files: list[dict] = field(default_factory=list)
    path: str | None = None
    sha256: str | None = None


def read_lock(path: Path = PACKAGE_LOCK) -> list[Component]:
    """The components listed in a lock file (an empty list when it lists none)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AlignSTSError(f"{path}: weights.lock is missing; reinstall alignsts") from None
    except tomllib.TOMLDecodeError as exc:
        raise AlignSTSError(f"{path}: weights.lock is not valid TOML ({exc}); restore it from the release") from None
    comps = []
    for entry in data.get("component", []):
        try:
            comps.append(Component(**entry))
        except TypeError as exc:
            raise AlignSTSError(f"{path}: a [[component]] entry is malformed ({exc})") from None
    return comps
