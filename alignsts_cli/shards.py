"""Splitting work over machines: ``--shard I/N`` of ``alignsts batch`` and ``alignsts prepare``.

A piece of work (a batch job, a dataset item) belongs to shard ``1 + sha256(key) mod N``, where the key
names it the same way on every machine (a batch output's path inside the output folder, an item's id).
So the partition is stable: the same files land in the same shard whatever the machine, the mount point
or the order in which a folder lists its files, and adding a file never moves the others.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from alignsts_cli.errors import AlignSTSError

MAX_SHARDS = 100_000


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"2/3"`` -> Shard(2, 3); one clear message for anything else."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not m:
            raise AlignSTSError(f"--shard {text!r}: give I/N, the shard to run and how many there are (e.g. 2/3)")
        index, count = int(m.group(1)), int(m.group(2))
        if not 1 <= count <= MAX_SHARDS:
            raise AlignSTSError(f"--shard {text}: the number of shards must be 1 to {MAX_SHARDS}")
        if not 1 <= index <= count:
            raise AlignSTSError(f"--shard {text}: shards count from 1, so I must be 1 to {count} "
                                f"(with a 0-based job array index, pass $((ID + 1))/{count})")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """For file names: ``"2-of-3"``."""
        return f"{self.index}-of-{self.count}"

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard (1..count) that ``key`` belongs to."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count
