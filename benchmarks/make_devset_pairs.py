"""Build the real-speech scorecard's pairs: melodies for each recording of the development set, and the manifest.

    python benchmarks/make_devset_pairs.py [--devset ../shared/devset]

Writes ``benchmarks/devset/`` (one melody per pair) and ``benchmarks/devset-pairs.csv`` (columns id, speech,
melody, transcript, language, speaker, sex, kind; paths relative to the CSV), for

    alignsts evaluate --pairs benchmarks/devset-pairs.csv -s psola -s alignsts -o report/

Each recording gets two melodies, so that every kind occurs for male and female, narrow- and wide-band voices:

- four kinds of melody file: ``multitrack`` (type-1 MIDI: conductor track, an arpeggiated piano
  accompaniment with more notes than the tune, the tune on a track named "Lead Vocal", drums on channel
  10), ``tempo`` (one track, the tempo changes from slow to fast half-way), ``csv`` (a CREPE-style F0 CSV
  with vibrato, glides and rests), ``reference`` (a sung reference recording: a synthetic voice on
  vowels, with vibrato and breath, FLAC);
- ``in`` range (the tune's median 4 semitones above the speaker's median F0, as speech.json gives it) or
  ``out`` of range (an octave higher for a male voice, an octave lower for a female one);
- ``fewer``, ``equal`` or ``more`` notes than the recording's syllables, estimated from its length at
  4 syllables a second (0.6, 1 or 1.6 times that), never from our own analysis.

The tunes are random walks on a major scale from a seed per pair; the same command gives the same files.
The recordings themselves are only read for their names and metadata: nothing here is tuned to them.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "devset"
MANIFEST = ROOT / "benchmarks" / "devset-pairs.csv"
KINDS = ("multitrack", "tempo", "csv", "reference")
RATIOS = {"fewer": 0.6, "equal": 1.0, "more": 1.6}
SYLLABLES_PER_SECOND = 4.0
MAJOR = (0, 2, 4, 5, 7, 9, 11)
TPB = 480
HOP = 0.01


def tune(rng: np.random.Generator, n_notes: int) -> list[tuple[int, float]]:
    """(semitones from the tonic, beats) per note; None semitones = a rest. Phrases of 4-8 notes end on
    a long note and a short rest."""
    notes, degree = [], 0
    while sum(1 for s, _ in notes if s is not None) < n_notes:
        phrase = int(rng.integers(4, 9))
        for k in range(phrase):
            if sum(1 for s, _ in notes if s is not None) >= n_notes:
                break
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), -3, 9))
            octave, step = divmod(degree, 7)
            beats = 2.0 if k == phrase - 1 else float(rng.choice([0.5, 1.0, 1.0, 1.5]))
            notes.append((12 * octave + MAJOR[step], beats))
        notes.append((None, 0.5))
    return notes[:-1]


def semitone_median(notes, tonic: int) -> float:
    return float(np.median([tonic + s for s, _ in notes if s is not None]))


def write_midi(path: Path, notes, tonic: int, bpm: float, kind: str, rng: np.random.Generator) -> None:
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)])
    if kind == "tempo":  # slow first half, faster second half
        half = int(TPB * sum(b for _, b in notes) / 2)
        conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm * 1.5), time=half))
    lead = mido.MidiTrack([mido.MetaMessage("track_name", name="Lead Vocal" if kind == "multitrack" else "Tune", time=0)])
    gap = 0
    for s, beats in notes:
        ticks = int(TPB * beats)
        if s is None:
            gap += ticks
            continue
        held = int(ticks * 0.92)
        lead.append(mido.Message("note_on", note=tonic + s, velocity=90, time=gap))
        lead.append(mido.Message("note_off", note=tonic + s, velocity=0, time=held))
        gap = ticks - held
    mid.tracks += [conductor, lead]
    if kind == "multitrack":
        total = int(TPB * sum(b for _, b in notes))
        piano = mido.MidiTrack([mido.MetaMessage("track_name", name="Piano", time=0),
                                mido.Message("program_change", program=0, channel=1, time=0)])
        chords = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7))
        t, k = 0, 0
        while t < total:  # eighth-note arpeggios an octave below the tune: more notes than the tune
            chord = chords[(t // (4 * TPB)) % 4]
            pitch = tonic - 12 + chord[k % 3]
            piano.append(mido.Message("note_on", note=pitch, velocity=60, channel=1, time=0))
            piano.append(mido.Message("note_off", note=pitch, velocity=0, channel=1, time=TPB // 2))
            t, k = t + TPB // 2, k + 1
        drums = mido.MidiTrack([mido.MetaMessage("track_name", name="Drums", time=0)])
        for _ in range(total // TPB):
            drums.append(mido.Message("note_on", note=36, velocity=100, channel=9, time=0))
            drums.append(mido.Message("note_off", note=36, velocity=0, channel=9, time=TPB))
        mid.tracks += [piano, drums]
    mid.save(str(path))


def contour(notes, tonic: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    """F0 [T] on a 10 ms grid: notes with 5.5 Hz vibrato of 30 cents (after 150 ms), 50 ms glides, rests 0."""
    sec = 60.0 / bpm
    spans, t = [], 0.0
    for s, beats in notes:
        if s is not None:
            spans.append((t, t + beats * sec * 0.92, tonic + s))
        t += beats * sec
    n = int(math.ceil(t / HOP)) + 10
    times = np.arange(n) * HOP
    f0 = np.zeros(n)
    prev = None
    for a, b, m in spans:
        inside = (times >= a) & (times < b)
        tt = times[inside] - a
        vib = 0.3 * np.sin(2 * np.pi * 5.5 * tt) * np.clip((tt - 0.15) / 0.2, 0, 1)
        glide = 0.0 if prev is None or a - prev[1] > 0.06 else (prev[2] - m) * np.clip(1 - tt / 0.05, 0, 1)
        f0[inside] = 440.0 * 2 ** ((m + vib + glide - 69) / 12)
        prev = (a, b, m)
    return f0


def write_csv(path: Path, f0: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "frequency", "confidence"])
        for k, f in enumerate(f0):
            w.writerow([f"{k * HOP:.2f}", f"{f:.2f}", "0.93" if f > 0 else "0.08"])


def write_reference(path: Path, f0: np.ndarray, rng: np.random.Generator, sr: int = 16000) -> None:
    """A sung reference: harmonics on the contour (with jitter), through vowel formants that change at
    each note, a little breath noise, attack and release ramps."""
    from scipy.signal import lfilter

    t = np.arange(int(len(f0) * HOP * sr)) / sr
    f = np.interp(t, np.arange(len(f0)) * HOP, f0)
    on = f > 0
    f = np.where(on, f * (1 + 0.003 * rng.standard_normal(len(f)).cumsum() / np.sqrt(sr)), 0)
    phase = 2 * np.pi * np.cumsum(f) / sr
    src = np.zeros(len(t))
    for h in range(1, 40):
        src += np.where(h * f < sr / 2, np.cos(h * phase) / h ** 0.6, 0)
    gate = np.convolve(on.astype(float), np.ones(int(0.03 * sr)) / int(0.03 * sr), "same")
    src = src * gate + 0.01 * rng.standard_normal(len(t)) * gate
    vowels = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(int)])) == 1)  # note onsets (samples)
    out = np.zeros(len(t))
    bounds = list(edges) + [len(t)]
    for k in range(len(edges)):
        a, b = bounds[k], bounds[k + 1]
        seg = src[a:b]
        for fc, bw in zip(vowels[int(rng.integers(0, 5))], (80, 100, 120)):
            r = math.exp(-math.pi * bw / sr)
            seg = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], seg)
        out[a:b] = seg
    out *= 0.5 / (np.max(np.abs(out)) or 1)
    sf.write(str(path), out.astype(np.float32), sr, subtype="PCM_16", format="FLAC")


def designs(i: int, m: dict):
    """The two melodies of recording ``i`` (its speech.json entry ``m``): for each, ``(id, kind, where, ratio,
    notes, tonic, bpm, rng)``; ``rng`` then draws, in this order, the MIDI accompaniment or the contour and
    the reference's voice (so ``benchmarks/f0_trackers.py`` rebuilds a reference's exact F0)."""
    name = m["file"]
    choices = [(KINDS[i % 4], "in", list(RATIOS)[i % 3]),
               (KINDS[(i + 2) % 4], "out" if i % 2 == 0 else "in", list(RATIOS)[(i + 1) % 3])]
    for j, (kind, where, ratio) in enumerate(choices):
        rng = np.random.default_rng(1000 * i + j)
        n_notes = max(3, round(m["duration_s"] * SYLLABLES_PER_SECOND * RATIOS[ratio]))
        notes = tune(rng, n_notes)
        voice = 69 + 12 * math.log2(m["median_f0_hz"] / 440.0)
        shift = 0 if where == "in" else (12 if m["sex"] == "m" else -12)
        tonic = int(round(voice + 4 + shift - (semitone_median(notes, 0))))
        beats = sum(b for _, b in notes)
        seconds = max(1.6 * m["duration_s"], 0.3 * n_notes)
        bpm = float(np.clip(60.0 * beats / seconds, 50, 200))
        pid = f"{Path(name).stem.removeprefix('dev_')}--{kind}-{where}-{ratio}"
        yield pid, kind, where, ratio, notes, tonic, bpm, rng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset",
                    help="the development set (holds speech/ and speech/speech.json)")
    args = ap.parse_args()
    speech_dir = args.devset.resolve() / "speech"
    meta = json.loads((speech_dir / "speech.json").read_text())["files"]
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, m in enumerate(meta):
        name = m["file"]
        speaker = name.split("_")[1]  # dev_m1_... -> m1
        for j, (pid, kind, where, ratio, notes, tonic, bpm, rng) in enumerate(designs(i, m)):
            ext = {"multitrack": ".mid", "tempo": ".mid", "csv": ".f0.csv", "reference": ".flac"}[kind]
            path = OUT / f"{pid}{ext}"
            if kind in ("multitrack", "tempo"):
                write_midi(path, notes, tonic, bpm, kind, rng)
            elif kind == "csv":
                write_csv(path, contour(notes, tonic, bpm, rng))
            else:
                write_reference(path, contour(notes, tonic, bpm, rng), rng)
            rel_speech = Path(os.path.relpath(speech_dir / name, MANIFEST.parent))
            rows.append({"id": pid, "speech": rel_speech.as_posix(), "melody": path.relative_to(MANIFEST.parent).as_posix(),
                         "transcript": m.get("transcript") or "", "language": m["language"], "speaker": speaker,
                         "sex": m["sex"], "kind": f"{kind}, {'in range' if where == 'in' else 'out of range'}, {ratio} notes"})
    with MANIFEST.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} pairs to {MANIFEST.relative_to(ROOT)} and their melodies to {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
