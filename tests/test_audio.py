import os
import stat

import numpy as np
import pytest
import soundfile as sf

from alignsts_cli import audio
from alignsts_cli.errors import AlignSTSError
from conftest import vowel


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"),
                                             ("WAV", "FLOAT", "wav"), ("FLAC", "PCM_16", "flac"),
                                             ("OGG", "VORBIS", "ogg")])
def test_reads_formats_as_mono_float(tmp_path, fmt, subtype, ext):
    sr = 22050
    left = vowel(200.0, 0.5, sr)
    stereo = np.stack([left, left * 0.5], axis=1)
    p = tmp_path / f"a.{ext}"
    sf.write(p, stereo, sr, format=fmt, subtype=subtype)
    x, got_sr = audio.load_audio(p)
    assert got_sr == sr and x.dtype == np.float32 and x.ndim == 1
    assert len(x) == len(left)
    tol = 0.05 if fmt == "OGG" else 1e-3
    assert np.max(np.abs(x - 0.75 * left)) < tol  # stereo is averaged


def test_resampling_keeps_pitch_and_length(tmp_path):
    p = tmp_path / "a.wav"
    t = np.arange(44100) / 44100
    sf.write(p, 0.5 * np.sin(2 * np.pi * 440 * t), 44100)
    x, sr = audio.load_audio(p, sr=16000)
    assert sr == 16000 and abs(len(x) - 16000) <= 1
    assert abs(_peak_hz(x, sr) - 440) < 2


def test_int_samples_scaled(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, (np.ones(8000) * 16384).astype(np.int16), 8000, subtype="PCM_16")
    x, _ = audio.load_audio(p)
    assert abs(float(x.mean()) - 0.5) < 1e-3


def test_missing_empty_truncated_corrupt(tmp_path):
    with pytest.raises(AlignSTSError, match="no such file"):
        audio.load_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AlignSTSError, match="empty"):
        audio.load_audio(tmp_path / "empty.wav")
    good = tmp_path / "good.wav"
    sf.write(good, vowel(200, 1.0), 16000)
    (tmp_path / "cut.wav").write_bytes(good.read_bytes()[:10000])
    with pytest.raises(AlignSTSError, match="truncated"):
        audio.load_audio(tmp_path / "cut.wav")
    (tmp_path / "junk.wav").write_bytes(os.urandom(4000))
    with pytest.raises(AlignSTSError, match="cannot be read as audio"):
        audio.load_audio(tmp_path / "junk.wav")
    flac = tmp_path / "good.flac"
    sf.write(flac, vowel(200, 2.0), 16000, format="FLAC")
    data = flac.read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AlignSTSError):
        audio.load_audio(tmp_path / "cut.flac")


def test_speech_checks(tmp_path):
    with pytest.raises(AlignSTSError, match="silent"):
        audio.check_speech(np.zeros(16000, dtype=np.float32), 16000, "x.wav")
    with pytest.raises(AlignSTSError, match="at least 0.3 s"):
        audio.check_speech(vowel(200, 0.2), 16000, "x.wav")
    audio.check_speech(vowel(200, 0.5), 16000, "x.wav")  # fine


def test_save_writes_wav_or_flac_by_extension(tmp_path):
    x = vowel(220, 0.5)
    w = audio.save_audio(tmp_path / "o.wav", x, 16000)
    f = audio.save_audio(tmp_path / "o.flac", x, 16000)
    assert sf.info(w).format == "WAV" and sf.info(f).format == "FLAC"
    y, _ = sf.read(f)
    assert np.max(np.abs(y - x)) < 1e-3
    with pytest.raises(AlignSTSError, match=".wav or .flac"):
        audio.save_audio(tmp_path / "o.mp3", x, 16000)
    assert stat.S_IMODE(os.stat(w).st_mode) & 0o044  # readable by others, not mkstemp's 0600


def test_save_refuses_existing_and_inputs(tmp_path):
    x = vowel(220, 0.5)
    out = audio.save_audio(tmp_path / "o.wav", x, 16000)
    before = out.read_bytes()
    with pytest.raises(AlignSTSError, match="already exists"):
        audio.save_audio(out, x * 0.5, 16000)
    assert out.read_bytes() == before
    audio.save_audio(out, x * 0.5, 16000, overwrite=True)
    assert out.read_bytes() != before
    with pytest.raises(AlignSTSError, match="input file"):
        audio.save_audio(out, x, 16000, overwrite=True, inputs=(out,))
