"""The phone recogniser's content: it follows what is said on a voice it never heard, and hides who says it.

Both figures are computed here on small data spoken by Flite and Festival: frame phone accuracy of the
bundled recogniser on the held-out voice awb (held-out sentences), and a linear speaker probe over all
seven voices on the posteriorgram against today's MFCC content (a linear probe and one with a hidden layer).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from alignsts_cli.model.phones import PHONES, log_mel, phone_index
from alignsts_cli.training import phones as P

#: Frame accuracy the bundled recogniser must keep on held-out voice and sentences (measured: see README).
ACCURACY_FLOOR = 0.55


@pytest.fixture(scope="module")
def recogniser():
    from alignsts_cli.features import load_bundled_phone_recogniser

    return load_bundled_phone_recogniser()


@pytest.fixture(scope="module")
def held_out_sentences():
    if shutil.which("flite") is None or shutil.which("festival") is None:
        pytest.fail("flite or Festival is not installed; run `bash scripts/install-festival.sh`")
    return P.sentence_split(400, 0)["test"][:10]


def test_phone_names_fold_onto_the_set():
    assert len(PHONES) == len(set(PHONES)) == 41
    assert phone_index("PAU") == 0 and phone_index("axr") == PHONES.index("er") and phone_index("q") == -1


def test_labels_follow_the_segment_ends():
    y = P._labels([("pau", 0.1), ("s", 0.25), ("pau", 0.3)], 0.3)
    assert len(y) == 16  # 0.3 s at 50 frames/s, plus the frame at 0
    assert (y[:5] == 0).all() and (y[5:12] == PHONES.index("s")).all() and (y[13:] == 0).all()


def test_sentences_hold_out_and_never_use_the_closed_set():
    from alignsts_cli.training.scorecard import HARVARD_LIST_1

    split = P.sentence_split(400, 0)
    assert not set(split["train"]) & set(split["test"])
    assert not set(HARVARD_LIST_1) & (set(split["train"]) | set(split["test"]))
    assert P.sentence_split(400, 0) == split  # seeded


@pytest.mark.parametrize("kind", P.PERTURBATIONS)
def test_each_perturbation_keeps_labels_in_step(kind):
    from tests.conftest import vowel

    audio = np.concatenate([np.zeros(3200, np.float32), vowel(120, 1.0), np.zeros(3200, np.float32)])
    labels = np.zeros(len(audio) // 320 + 1, np.int8)
    labels[10:60] = 5
    out, lab = P.perturb(audio, labels, kind, np.random.default_rng(0))
    assert np.isfinite(out).all() and len(log_mel(out)) - len(lab) in (0, 1)
    if kind not in ("clean", "rate"):
        assert len(out) == len(audio)
    if kind == "rate":  # the vowel moved with the time scale
        on = np.flatnonzero(lab == 5)
        assert abs(len(on) / 50 - len(out) / len(audio)) < 0.1


def test_recogniser_follows_the_words_of_a_voice_it_never_heard(recogniser, held_out_sentences, tmp_path):
    import torch

    awb = next(v for v in P.VOICES if v.name == "flite-awb")
    assert awb.held_out
    said = P.speak(awb, held_out_sentences, tmp_path)
    items = [{"x": log_mel(a), "y": y[: len(log_mel(a))]} for a, y in said]
    acc = P.frame_accuracy(recogniser, items)
    chance = max(np.bincount(np.concatenate([i["y"] for i in items]) + 1)) / sum(len(i["y"]) for i in items)
    print(f"held-out voice awb: frame phone accuracy {acc:.3f} (majority class {chance:.3f})")
    assert acc >= ACCURACY_FLOOR
    with torch.inference_mode():  # the posteriorgram is a distribution per frame at the content rate
        post = recogniser.posteriorgram(said[0][0])
    assert post.shape == (len(said[0][0]) // 320 + 1, len(PHONES))
    assert np.allclose(post.sum(axis=1), 1.0, atol=1e-4)


def test_posteriorgram_hides_the_speaker_better_than_mfcc(recogniser, tmp_path):
    from alignsts_cli.features import flat_speech, mfcc_content

    sentences = P.sentence_split(400, 0)["test"][:8]
    feats = {"mfcc": [], "phones": []}
    speakers, groups = [], []
    for vi, voice in enumerate(P.VOICES):
        for si, (audio, _) in enumerate(P.speak(voice, sentences, tmp_path)):
            flat = flat_speech(audio, P.SAMPLE_RATE, 120.0, 60, 500)
            feats["mfcc"].append(mfcc_content(flat, 20))
            feats["phones"].append(recogniser.posteriorgram(flat))
            speakers.append(vi)
            groups.append(si)
    # Per-utterance normalisation hides the speaker from a linear probe on MFCC frames (near chance either
    # way, so the linear figure is printed, not compared); a probe with one hidden layer finds it.
    linear = {k: P.speaker_probe(v, speakers, groups) for k, v in feats.items()}
    mlp = {k: P.speaker_probe(v, speakers, groups, hidden=256, steps=300) for k, v in feats.items()}
    print(f"speaker probe (balanced accuracy, chance {1 / len(P.VOICES):.3f}): linear {linear}, one hidden layer {mlp}")
    assert mlp["phones"] < 0.5 * mlp["mfcc"]
