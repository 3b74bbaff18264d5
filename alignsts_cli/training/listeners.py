"""Judges that listen to audio without a reference singing: a speech recogniser and a quality predictor.

Both ship their weights inside a PyPI package (no download at run time) and come with the ``eval``
extra (``pip install 'alignsts[eval]'``); :func:`require` names the extra when one is missing.

- :class:`Recognizer`: pocketsphinx 5 with its bundled US-English acoustic model, dictionary and
  language models (16 kHz; other rates are resampled). ``transcribe`` is open-vocabulary word
  recognition; ``phones`` is phone recognition; ``closed_set`` asks "which of these sentences was
  said?": the one whose dictionary pronunciation is nearest to the phones heard (chance = 1 / number
  of sentences). Phones survive singing far better than words do: a held vowel is still that vowel,
  while the word recogniser's language model gives up on sung rhythm (a grammar of the sentences
  found no path at all through most sung outputs, measured on the development set).
- :func:`word_error_rate` and :func:`edit_rate`: Levenshtein distance over the reference's length,
  of words (lower-cased, punctuation dropped, apostrophes kept) or of phones.
- :func:`quality`: DNSMOS P.835 (``speechmos``): predicted MOS of the signal (SIG), the background
  (BAK) and overall (OVRL), 1-5, on 16 kHz audio. Trained on noisy *speech*; for singing, read it
  as "how clean and natural does this voice sound" with the input speech as the reference point.
"""
from __future__ import annotations

import re

import numpy as np

from alignsts_cli.errors import AlignSTSError

#: The recogniser's and the quality predictor's sample rate.
RATE = 16000
#: Import name -> PyPI name of what the eval extra brings.
EXTRA = {"pocketsphinx": "pocketsphinx", "speechmos": "speechmos", "onnxruntime": "onnxruntime"}


def require(module: str):
    """Import ``module`` (one of the eval extra's), or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AlignSTSError(
            f"scoring needs {EXTRA.get(module, module)} ({exc}); install the evaluation extra: "
            "pip install 'alignsts[eval]'"
        ) from None


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``: letters, digits and apostrophes; everything else separates."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("’", "'")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of ``reference`` (:func:`words`); can exceed 1."""
    ref = words(reference)
    if not ref:
        raise ValueError("the reference transcript has no words")
    return edit_rate(ref, words(hypothesis))


def _pcm16k(audio: np.ndarray, sr: int) -> bytes:
    """``[n]`` float audio at ``sr`` -> 16 kHz int16 bytes, peak-normalised to -1 dBFS."""
    from alignsts_cli.audio import resample

    a = np.asarray(audio, dtype=np.float32)
    a = resample(a, sr, RATE) if sr != RATE else a
    peak = float(np.max(np.abs(a))) if a.size else 0.0
    if peak > 0:
        a = a * (0.89 / peak)
    return (np.clip(a, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


class Recognizer:
    """pocketsphinx's bundled US-English recogniser; build once (under a second), use for many.

    Two decoders share the acoustic model: words (the bundled language model and dictionary) and
    phones (the bundled phone language model, CMU's recommended phone-decoding settings).
    """

    def __init__(self):
        import os

        ps = require("pocketsphinx")
        model = os.path.join(os.path.dirname(ps.__file__), "model", "en-us")
        self._words = ps.Decoder(samprate=RATE, loglevel="FATAL")
        self._phones = ps.Decoder(samprate=RATE, loglevel="FATAL", allphone=os.path.join(model, "en-us-phone.lm.bin"),
                                  lw=2.0, beam=1e-20, pbeam=1e-20, backtrace=True)

    @staticmethod
    def _decode(decoder, audio: np.ndarray, sr: int) -> str:
        decoder.start_utt()
        decoder.process_raw(_pcm16k(audio, sr), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        """Open-vocabulary recognition of ``[n]`` audio at ``sr``: the words heard."""
        return self._decode(self._words, audio, sr)

    def phones(self, audio: np.ndarray, sr: int) -> list[str]:
        """The phones heard (CMU ARPAbet, no stress), silences and noises left out."""
        return [p for p in self._decode(self._phones, audio, sr).split() if p.isalpha() and p != "SIL"]

    def known(self, text: str) -> bool:
        """Whether every word of ``text`` is in the recogniser's dictionary (and there is a word)."""
        ws = words(text)
        return bool(ws) and all(self._words.lookup_word(w) is not None for w in ws)

    def phones_of(self, text: str) -> list[str]:
        """The dictionary's (first) pronunciation of ``text``, one phone list; ``known(text)`` first."""
        return [p for w in words(text) for p in self._words.lookup_word(w).split()]

    def closed_set(self, audio: np.ndarray, sr: int, sentences: list[str]) -> tuple[str | None, dict[str, float]]:
        """Which of ``sentences`` (each :meth:`known`) the audio holds: the one whose pronunciation is
        nearest (:func:`edit_rate`) to the phones heard, or None when several are equally near (an
        empty or formless output decides nothing). Returns (that sentence, {sentence: edit rate})."""
        heard = self.phones(audio, sr)
        rates = {s: edit_rate(self.phones_of(s), heard) for s in dict.fromkeys(sentences)}
        if len(rates) < 2:
            raise ValueError("a closed-set test needs at least two different sentences")
        best = min(rates.values())
        winners = [s for s, r in rates.items() if r == best]
        return (winners[0] if len(winners) == 1 else None), rates


def edit_rate(reference: list, hypothesis: list) -> float:
    """Levenshtein distance between two sequences over the reference's length (an error rate; can exceed 1)."""
    if not reference:
        raise ValueError("the reference is empty")
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(reference)


def quality(audio: np.ndarray, sr: int) -> dict:
    """DNSMOS P.835 of ``[n]`` audio at ``sr``: ``{"ovrl", "sig", "bak"}`` (1-5, higher is better)."""
    from alignsts_cli.audio import resample

    require("onnxruntime")
    dnsmos = require("speechmos.dnsmos")
    a = np.asarray(audio, dtype=np.float32)
    a = resample(a, sr, RATE) if sr != RATE else a
    a = np.clip(a, -1.0, 1.0)
    if not a.size or not np.any(a):
        raise ValueError("silent audio has no quality to predict")
    res = dnsmos.run(a, RATE)
    return {"ovrl": float(res["ovrl_mos"]), "sig": float(res["sig_mos"]), "bak": float(res["bak_mos"])}
