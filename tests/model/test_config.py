"""The acoustic model config (alignsts_cli/model/config.py): JSON round trip and validation."""
from __future__ import annotations

import math

import pytest
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model import AlignSTSConfig

from conftest import tiny_config

torch.set_num_threads(2)


def test_config_round_trips_through_json_and_validates():
    cfg = tiny_config(use_f0_skip=False, rhythm_sigma=1.0, aligner_window=None)
    assert AlignSTSConfig.from_json(cfg.to_json()) == cfg
    assert AlignSTSConfig().mel_log_base == 10.0
    assert math.isclose(AlignSTSConfig(audio_profile="compact-16k").mel_log_base, math.e)
    with pytest.raises(AlignSTSError, match="divisible"):
        AlignSTSConfig(hidden=30, speaker_dim=30)
    with pytest.raises(AlignSTSError, match="unknown fields"):
        AlignSTSConfig.from_dict({"hidden": 256, "bogus": 1})
