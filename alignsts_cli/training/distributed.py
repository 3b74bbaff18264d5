"""Training on several processes: torch.distributed set up from what ``torchrun`` puts in the environment.

``torchrun --nproc-per-node N -m alignsts_cli train CACHE -o RUN -c CONFIG`` starts N ranks with RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; :func:`join` reads them, checks that none is
missing, and joins the process group: NCCL when the run is on CUDA (one GPU per local rank), gloo on
the CPU. Without WORLD_SIZE (or with 1) a run is one process and nothing here is used.

How train.py shares the work: every rank draws the same epoch of length-bucketed global batches from the
same seed; each global batch of ``batch_size`` items is cut into ``world × accumulate`` contiguous
parts and rank r takes parts r·A .. r·A + A - 1 (:func:`rank_parts`: a distributed sampler that keeps
the length buckets). Each part's loss is weighted by its share of the batch, DistributedDataParallel
averages the gradients, so a step's update is the one of the whole global batch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np

from alignsts_cli.errors import AlignSTSError

#: Environment variables a rank needs (torchrun sets them all).
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: Seconds a rank waits for the others (joining, and at each collective); ALIGNSTS_DIST_TIMEOUT changes it.
DEFAULT_TIMEOUT = 1800.0
LAUNCH_HINT = ("start every rank with torchrun (`torchrun --nproc-per-node N -m alignsts_cli train ...`; on "
               "several machines add --nnodes M --node-rank I --rdzv-endpoint HOST:PORT)")


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks of a run: one process is World(0, 1, 0)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder, validates and renders samples."""
        return self.rank == 0


def requested() -> bool:
    """Whether the environment asks for more than one rank."""
    return _int_env("WORLD_SIZE", 1) > 1


def join(device_kind: str) -> World:
    """Join the run's process group (gloo on the CPU, NCCL on CUDA); World() when there is one rank.

    AlignSTSError with what is wrong when the environment is half set up (a variable missing or not a
    number) or when the other ranks cannot be reached within the timeout.
    """
    if not requested():
        return World()
    missing = [v for v in RANK_VARIABLES if not os.environ.get(v)]
    if missing:
        raise AlignSTSError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for several processes but "
                            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; {LAUNCH_HINT}")
    size, rank = _int_env("WORLD_SIZE", 1), _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", rank)
    if not 0 <= rank < size:
        raise AlignSTSError(f"RANK={rank} is outside 0..{size - 1} (WORLD_SIZE={size}); {LAUNCH_HINT}")
    import torch
    from torch import distributed as dist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise AlignSTSError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                                "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout()))
    except Exception as exc:  # DistNetworkError, DistStoreError, RuntimeError, ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AlignSTSError(f"rank {rank} of {size} could not join the others at {where} within {timeout():.0f} s "
                            f"({first}); {LAUNCH_HINT}, and check that every machine reaches that address and "
                            "port") from None
    return World(rank, size, local_rank, backend)


def leave(world: World) -> None:
    if world.backend is not None:
        from torch import distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def timeout() -> float:
    try:
        value = float(os.environ.get("ALIGNSTS_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        raise AlignSTSError("ALIGNSTS_DIST_TIMEOUT must be a number of seconds") from None
    if not value > 0:
        raise AlignSTSError("ALIGNSTS_DIST_TIMEOUT must be a positive number of seconds")
    return value


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise AlignSTSError(f"{name}={value!r} is not a whole number; {LAUNCH_HINT}") from None


def rank_parts(batch: list[int], world: World, accumulate: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch: of the ``world.size × accumulate`` contiguous
    parts, parts ``rank·accumulate`` .. ``rank·accumulate + accumulate - 1``; empty parts are dropped
    (a global batch can hold fewer items than parts)."""
    parts = np.array_split(np.asarray(batch, dtype=np.int64), world.size * accumulate)
    mine = parts[world.rank * accumulate:(world.rank + 1) * accumulate]
    return [p.tolist() for p in mine if len(p)]
