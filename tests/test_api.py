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


def test_auto_falls_back_to_psola_and_says_why(no_weights):
    engine, notice = api.resolve_engine("auto")
    assert engine == "psola"
    assert notice.startswith("note: using the psola engine (no AlignSTS weights are installed")
    assert "--engine psola" not in notice  # the alternative is what just happened, so it is not offered


def test_asking_for_alignsts_without_weights_names_the_fix(no_weights):
    with pytest.raises(WeightsMissing, match=r"import-checkpoint ARCHIVE`, or use --engine psola$"):
        api.resolve_engine("alignsts")
    with pytest.raises(AlignSTSError, match="--engine neural: use one of auto, psola, alignsts"):
        api.resolve_engine("neural")
