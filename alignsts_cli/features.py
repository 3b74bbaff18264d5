"""Features of the speech for the neural engine: content, speaker embedding, pitch-flattened audio.

- Content (docs/audio-and-metrics.md): the speech with its pitch flattened to the speaker's
  median F0 (Praat PSOLA), at 16 kHz, through a content model. Kinds:
  ``wav2vec2-ctc`` (official: the CTC logits of ``facebook/wav2vec2-base-960h``,
  [T_c, 32] at 50 frames/s), ``mfcc`` (offline, needs no download: per-utterance
  normalised MFCCs [T_c, D] at 50 frames/s; they carry the speaker and the channel) and ``phones``
  (offline: the bundled phone recogniser's posteriorgram [T_c, 41] at 50 frames/s,
  ``alignsts_cli.model.phones``, trained to ignore the voice and the channel). The kind is recorded
  in the model config.
- Timbre: Resemblyzer's 256-d unit-norm utterance embedding.

Models are loaded once by ``FeatureExtractor`` and reused for every file of a batch.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from alignsts_cli.audio import fit_length, resample
from alignsts_cli.errors import AlignSTSError

CONTENT_SR = 16000
CONTENT_HOP = 320  # samples at 16 kHz: 50 frames/s, as wav2vec2
CONTENT_KINDS = ("wav2vec2-ctc", "mfcc", "phones")


def flatten_pitch(audio: np.ndarray, sr: int, target_hz: float, floor: float = 60.0, ceiling: float = 600.0):
    """``[n]`` speech resynthesised with a constant F0 of ``target_hz`` (unvoiced parts untouched)."""
    import parselmouth
    from parselmouth.praat import call

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=sr)
    man = call(snd, "To Manipulation", 0.01, floor, ceiling)
    tier = call("Create PitchTier", "flat", snd.xmin, snd.xmax)
    call(tier, "Add point", snd.xmin, float(target_hz))
    call(tier, "Add point", snd.xmax, float(target_hz))
    call([man, tier], "Replace pitch tier")
    out = call(man, "Get resynthesis (overlap-add)").values[0]
    return fit_length(out, len(audio)).astype(np.float32)


def flat_speech(audio: np.ndarray, sr: int, median_f0: float, floor: float, ceiling: float) -> np.ndarray:
    """What the content model hears: ``[n]`` speech at ``sr`` flattened to ``median_f0``, at 16 kHz ``[n16]``."""
    return resample(flatten_pitch(audio, sr, median_f0, floor, ceiling), sr, CONTENT_SR)


def mfcc_content(audio16: np.ndarray, n_mfcc: int) -> np.ndarray:
    """Per-utterance normalised MFCCs ``[T_c, n_mfcc]`` of 16 kHz audio, 50 frames/s."""
    import librosa

    m = librosa.feature.mfcc(y=audio16, sr=CONTENT_SR, n_mfcc=n_mfcc, n_fft=640, win_length=400,
                             hop_length=CONTENT_HOP, n_mels=64, center=True)  # [D, T_c]
    m = (m - m.mean(axis=1, keepdims=True)) / (m.std(axis=1, keepdims=True) + 1e-5)
    return m.T.astype(np.float32)


class FeatureExtractor:
    """Loads the content model and the speaker encoder once, for every file of a batch or a dataset.

    ``content_kind``: one of ``CONTENT_KINDS``; ``content_model``: a folder with a
    transformers Wav2Vec2ForCTC (``config.json`` + weights) for ``wav2vec2-ctc``.
    """

    def __init__(self, content_kind: str, content_dim: int, *, content_model: str | os.PathLike | None = None,
                 device: str = "cpu"):
        if content_kind not in CONTENT_KINDS:
            raise AlignSTSError(f"unknown content feature '{content_kind}'; this version knows {', '.join(CONTENT_KINDS)}")
        self.kind = content_kind
        self.dim = content_dim
        self.device = device
        self._w2v = None
        self._phones = None
        if content_kind == "phones":
            self._phones = load_bundled_phone_recogniser(device)
            if self._phones.cfg.phones != content_dim:
                raise AlignSTSError(f"the phone recogniser gives {self._phones.cfg.phones} features but the "
                                    f"acoustic model expects {content_dim}")
        if content_kind == "wav2vec2-ctc":
            if content_model is None:
                raise AlignSTSError("the wav2vec2 content model is not available; run `alignsts download-weights`")
            self._w2v = self._load_wav2vec2(Path(content_model))
        self._speaker = None

    def _load_wav2vec2(self, folder: Path):
        import torch
        from transformers import Wav2Vec2ForCTC
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # the CLI shows its own progress
        try:
            model = Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise AlignSTSError(
                f"{folder}: cannot load the wav2vec2 content model ({type(exc).__name__}); "
                "run `alignsts download-weights` to fetch it again"
            ) from None
        if model.config.vocab_size != self.dim:
            raise AlignSTSError(
                f"the content model gives {model.config.vocab_size} features but the acoustic model expects {self.dim}"
            )
        return model.eval().to(torch.device(self.device))

    @property
    def speaker_encoder(self):
        if self._speaker is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # webrtcvad's pkg_resources notice
                from resemblyzer import VoiceEncoder
            self._speaker = VoiceEncoder(device=self.device, verbose=False)
        return self._speaker

    def speaker(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """Resemblyzer embedding ``[256]`` (unit norm) of ``[n]`` speech."""
        wav16 = resample(audio, sr, CONTENT_SR)
        with _quiet_warnings():
            from resemblyzer import preprocess_wav

            wav = preprocess_wav(wav16, source_sr=CONTENT_SR)
        if len(wav) < CONTENT_SR // 4:  # the voice-activity trim left almost nothing: use it all
            wav = wav16 / (np.max(np.abs(wav16)) + 1e-9)
        return self.speaker_encoder.embed_utterance(wav.astype(np.float32)).astype(np.float32)

    def content(self, flat16: np.ndarray) -> np.ndarray:
        """Content features ``[T_c, D]`` of pitch-flattened 16 kHz speech ``[n]``."""
        if self.kind == "mfcc":
            return mfcc_content(flat16, self.dim)
        if self.kind == "phones":
            return self._phones.posteriorgram(flat16)
        import torch

        x = (flat16 - flat16.mean()) / (flat16.std() + 1e-7)  # the 960h feature extractor normalises
        with torch.inference_mode():
            logits = self._w2v(torch.from_numpy(x)[None].to(self.device)).logits[0]  # [T_c, 32]
        return logits.float().cpu().numpy()

    def content_of(self, audio: np.ndarray, sr: int, median_f0: float, floor: float, ceiling: float) -> np.ndarray:
        """Content features ``[T_c, D]`` of ``[n]`` speech (or singing) at ``sr``: flattened to ``median_f0``
        within the Praat range ``floor``-``ceiling`` (:func:`flat_speech`), then :meth:`content`."""
        return self.content(flat_speech(audio, sr, median_f0, floor, ceiling))


def load_bundled_phone_recogniser(device: str = "cpu"):
    """The phone recogniser that ``weights.lock`` lists as the bundled ``phones`` component (verified)."""
    from alignsts_cli import weights as W
    from alignsts_cli.model.phones import load_phone_recogniser

    comp = W.find(W.read_lock(), "phones")
    if comp is None:
        raise AlignSTSError("weights.lock lists no phone recogniser; reinstall alignsts")
    return load_phone_recogniser(next(iter(W.resolve(comp).files.values())), device=device)


class _quiet_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def content_frames(seconds: float) -> int:
    """Number of content frames for ``seconds`` of speech (50 frames/s)."""
    return int(math.floor(seconds * CONTENT_SR / CONTENT_HOP)) + 1
