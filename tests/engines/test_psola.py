import numpy as np
import pytest
import soundfile as sf

from alignsts_cli import api
from alignsts_cli.melody import extract_f0
from alignsts_cli.training.metrics import raw_chroma_accuracy
from conftest import espeak, write_midi

# Four bars of 4/4 at 100 bpm (0.6 s a beat): quarters and halves around C3-A3.
FOUR_BARS = [(0, 1, 48), (1, 1, 48), (2, 1, 55), (3, 1, 55), (4, 1, 57), (5, 1, 57), (6, 2, 55),
             (8, 1, 53), (9, 1, 53), (10, 1, 52), (11, 1, 52), (12, 1, 50), (13, 1, 50), (14, 2, 48)]
TEMPO_100 = ((0, 600000),)


@pytest.mark.parametrize("voice,text,auto_key", [
    ("en-us", "Twinkle twinkle little star, how I wonder what you are.", False),
    ("en-us", "The quick brown fox jumps over the lazy dog near the river bank.", False),
    ("en-us+f3", "I have a dream that one day this nation will rise up.", True),
])
def test_psola_output_follows_the_notes(tmp_path, voice, text, auto_key):
    speech = espeak(tmp_path / "speech.wav", text, voice=voice)
    melody = write_midi(tmp_path / "tune.mid", FOUR_BARS, tempos=TEMPO_100)
    res = api.convert(speech, melody, tmp_path / "out.wav", engine="psola",
                      melody_options=api.MelodyOptions(auto_key=auto_key))
    song, sr = sf.read(res.output)
    target = res.melody
    sung, _ = extract_f0(song.astype(np.float32), sr)
    rca = raw_chroma_accuracy(target.f0, sung)
    print(f"\n{voice}: raw chroma accuracy {rca:.3f}, duration {len(song) / sr:.3f} s vs melody {target.duration:.3f} s")
    assert rca >= 0.90
    assert abs(len(song) / sr - target.duration) <= 0.05 * target.duration
    assert target.duration == pytest.approx(16 * 0.6 - 0.0, abs=0.02)


def test_vibrato_modulates_pitch(tmp_path):
    speech = espeak(tmp_path / "s.wav", "Hello there, my old friend.")
    melody = write_midi(tmp_path / "m.mid", [(0, 2, 50), (2, 2, 52), (4, 2, 50)], tempos=TEMPO_100)
    plain = api.convert(speech, melody, tmp_path / "plain.wav", engine="psola")
    vib = api.convert(speech, melody, tmp_path / "vib.wav", engine="psola", vibrato=50)

    def spread(path):
        x, sr = sf.read(path, dtype="float32")
        f0, _ = extract_f0(x, sr)
        cents = []
        for k in range(3):  # the steady middle of each 1.2 s note
            seg = f0[int((k * 1.2 + 0.5) / 0.01):int((k * 1.2 + 1.0) / 0.01)]
            seg = seg[seg > 0]
            cents.append(np.std(1200 * np.log2(seg / np.median(seg))))
        return float(np.median(cents))

    assert spread(vib.output) > 15 > spread(plain.output)
