"""Process settings (alignsts_cli/runtime.py): devices, precision, threads."""
import pytest
import torch

from alignsts_cli import runtime
from alignsts_cli.errors import AlignSTSError


def test_bad_settings_are_user_errors_that_name_the_option():
    for call, option in ((lambda: runtime.check_device("tpu"), "--device"),
                         (lambda: runtime.pick_device("tpu"), "--device"),
                         (lambda: runtime.check_precision("half"), "--precision"),
                         (lambda: runtime.set_threads(0), "--threads")):
        with pytest.raises(AlignSTSError, match=option):
            call()
    if not torch.cuda.is_available():
        with pytest.raises(AlignSTSError, match="no CUDA GPU"):
            runtime.pick_device("cuda")


def test_auto_device_and_bf16_choice():
    assert runtime.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.pick_device("cpu") == "cpu"
    assert runtime.use_bf16_vocoder("float32", "cpu") is False
    assert runtime.use_bf16_vocoder("auto", "cuda") is False
    assert runtime.use_bf16_vocoder("auto", "cpu") == runtime.cpu_has_bf16()


def test_threads_set_and_restored():
    before = torch.get_num_threads()
    from threadpoolctl import threadpool_info

    pools = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
    with runtime.one_thread("cpu"):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())  # numpy's BLAS too
    assert torch.get_num_threads() == before
    assert [(p["internal_api"], p["num_threads"]) for p in threadpool_info()] == pools
    runtime.set_threads(1)
    assert torch.get_num_threads() == 1
    runtime.set_threads(before)


def test_flush_denormals_inside_only():
    tiny = 1e-40  # a float32 denormal
    with runtime.flush_denormals():
        assert float((torch.tensor([tiny]) * 1.0)[0]) == 0.0
    assert float((torch.tensor([tiny]) * 1.0)[0]) > 0.0  # torch's default again after the block
    with runtime.flush_denormals(active=False):
        assert float((torch.tensor([tiny]) * 1.0)[0]) > 0.0
