"""Rebuild the bundled examples: a spoken sentence and the melody it is sung to.

    python examples/make_examples.py

speech.wav: espeak-ng (install it with your package manager) speaking the words.
melody.mid: "Twinkle, Twinkle, Little Star" (traditional), 2 bars of 4/4 at 100 bpm
            per line, written with mido.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import mido

HERE = Path(__file__).resolve().parent
WORDS = "Twinkle, twinkle, little star. How I wonder what you are."
# (MIDI note, beats): C C G G A A G(half) | F F E E D D C(half)
# In the octave of C3, where a low speaking voice sings comfortably (see --auto-key for others).
TUNE = [(48, 1), (48, 1), (55, 1), (55, 1), (57, 1), (57, 1), (55, 2),
        (53, 1), (53, 1), (52, 1), (52, 1), (50, 1), (50, 1), (48, 2)]


def make_melody(path: Path, bpm: float = 100.0) -> None:
    tpb = 480
    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)])
    melody = mido.MidiTrack([mido.MetaMessage("track_name", name="Melody", time=0)])
    gap = 0  # each note is held for 95 % of its beats, a short breath before the next
    for note, beats in TUNE:
        held = int(tpb * beats * 0.95)
        melody.append(mido.Message("note_on", note=note, velocity=90, time=gap))
        melody.append(mido.Message("note_off", note=note, velocity=0, time=held))
        gap = tpb * beats - held
    mid.tracks += [conductor, melody]
    mid.save(str(path))


def make_speech(path: Path) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng)")
    subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(path), WORDS], check=True)


if __name__ == "__main__":
    make_melody(HERE / "melody.mid")
    make_speech(HERE / "speech.wav")
    print(f"wrote {HERE / 'melody.mid'} and {HERE / 'speech.wav'}")
