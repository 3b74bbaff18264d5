"""Process settings: which device torch runs on, at what precision, on how many CPU threads.

Everything here is chosen at run time from what this machine has (a CUDA GPU, a CPU that computes
bfloat16 natively), so a speed-up measured on one machine never slows another down.
"""
from __future__ import annotations

from alignsts_cli.errors import AlignSTSError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32")


def check_device(device: str) -> str:
    """``--device`` as given, refused unless it is one of ``DEVICES`` (nothing is loaded)."""
    if device not in DEVICES:
        raise AlignSTSError(f"--device {device}: use auto, cpu or cuda")
    return device


def pick_device(device: str = "auto") -> str:
    """The torch device to use for ``--device``: auto is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AlignSTSError("--device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
    check_device(device)
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise AlignSTSError(f"--precision {precision}: use auto or float32")
    return precision


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this process (None leaves torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise AlignSTSError(f"--threads {threads}: use 1 or more")
    import torch

    torch.set_num_threads(threads)


class one_thread:
    """Run torch, and numpy's BLAS and OpenMP pools, on one CPU thread inside the block (torch's setting
    is left alone on CUDA).

    For many small per-utterance models: with several threads on a busy machine Resemblyzer's LSTM
    was measured 10-100x slower (the threads wait on each other), and `prepare` of 40 items took 15.0 s
    with OpenBLAS's threads against 10.5 s with one (2-core AMD EPYC; threadpoolctl sets the pools).
    """

    def __init__(self, device: str):
        self.active = device == "cpu"

    def __enter__(self):
        import torch
        from threadpoolctl import threadpool_limits

        self.saved = torch.get_num_threads()  # before the pools: torch's OpenMP pool is one of them
        self.pools = threadpool_limits(1)
        if self.active:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        self.pools.restore_original_limits()
        torch.set_num_threads(self.saved)


class flush_denormals:
    """Inside the block, torch treats denormal floats as 0 on the CPU (the x86 FTZ/DAZ flags): the
    vocoder's activations decay into denormals, which some CPUs compute many times slower. Issue 18's
    experiment on a 2-core Intel Xeon (AVX512-BF16/AMX): the bundled vocoder stage 5-25 s -> about 5.3 s for
    a 10 s song; on a 2-core AMD EPYC (AVX2) here the vocoder's real-time factor 0.465 -> 0.447 (benchmarks/
    run.py --engine bundled, medians of 3), so it is on wherever the CPU runs the model. Only numbers below
    1.2e-38 change, so the audio does not. Restores torch's default (off) after.
    """

    def __init__(self, active: bool = True):
        self.active = active

    def __enter__(self):
        if self.active:
            import torch

            torch.set_flush_denormal(True)

    def __exit__(self, *exc):
        if self.active:
            import torch

            torch.set_flush_denormal(False)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private torch helper: absent or failing means "no"
            pass
    return False


def use_bf16_vocoder(precision: str, device: str) -> bool:
    """precision "auto" on a CPU with native bfloat16: the vocoder's convolutions run in bf16.

    About twice as fast; on the bundled voice's test items the scores do not move (LSD 8.942 -> 8.937,
    RCA 0.981 both; README: Speed and memory). "float32" keeps every stage in float32.
    """
    return check_precision(precision) == "auto" and device == "cpu" and cpu_has_bf16()


def describe_device(device: str, vocoder_bf16: bool = False) -> str:
    import torch

    if device == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(0)}, half precision)"
    return f"CPU ({torch.get_num_threads()} threads{', bfloat16 vocoder' if vocoder_bf16 else ''})"
