"""Pitch trackers on sung audio with known notes: raw pitch accuracy, octave errors, voicing, speed.

    python benchmarks/f0_trackers.py [--devset ../shared/devset] [--json out.json] [--quick]

The sung audio, every frame's true F0 known (10 ms grid):

- ``devset``: the scorecard's sung reference FLACs (``benchmarks/devset/*--reference-*.flac``), their F0
  rebuilt by the generator itself (``make_devset_pairs.designs``, then ``contour``): vibrato, 50 ms glides,
  notes from 61 to 600 Hz (needs ``--devset`` for the recordings' metadata, else skipped);
- ``clean``: six melodies of our own (three male, 90-250 Hz, three female, 200-600 Hz), a harmonic voice with
  jitter and shimmer, vibrato of 30-60 cents, raised-cosine glides of 50-100 ms between legato notes, slow
  drift, one of five vowels per note, breath noise in the rests;
- ``room``: the same six in a room (0.3 s reverberation) with noise at 20 dB SNR.

Trackers: ``praat`` and ``swift`` (what ``--f0-method`` offers) and, when they are installed and load, FCPE
(torchfcpe) and CREPE tiny (torchcrepe), for comparison. Scores are ``training.metrics.tracker_scores``,
pooled over files; speed is the real-time factor over all the audio (after a warm-up), on this machine.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
SR = 16000
HOP = 0.01
VOWELS = ((800, 1150, 2900), (400, 2100, 2800), (300, 2700, 3300), (450, 800, 2830), (325, 700, 2530))


# --------------------------------------------------------------------------- sung audio with known F0

def sung_contour(notes, rng, vibrato_hz=5.5, vibrato_cents=40.0, glide=0.07):
    """F0 ``[T]`` on the 10 ms grid for ``notes`` = [(midi or None for a rest, seconds)], and each note's
    (start, end) in seconds. Legato notes glide into each other; vibrato fades in after 200 ms."""
    n = int(math.ceil((sum(d for _, d in notes) + 0.3) / HOP))
    times = np.arange(n) * HOP
    f0, spans, t, prev = np.zeros(n), [], 0.15, None
    phase = rng.uniform(0, 2 * np.pi)
    for m, d in notes:
        if m is not None:
            inside = (times >= t) & (times < t + d)
            tt = times[inside] - t
            vib = vibrato_cents / 100 * np.clip((tt - 0.2) / 0.25, 0, 1) * np.sin(2 * np.pi * vibrato_hz * tt + phase)
            bend = 0.0 if prev is None else (prev - m) * 0.5 * (1 + np.cos(np.pi * np.clip(tt / glide, 0, 1)))
            f0[inside] = 440 * 2 ** ((m + vib + bend + 0.05 * np.sin(2 * np.pi * 0.7 * tt) - 69) / 12)
            spans.append((t, t + d))
        prev = m
        t += d
    return f0, spans


def sing(f0, spans, rng, breath=0.015, sr=SR):
    """A voice singing ``f0`` (10 ms grid): 59 harmonics with jitter and shimmer, a vowel per note, breath."""
    from scipy.signal import lfilter

    t = np.arange(int(len(f0) * HOP * sr)) / sr
    on = f0[np.minimum(np.round(t / HOP).astype(int), len(f0) - 1)] > 0
    f = np.where(on, np.interp(t, np.arange(len(f0)) * HOP, f0), 0)
    phase = 2 * np.pi * np.cumsum(f * (1 + 0.002 * lfilter([0.02], [1, -0.98], rng.standard_normal(len(t))))) / sr
    src = sum(np.where(h * f < sr / 2 - 500, h ** -1.0 * np.sin(h * phase), 0) for h in range(1, 60))
    env = np.convolve(on.astype(float), np.hanning(int(0.04 * sr)) / np.hanning(int(0.04 * sr)).sum(), "same")
    x = src * (1 + 0.05 * lfilter([0.01], [1, -0.99], rng.standard_normal(len(t)))) * env
    x = x + breath * lfilter([1, -0.9], [1], rng.standard_normal(len(t))) * (0.3 + env)
    out = np.zeros(len(t))
    owner = np.zeros(len(t), int)
    for k, (a, b) in enumerate(spans):
        owner[int(a * sr):int(b * sr) + int(0.05 * sr)] = k
    vowel = rng.integers(0, len(VOWELS), max(1, len(spans)))
    for v in set(vowel.tolist()):
        y = x.copy()
        for fc, bw in zip(VOWELS[v], (80, 90, 120)):
            r = math.exp(-math.pi * bw / sr)
            y = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], y)
        y /= np.sqrt(np.mean(y[on] ** 2)) if on.any() else 1.0
        sel = vowel[owner] == v
        out[sel] = y[sel]
    out += 0.003 * rng.standard_normal(len(t))
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def in_a_room(x, rng, snr_db=20.0, sr=SR):
    """``x`` with 0.3 s of reverberation and noise at ``snr_db``."""
    from scipy.signal import fftconvolve, lfilter

    tt = np.arange(int(0.5 * sr)) / sr
    ir = rng.standard_normal(len(tt)) * np.exp(-tt / 0.12)
    ir[0] = 1.0
    wet = fftconvolve(x, ir)[:len(x)]
    y = x + 0.25 * wet / np.std(wet) * np.std(x)
    noise = lfilter([1], [1, -0.7], rng.standard_normal(len(x)))
    y = y + noise * np.sqrt(np.mean(y ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def random_tune(rng, lo, hi, n_notes=16):
    """A random walk of ``n_notes`` between MIDI ``lo`` and ``hi``, with a rest now and then."""
    notes, cur = [], int(rng.integers(lo + 3, hi - 3))
    for _ in range(n_notes):
        cur = int(np.clip(cur + rng.choice([-5, -3, -2, -1, 1, 2, 3, 4, 7, -7]), lo, hi))
        notes.append((cur, float(rng.choice([0.25, 0.4, 0.5, 0.75, 1.0]))))
        if rng.random() < 0.18:
            notes.append((None, float(rng.choice([0.15, 0.3, 0.5]))))
    return notes


#: (name, lowest Hz, highest Hz, vibrato rate Hz, depth cents, glide s) of our own melodies.
VOICES = (("male1", 90, 250, 5.5, 40, 0.07), ("male2", 90, 250, 5.0, 60, 0.1), ("male3", 90, 200, 6.0, 30, 0.05),
          ("female1", 200, 600, 5.8, 50, 0.06), ("female2", 200, 600, 5.2, 35, 0.09),
          ("female3", 250, 600, 6.0, 60, 0.08))


def own_material(n_voices=len(VOICES), n_notes=16):
    """``[(set, name, audio, true f0)]`` for our own melodies, clean and in a room."""
    out = []
    for k, (name, lo, hi, rate, depth, glide) in enumerate(VOICES[:n_voices]):
        rng = np.random.default_rng(77 + k)
        lo_m, hi_m = int(np.ceil(69 + 12 * np.log2(lo / 440) + 0.6)), int(np.floor(69 + 12 * np.log2(hi / 440) - 0.6))
        f0, spans = sung_contour(random_tune(rng, lo_m, hi_m, n_notes), rng, rate, depth, glide)
        x = sing(f0, spans, rng, breath=0.01 + 0.01 * (k % 3))
        out += [("clean", name, x, f0), ("room", name, in_a_room(x, rng), f0)]
    return out


def devset_material(devset: Path):
    """``[("devset", id, audio, true f0)]``: the scorecard's sung references with their generator's F0."""
    import soundfile as sf

    import make_devset_pairs as pairs

    meta = json.loads((devset / "speech" / "speech.json").read_text())["files"]
    out = []
    for i, m in enumerate(meta):
        for pid, kind, _, _, notes, tonic, bpm, rng in pairs.designs(i, m):
            if kind == "reference":
                x, sr = sf.read(str(pairs.OUT / f"{pid}.flac"), dtype="float32")
                assert sr == SR
                out.append(("devset", pid, x, pairs.contour(notes, tonic, bpm, rng)))
    return out


# --------------------------------------------------------------------------- trackers

def _ours(method):
    from alignsts_cli.melody import extract_f0

    return lambda x, sr: extract_f0(x, sr, method=method)[0]


def _fcpe():
    import torch
    import torchfcpe

    model = torchfcpe.spawn_bundled_infer_model(device="cpu")

    def track(x, sr):
        with torch.inference_mode():
            f0 = model.infer(torch.from_numpy(x)[None, :, None], sr=sr, decoder_mode="local_argmax", threshold=0.006,
                             f0_min=50.0, f0_max=1100.0, interp_uv=False,
                             output_interp_target_length=int(math.ceil(len(x) / sr / HOP)))
        return np.where(f0.squeeze().numpy() >= 50.0, f0.squeeze().numpy(), 0.0)
    return track


def _crepe_tiny():
    import torch
    import torchcrepe

    def track(x, sr):
        with torch.inference_mode():
            pitch, per = torchcrepe.predict(torch.from_numpy(x)[None], sr, hop_length=int(sr * HOP), fmin=50.0,
                                            fmax=1100.0, model="tiny", decoder=torchcrepe.decode.viterbi,
                                            return_periodicity=True, batch_size=512, device="cpu", pad=True)
        return np.where(per.squeeze().numpy() >= 0.21, pitch.squeeze().numpy(), 0.0)
    return track


TRACKERS = {"praat": lambda: _ours("praat"), "swift": lambda: _ours("swift"), "fcpe": _fcpe, "crepe-tiny": _crepe_tiny}


def measure(material, names=tuple(TRACKERS)):
    """``{tracker: {"sets": {set: scores}, "all": scores, "rtf": float}}``, or ``{"skipped": why}``."""
    from alignsts_cli.training.metrics import tracker_scores

    results = {}
    for name in names:
        try:
            track = TRACKERS[name]()
            track(material[0][2][:SR], SR)  # warm-up
        except Exception as exc:  # an optional tracker that is missing or does not load here
            results[name] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"}
            continue
        sets, busy, audio_s = {}, 0.0, 0.0
        for group, _, x, truth in material:
            t0 = time.perf_counter()
            est = track(x, SR)
            busy += time.perf_counter() - t0
            audio_s += len(x) / SR
            for key in (group, "all"):
                sets.setdefault(key, []).append(tracker_scores(truth, est))
        results[name] = {"sets": {k: _pool(v) for k, v in sets.items()}, "rtf": busy / audio_s}
    return results


def _pool(scores):
    """Frame-weighted means of per-file ``tracker_scores``."""
    f, r = sum(s["frames"] for s in scores), sum(s["rests"] for s in scores)
    out = {k: sum(s[k] * s["frames"] for s in scores) / max(1, f) for k in ("raw_pitch", "octave_errors", "recall")}
    out["false_alarm"] = sum(s["false_alarm"] * s["rests"] for s in scores) / max(1, r)
    out["frames"], out["rests"] = f, r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="two of our melodies only (a smoke test)")
    ap.add_argument("--trackers", default=",".join(TRACKERS))
    args = ap.parse_args()
    material = own_material(2, 8) if args.quick else own_material()
    if not args.quick and (args.devset / "speech" / "speech.json").exists():
        material = devset_material(args.devset) + material
    sets = sorted({g for g, *_ in material}, key=["devset", "clean", "room"].index)
    seconds = sum(len(x) for _, _, x, _ in material) / SR
    results = measure(material, args.trackers.split(","))
    print(f"{len(material)} files, {seconds:.0f} s of singing ({', '.join(sets)}); raw pitch accuracy within "
          "50 cents, octave errors and voicing on frames 30 ms or more from a voicing change")
    print()
    cols = ["raw pitch, all"] + [f"raw pitch, {k}" for k in sets]
    print(f"| tracker | {' | '.join(cols)} | octave errors | voiced recall | false alarm (clean rests) | "
          "real-time factor |")
    print("|---|" + "---:|" * (len(cols) + 4))
    for name, r in results.items():
        if "skipped" in r:
            print(f"| {name} | not run: {r['skipped']} |" + " |" * (len(cols) + 3))
            continue
        s = r["sets"]
        acc = " | ".join(f"{s[k]['raw_pitch']:.3f}" for k in ["all"] + sets)
        fa = s.get("clean", s["all"])["false_alarm"]
        print(f"| {name} | {acc} | {s['all']['octave_errors']:.4f} | {s['all']['recall']:.3f} | {fa:.3f} | "
              f"{r['rtf']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "files": len(material), "results": results}, indent=1))


if __name__ == "__main__":
    main()
