"""PNG pictures: F0 over a spectrogram, the melody against what was sung."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alignsts_cli.files import atomic_output, check_output_path


def _figure(rows: int, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(11, height * rows), squeeze=False)
    return plt, fig, axes[:, 0]


def _spectrogram(ax, audio: np.ndarray, sr: int, fmax: float = 1500.0) -> None:
    """Log-magnitude spectrogram up to ``fmax`` Hz (where the F0 lives)."""
    n_fft = 2048 if sr > 24000 else 1024
    hop = n_fft // 8
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    mag = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-6)
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    keep = freqs <= fmax
    times = (np.arange(mag.shape[1]) * hop + n_fft / 2) / sr
    top = mag[keep].max() if mag[keep].size else 0
    ax.pcolormesh(times, freqs[keep], mag[keep], shading="auto", cmap="magma", vmin=top - 80, vmax=top)
    ax.set_ylabel("Hz")
    ax.set_ylim(0, fmax)


def _contour(ax, f0: np.ndarray, hop: float, **kw) -> None:
    t = np.arange(len(f0)) * hop
    ax.plot(t, np.where(f0 > 0, f0, np.nan), **kw)


def _save(plt, fig, path: Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def plot_f0(path, audio, sr, f0, hop, notes, *, name="", overwrite=False, inputs=()) -> Path:
    """F0 contour (and segmented notes) over the spectrogram of a recording."""
    out = check_output_path(path, suffixes=(".png",), overwrite=overwrite, inputs=inputs)
    plt, fig, (ax,) = _figure(1)
    fmax = min(sr / 2, max(1000.0, 1.5 * float(np.max(f0)) if np.any(f0 > 0) else 1000.0))
    _spectrogram(ax, audio, sr, fmax)
    _contour(ax, f0, hop, color="cyan", lw=1.5, label="F0")
    for n in notes:
        hz = 440 * 2 ** ((round(n.pitch) - 69) / 12)
        ax.hlines(hz, n.start, n.end, color="white", lw=3, alpha=0.6)
    ax.set_xlabel("seconds")
    ax.set_title(f"F0 of {name or Path(str(path)).stem}  ({len(notes)} notes, white)")
    ax.legend(loc="upper right")
    return _save(plt, fig, out)


def plot_conversion(path, speech, sr, song, melody, analysis, *, overwrite=False, groups=None) -> Path:
    """Two panels: the speech with its numbered syllables; the song with the target melody, the sung F0 and
    the syllable-to-note plan (``groups``: which syllables each run of notes sings)."""
    from alignsts_cli.melody import extract_f0

    out = check_output_path(path, suffixes=(".png",), overwrite=overwrite)
    plt, fig, (ax0, ax1) = _figure(2)
    fmax = float(min(sr / 2, max(800.0, 1.4 * melody.f0.max(), 3 * analysis.median_f0)))
    _spectrogram(ax0, speech, sr, fmax)
    if analysis.f0 is not None:
        _contour(ax0, analysis.f0, 0.01, color="cyan", lw=1.2, label="speech F0")
    for s in analysis.syllables:
        ax0.axvspan(s.core_start, s.core_end, color="white", alpha=0.15)
        ax0.axvline(s.start, color="white", lw=0.6, alpha=0.6)
    for k, s in enumerate(analysis.syllables):
        ax0.text((s.start + s.end) / 2, 0.93 * fmax, str(k), color="white", ha="center", va="top", fontsize=8)
    ax0.set_title(f"speech: {len(analysis.syllables)} syllables, numbered (shaded: vowel cores)")
    ax0.legend(loc="upper right")
    _spectrogram(ax1, song, sr, fmax)
    _contour(ax1, melody.f0, melody.hop, color="white", lw=4, alpha=0.5, label="target melody")
    sung, _ = extract_f0(song, sr)
    _contour(ax1, sung, 0.01, color="cyan", lw=1.2, label="sung F0")
    for gi, (s_idx, n_idx) in enumerate(groups or []):
        a, b = melody.notes[n_idx[0]].start, melody.notes[n_idx[-1]].end
        ax1.axvspan(a, b, color="white", alpha=0.08 if gi % 2 else 0.16)
        label = str(s_idx[0]) if len(s_idx) == 1 else f"{s_idx[0]}-{s_idx[-1]}"
        ax1.text((a + b) / 2, 0.93 * fmax, label, color="white", ha="center", va="top", fontsize=8)
    ax1.set_title("song: target melody against the sung F0" + (", and which syllables each note sings" if groups else ""))
    ax1.set_xlabel("seconds")
    ax1.legend(loc="upper right")
    return _save(plt, fig, out)


def plot_neural(path, result, profile, *, overwrite=False) -> Path:
    """The neural engine's output: mel with the target F0, and the aligner's attention map."""
    out = check_output_path(path, suffixes=(".png",), overwrite=overwrite)
    plt, fig, (ax0, ax1) = _figure(2)
    hop_s = profile.hop_length / profile.sample_rate
    mel = result.mel
    t = np.arange(mel.shape[0]) * hop_s
    ax0.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", extent=[0, t[-1] + hop_s, 0, mel.shape[1]])
    ax0.set_ylabel("mel bin")
    ax0.set_title("output mel, with the target F0 (right axis)")
    twin = ax0.twinx()
    f0 = result.f0[: mel.shape[0]]
    twin.plot(np.arange(len(f0)) * hop_s, np.where(f0 > 0, f0, np.nan), color="cyan", lw=1.2)
    twin.set_ylabel("Hz")
    ax0.set_xlabel("seconds")
    att = result.attention
    ax1.imshow(att.T, origin="lower", aspect="auto", cmap="viridis")
    ax1.set_xlabel("output frame (longest chunk)")
    ax1.set_ylabel("content frame")
    ax1.set_title(f"aligner attention ({len(result.chunks)} chunk(s))")
    return _save(plt, fig, out)


def plot_scorecard(path, speech, sr, melody, outputs, *, title="", overwrite=False) -> Path:
    """One scorecard pair: the input speech's and each output's spectrogram (0-8 kHz, where the
    consonants are), then every output's F0 against the target notes. ``outputs``: [(name, audio, sr)]."""
    from alignsts_cli.training.metrics import output_f0

    out = check_output_path(path, suffixes=(".png",), overwrite=overwrite)
    plt, fig, axes = _figure(len(outputs) + 2, height=2.1)
    top = lambda rate: min(rate / 2, 8000.0)  # noqa: E731
    _spectrogram(axes[0], speech, sr, top(sr))
    axes[0].set_title(f"input speech{': ' + title if title else ''}", fontsize=9)
    for ax, (name, audio, rate) in zip(axes[1:], outputs):
        _spectrogram(ax, audio, rate, top(rate))
        ax.set_title(name, fontsize=9)
    ax = axes[-1]
    _contour(ax, melody.f0, melody.hop, color="black", lw=5, alpha=0.25, label="melody")
    for k, (name, audio, rate) in enumerate(outputs):
        _contour(ax, output_f0(audio, rate, melody), melody.hop, lw=1.1, color=f"C{k}", label=name)
    voiced = melody.f0[melody.f0 > 0]
    if voiced.size:
        ax.set_yscale("log")
        ax.set_ylim(voiced.min() / 1.6, voiced.max() * 1.6)
    ax.set_ylabel("Hz")
    ax.set_xlabel("seconds")
    ax.set_title("F0 of each output against the melody", fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    end = max(melody.duration, len(speech) / sr)
    for a in axes:
        a.set_xlim(0, end)
    return _save(plt, fig, out, dpi=80)  # one per pair, many pairs: keep the folder small
