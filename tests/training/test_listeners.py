"""The judges that need no reference singing (alignsts_cli/training/listeners.py): the recogniser and DNSMOS."""
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Melody, Note, render_notes
from alignsts_cli.training import listeners as L
from alignsts_cli.training.scorecard import HARVARD_LIST_1, vowel_control
from conftest import espeak

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_error_rates_by_hand():
    assert L.word_error_rate("The birch canoe.", "the birch canoe") == 0.0
    assert L.word_error_rate("it's easy to tell", "its easy to tell") == 0.25  # apostrophes are kept
    assert L.word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert L.word_error_rate("a b", "a b c d") == 1.0  # insertions count: the rate can pass 1
    assert L.edit_rate(["AH", "B"], []) == 1.0
    with pytest.raises(ValueError):
        L.word_error_rate("...", "a")


@pytest.fixture(scope="module")
def recognizer():
    return L.Recognizer()


@pytest.mark.parametrize("sentence", HARVARD_LIST_1[:2])
def test_recogniser_ranks_speech_above_a_stretched_copy_above_the_vowel_control(tmp_path, recognizer, sentence):
    audio, sr = sf.read(espeak(tmp_path / "s.wav", sentence), dtype="float32")
    stretched = librosa.effects.time_stretch(audio, rate=0.5)
    seconds = 2 * len(audio) / sr
    notes = [Note(k * seconds / 8, (k + 0.9) * seconds / 8, 50 + 2 * (k % 3)) for k in range(8)]
    control = vowel_control(audio, sr, Melody(f0=render_notes(notes), notes=notes))
    truth = recognizer.phones_of(sentence)
    per = {name: L.edit_rate(truth, recognizer.phones(x, sr))
           for name, x in (("speech", audio), ("stretched", stretched), ("control", control))}
    assert per["speech"] < per["stretched"] < per["control"], per
    assert per["control"] >= 0.95  # nothing of the sentence is left in one vowel
    for x in (audio, stretched):  # "which of the ten was said?": right, even at half speed
        chosen, rates = recognizer.closed_set(x, sr, list(HARVARD_LIST_1))
        assert chosen == sentence and len(rates) == 10
    chosen, _ = recognizer.closed_set(control, sr, list(HARVARD_LIST_1))
    assert chosen != sentence
    wer = {name: L.word_error_rate(sentence, recognizer.transcribe(x, sr)) for name, x in (("speech", audio),
                                                                                          ("control", control))}
    assert wer["speech"] <= wer["control"], wer
    assert recognizer.known(sentence) and not recognizer.known("zzqxv blorptang")


def test_quality_prefers_clean_speech_to_the_same_speech_in_noise(tmp_path):
    audio, sr = sf.read(espeak(tmp_path / "s.wav", HARVARD_LIST_1[2]), dtype="float32")
    rng = np.random.default_rng(0)
    noisy = audio + np.sqrt(np.mean(audio ** 2)) * rng.standard_normal(len(audio)).astype(np.float32)  # 0 dB SNR
    clean, dirty = L.quality(audio, sr), L.quality(np.clip(noisy, -1, 1), sr)
    for q in (clean, dirty):
        assert set(q) == {"ovrl", "sig", "bak"} and all(1.0 <= v <= 5.0 for v in q.values())
    assert clean["bak"] > dirty["bak"] + 0.5 and clean["ovrl"] > dirty["ovrl"]
    with pytest.raises(ValueError):
        L.quality(np.zeros(sr, np.float32), sr)


def test_a_missing_scoring_package_names_the_extra(monkeypatch):
    for name in ("pocketsphinx", "speechmos.dnsmos"):
        monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package that is not installed
    with pytest.raises(AlignSTSError, match=r"needs pocketsphinx .*pip install 'alignsts\[eval\]'"):
        L.Recognizer()
    with pytest.raises(AlignSTSError, match=r"pip install 'alignsts\[eval\]'"):
        L.quality(np.ones(16000, np.float32) * 0.1, 16000)
