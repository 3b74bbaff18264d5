"""Safe output files (alignsts_cli/files.py): a full disk, an interruption or a read-only folder leave nothing."""
import errno

import pytest

from alignsts_cli import audio, files
from alignsts_cli.errors import AlignSTSError
from conftest import vowel


def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "o.wav"
    old = audio.save_audio(out, vowel(220, 0.3), 16000).read_bytes()

    def full(self, data):
        with open(self, "wb") as fh:
            fh.write(data[:100])  # a partial write, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(out), "write_bytes", full)
    with pytest.raises(AlignSTSError, match="disk is full"):
        audio.save_audio(out, vowel(330, 0.3), 16000, overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == old  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]  # no temporary left


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.csv"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_output(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AlignSTSError, match="cannot write to this folder"):
        files.check_output_path(blocker / "sub" / "o.wav")
