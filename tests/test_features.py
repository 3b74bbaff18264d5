"""Speech features (alignsts_cli/features.py): pitch flattening, content features, speaker embedding."""
import numpy as np
import parselmouth
import pytest

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.features import CONTENT_SR, FeatureExtractor, content_frames, flat_speech
from conftest import vowel


def _glide(sr=22050, seconds=1.2):
    """A vowel whose pitch glides 150 -> 250 Hz (concatenated steps), ``[n]`` at ``sr``."""
    steps = [vowel(f, seconds / 6, sr) for f in np.linspace(150, 250, 6)]
    return np.concatenate(steps)


def test_flat_speech_is_16k_and_flat():
    x = _glide()
    flat = flat_speech(x, 22050, 200.0, 75.0, 500.0)
    assert abs(len(flat) - len(x) * CONTENT_SR / 22050) <= 2
    f = parselmouth.Sound(flat.astype(np.float64), CONTENT_SR).to_pitch_ac(time_step=0.01, pitch_floor=75.0, pitch_ceiling=500.0).selected_array["frequency"]
    voiced = f[f > 0]
    assert len(voiced) > 50 and np.all(np.abs(1200 * np.log2(voiced[5:-5] / 200.0)) < 30)  # was 150-250 Hz


def test_content_of_is_content_of_the_flattened_speech():
    x = _glide()
    ex = FeatureExtractor("mfcc", 20)
    c = ex.content_of(x, 22050, 200.0, 75.0, 500.0)
    assert c.shape == (content_frames(len(x) / 22050), 20) and c.dtype == np.float32
    assert np.array_equal(c, ex.content(flat_speech(x, 22050, 200.0, 75.0, 500.0)))
    emb = ex.speaker(x, 22050)
    assert emb.shape == (256,) and abs(np.linalg.norm(emb) - 1) < 1e-3


def test_unknown_or_unavailable_content_model_is_a_user_error():
    with pytest.raises(AlignSTSError, match="unknown content feature"):
        FeatureExtractor("hubert", 32)
    with pytest.raises(AlignSTSError, match="download-weights"):
        FeatureExtractor("wav2vec2-ctc", 32)
