"""Audio in and out: load any file soundfile reads, resample, check, save atomically.

Audio inside the tool is always mono float32 in [-1, 1] as a 1-D numpy array
``[n_samples]`` with its sample rate beside it.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output, check_output_path

#: Shortest speech the engines accept, in seconds.
MIN_SPEECH_SECONDS = 0.3
#: A recording whose loudest 50 ms stays below this level (dBFS RMS) is treated as silence.
SILENCE_DBFS = -60.0
#: Output containers chosen by extension.
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")
#: Speech and singing are analysed at their own rate, kept within these bounds.
MIN_WORK_SR = 8000
MAX_WORK_SR = 48000
#: Longest recording read, seconds: checked from the header before the samples are decoded, so a small
#: compressed file that holds hours of silence is refused instead of filling the memory.
MAX_AUDIO_SECONDS = 3600.0


def _wav_truncation(path: Path) -> tuple[int, int] | None:
    """For a RIFF/WAVE file, (declared, present) data bytes when the data chunk is cut short."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            cid, csize = struct.unpack("<4sI", fh.read(8))
            if cid == b"data":
                present = size - pos - 8
                # 0 and 0xFFFFFFFF are written by streaming recorders that never patched the header.
                if csize not in (0, 0xFFFFFFFF) and csize > present + 1:
                    return csize, present
                return None
            pos += 8 + csize + (csize & 1)
    return None


def load_audio(path: str | os.PathLike, sr: int | None = None, *, what: str = "audio") -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 ``[n]``; resample to ``sr`` when given.

    Raises ``AlignSTSError`` for a missing, empty, truncated or unreadable file.
    """
    import soundfile as sf

    p = Path(path).expanduser()
    if not p.exists():
        raise AlignSTSError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise AlignSTSError(f"{p}: is a folder, not {'an' if what[0] in 'aeiou' else 'a'} {what} file; "
                            "give one of the files in it")
    if p.stat().st_size == 0:
        raise AlignSTSError(f"{p}: the file is empty (0 bytes); record or export it again")
    cut = _wav_truncation(p)
    if cut is not None:
        raise AlignSTSError(
            f"{p}: the WAV file is truncated ({cut[1]} of {cut[0]} bytes of audio present); export it again"
        )
    def unreadable(exc: Exception) -> AlignSTSError:  # libsndfile reports corrupt data in many ways
        reason = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        return AlignSTSError(
            f"{p}: cannot be read as audio ({reason}); use WAV, FLAC or OGG, or convert it with an audio editor"
        )

    try:
        info = sf.info(str(p))
    except Exception as exc:
        raise unreadable(exc) from None
    if info.samplerate > 0 and info.frames / info.samplerate > MAX_AUDIO_SECONDS:
        raise AlignSTSError(f"{p}: lasts {info.frames / info.samplerate / 60:.0f} min, more than the "
                            f"{MAX_AUDIO_SECONDS / 60:.0f} min this tool reads; cut it into shorter pieces")
    try:
        data, file_sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise unreadable(exc) from None
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AlignSTSError(f"{p}: the file is truncated ({data.shape[0]} of {info.frames} frames); export it again")
    if data.shape[0] == 0:
        raise AlignSTSError(f"{p}: contains no audio samples; record or export it again")
    if not np.all(np.isfinite(data)):
        raise AlignSTSError(f"{p}: contains invalid samples (NaN or infinity); export it again")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sr is not None and sr != file_sr:
        audio = resample(audio, file_sr, sr)
        file_sr = sr
    return audio, int(file_sr)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of ``[n]`` audio (soxr, high quality)."""
    if orig_sr == target_sr:
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def to_work_rate(audio: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """``[n]`` audio at its own rate when that lies within 8-48 kHz, else resampled to the nearer bound."""
    if sr > MAX_WORK_SR:
        return resample(audio, sr, MAX_WORK_SR), MAX_WORK_SR
    if sr < MIN_WORK_SR:
        return resample(audio, sr, MIN_WORK_SR), MIN_WORK_SR
    return audio, sr


def fade_envelope(n: int, fade: int, *, fade_in: bool = True, fade_out: bool = True, dtype=np.float32) -> np.ndarray:
    """Gain ``[n]``: linear ramps of ``fade`` samples up at the start and down at the end, 1 between.

    Pieces joined by overlap-add with these envelopes cross-fade into each other.
    """
    env = np.ones(n, dtype=dtype)
    k = min(fade, n)
    if fade_in and k:
        env[:k] = np.linspace(0, 1, k)
    if fade_out and k:
        env[-k:] = np.minimum(env[-k:], np.linspace(1, 0, k))
    return env


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` cut or zero-padded to exactly ``n`` samples (Praat's resynthesis can differ by a few)."""
    return audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))


def loudest_dbfs(audio: np.ndarray, sr: int, window_s: float = 0.05) -> float:
    """RMS level (dBFS) of the loudest ``window_s`` stretch of ``[n]`` audio."""
    win = max(1, int(sr * window_s))
    if len(audio) <= win:
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    else:
        power = np.convolve(audio.astype(np.float64) ** 2, np.ones(win) / win, mode="valid")
        rms = float(np.sqrt(max(power.max(), 0.0)))
    return 20.0 * np.log10(max(rms, 1e-12))


def check_speech(audio: np.ndarray, sr: int, path: str | os.PathLike) -> None:
    """Refuse speech that is too short or silent, with a message that says so."""
    seconds = len(audio) / sr
    if seconds < MIN_SPEECH_SECONDS:
        raise AlignSTSError(
            f"{path}: only {seconds:.2f} s of audio; give at least {MIN_SPEECH_SECONDS} s of speech"
        )
    level = loudest_dbfs(audio, sr)
    if level < SILENCE_DBFS:
        raise AlignSTSError(
            f"{path}: the recording is silent (loudest part {level:.0f} dBFS); check the file or the microphone level"
        )


def load_speech(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Speech as mono float32 at its own rate (within 8-48 kHz), checked for length and silence."""
    audio, sr = to_work_rate(*load_audio(path, what="speech"))
    check_speech(audio, sr, path)
    return audio, sr


def save_audio(
    path: str | os.PathLike,
    audio: np.ndarray,
    sr: int,
    *,
    overwrite: bool = False,
    inputs: tuple = (),
) -> Path:
    """Write ``[n]`` audio as WAV or FLAC (by extension), atomically.

    Peaks above full scale are brought down rather than clipped.
    """
    import soundfile as sf

    out = check_output_path(path, inputs=inputs, overwrite=overwrite, suffixes=OUTPUT_FORMATS)
    fmt, subtype = OUTPUT_FORMATS[out.suffix.lower()]
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    with atomic_output(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out
