"""The Python API (alignsts_cli/api.py): engine choice when weights are missing, and user-error types."""
import pytest

from alignsts_cli import api
from alignsts_cli.errors import AlignSTSError, WeightsMissing


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    lock = tmp_path / "weights.lock"
    lock.write_text("# nothing listed\n")
    monkeypatch.setenv("ALIGNSTS_WEIGHTS_LOCK", str(lock))
    monkeypatch.setenv("ALIGNSTS_HOME", str(tmp_path / "home"))


def test_auto_is_the_engine_the_real_speech_scorecard_chose(tmp_path, no_weights):
    """--engine auto runs psola (the README's scorecard), with or without neural weights; a --model means
    the neural engine, since that is what a model is for."""
    assert api.AUTO_ENGINE == "psola"
    assert api.resolve_engine("auto") == "psola"
    with pytest.raises(AlignSTSError):
        api.resolve_engine("auto", model=tmp_path / "no-such-voice")


def test_asking_for_alignsts_without_weights_names_the_fix(no_weights):
    with pytest.raises(WeightsMissing, match=r"import-checkpoint ARCHIVE`, or use --engine psola$"):
        api.resolve_engine("alignsts")
    with pytest.raises(AlignSTSError, match="--engine neural: use one of auto, psola, world, alignsts"):
        api.resolve_engine("neural")
