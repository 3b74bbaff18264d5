"""The neural engine: AlignSTS acoustic model + HiFi-GAN vocoder.

speech ─► pitch-flattened speech ─► content features [T_c, D] ┐
speech ─► Resemblyzer speaker embedding [256]                 ├─► AlignSTS ─► mel [T, 80] ─► HiFi-GAN ─► song
melody ─► target F0 on the model's frame grid [T]             ┘

The voice (where its weights are) comes from :mod:`alignsts_cli.voices`; the device and precision
from :mod:`alignsts_cli.runtime`. Long songs are cut at rests of the melody (and the matching pauses
of the speech, found by the syllable-to-note assignment of :mod:`alignsts_cli.analysis`) into chunks
of at most ``MAX_CHUNK_SECONDS``, converted one by one (batched on CUDA) and joined with short
cross-fades, so memory stays bounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alignsts_cli.analysis import SpeechAnalysis, assign_syllables
from alignsts_cli.audio import fade_envelope, resample
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.melody import Melody
from alignsts_cli.runtime import flush_denormals, pick_device, use_bf16_vocoder
from alignsts_cli.voices import VoiceModel

#: How the song gets the speaker's timbre: "model" leaves it to the model's speaker embedding; "restore" adds
#: the difference between the speech's and the song's average mel envelopes (:mod:`alignsts_cli.timbre`).
#: "model" is the default because the real-speech scorecard ranks it first for the bundled voice (README).
TIMBRE_MODES = ("model", "restore")
DEFAULT_TIMBRE = "model"


def check_timbre(mode: str) -> str:
    """``mode`` if it is one of ``TIMBRE_MODES``, else the user error naming the option."""
    if mode not in TIMBRE_MODES:
        raise AlignSTSError(f"--timbre {mode}: use one of {', '.join(TIMBRE_MODES)}")
    return mode
#: Longest stretch of melody converted at once, seconds.
MAX_CHUNK_SECONDS = 16.0
#: Cross-fade between chunks, seconds.
CHUNK_XFADE = 0.02
#: Audio per vocoder window (HiFiGAN.forward(window=)): the fastest of 0.5, 1 and 2 s for the official
#: vocoder on a 30 s input on the 2-core CPU this was written on (the context costs less as windows grow).
VOCODER_WINDOW_SECONDS = 2.0


@dataclass
class Chunk:
    t0: float  # melody seconds
    t1: float
    s0: float  # speech seconds
    s1: float


def plan_chunks(melody: Melody, syllables, speech_seconds: float, max_seconds: float = MAX_CHUNK_SECONDS,
                groups=None) -> list[Chunk]:
    """Cut a long melody at rests, and the speech at the matching syllable boundaries.

    Each chunk pairs a stretch of melody (at most ``max_seconds`` where rests allow) with
    the syllables the syllable-to-note plan gives it (``groups``, default ``assign_syllables``); a
    plan that sings syllables out of speech order is cut only where all earlier syllables stay before.
    """
    if melody.duration <= max_seconds or len(syllables) < 2:
        return [Chunk(0.0, melody.duration, 0.0, speech_seconds)]
    notes = melody.notes
    groups = groups if groups is not None else assign_syllables(syllables, notes)
    # Possible cuts after group g: (melody time, speech time, is it a rest?)
    cuts = []
    for g in range(len(groups) - 1):
        if max(i for s, _ in groups[:g + 1] for i in s) >= min(i for s, _ in groups[g + 1:] for i in s):
            continue  # the plan sings a later syllable before this cut: the speech cannot be cut here
        end_note, next_note = notes[groups[g][1][-1]], notes[groups[g + 1][1][0]]
        end_syl, next_syl = syllables[groups[g][0][-1]], syllables[groups[g + 1][0][0]]
        rest = next_note.start - end_note.end
        t = end_note.end + rest / 2 if rest > 0 else next_note.start
        cuts.append((t, (end_syl.end + next_syl.start) / 2, rest > 0.05))
    chunks, t_start, s_start = [], 0.0, 0.0
    while melody.duration - t_start > max_seconds:
        inside = [c for c in cuts if t_start + 1.0 < c[0] <= t_start + max_seconds]
        if not inside:  # one very long group: no cut possible, take it whole
            later = [c for c in cuts if c[0] > t_start + 1.0]
            if not later:
                break
            inside = [later[0]]
        rests = [c for c in inside if c[2]]
        t, s, _ = (rests or inside)[-1]
        chunks.append(Chunk(t_start, t, s_start, s))
        t_start, s_start = t, s
    chunks.append(Chunk(t_start, melody.duration, s_start, speech_seconds))
    return chunks


@dataclass
class ChunkInput:
    """What the acoustic model and the vocoder take for one chunk of one song."""

    content: np.ndarray  # [T_c, D] content features of the chunk's pitch-flattened speech
    f0: np.ndarray  # [T] target F0 (Hz, 0 = rest) on the mel grid
    noise: object  # torch [steps + 1, 1, 1, n_mels, T]: x_T, then one draw per diffusion step
    phases: object  # torch [1, harmonics + 1]: the NSF source's start phases (the first is 0)
    start: int  # first mel frame of the chunk in the song
    source_mel: np.ndarray | None  # [T_s, n_mels] the chunk's speech (voices w/o the adaptor or with reference_mel)
    speaker: np.ndarray  # [256] Resemblyzer embedding of the whole speech


@dataclass
class ChunkOutput:
    """The acoustic model's output for one chunk."""

    mel: np.ndarray  # [T, n_mels]
    codes: np.ndarray | None  # [T] rhythm codes (None without the rhythm adaptor)
    attention: np.ndarray  # [T, T_c]


@dataclass
class SongPlan:
    """One song between planning and rendering: its chunks, their inputs and the noise generator."""

    inputs: list[ChunkInput]
    chunks: list[Chunk]
    melody: Melody
    f0: np.ndarray  # [frames] target F0 of the whole song on the mel grid
    frames: int
    gen: object  # the torch.Generator the vocoder's noise is drawn from, after the chunks' draws
    speech_envelope: np.ndarray | None = None  # [n_mels] mean log-mel of the speech's voiced frames


@dataclass
class NeuralResult:
    audio: np.ndarray  # [n] at sample_rate
    sample_rate: int
    mel: np.ndarray  # [T, 80]
    f0: np.ndarray  # [T] target F0 on the mel grid
    attention: np.ndarray  # [T_chunk, T_c] of the longest chunk
    rhythm_codes: np.ndarray | None  # [T]
    chunks: list[Chunk] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds per stage: content, speaker, acoustic, vocoder


class NeuralEngine:
    """The loaded AlignSTS voice: build once, ``sing()`` many times (a batch reuses it)."""

    def __init__(self, voice: VoiceModel, device: str = "auto", pitch_correct: bool | None = None,
                 precision: str = "auto", timbre: str = DEFAULT_TIMBRE):
        import torch

        from alignsts_cli.features import FeatureExtractor
        from alignsts_cli.model.checkpoint import load_model, load_vocoder
        from alignsts_cli.profiles import get_profile

        self.voice = voice
        self.device = pick_device(device)
        self.half = self.device == "cuda"
        self.vocoder_bf16 = use_bf16_vocoder(precision, self.device)
        self.acoustic = load_model(voice.acoustic, device=self.device)
        self.vocoder, vcfg, vprofile = load_vocoder(voice.vocoder, device=self.device)
        cfg = self.acoustic.config
        if vprofile != cfg.audio_profile:
            raise AlignSTSError(
                f"the vocoder ({vprofile}) and the acoustic model ({cfg.audio_profile}) use different audio "
                "profiles; pair them correctly in the voice model"
            )
        self.profile = get_profile(cfg.audio_profile)
        kind = next((k for k in ("mfcc", "phones") if cfg.content_kind.startswith(k)), "wav2vec2-ctc")
        self.features = FeatureExtractor(kind, cfg.content_dim, content_model=voice.content, device=self.device)
        # A vocoder without an F0 input (no NSF source) only hears the pitch through the mel's harmonics, and
        # the pretrained 16 kHz one sings low voices up to half a semitone sharp: such voices get their F0 set
        # to the target by PSOLA after vocoding (a small shift, nearly transparent).
        self.pitch_correct = (not vcfg.nsf) if pitch_correct is None else pitch_correct
        self.batch_size = 4 if self.device == "cuda" else 1  # chunks per acoustic-model call
        self.timbre = check_timbre(timbre)
        self.torch = torch

    def _frames(self, seconds: float) -> int:
        return max(1, int(math.ceil(seconds * self.profile.sample_rate / self.profile.hop_length)))

    def sing(self, audio: np.ndarray, sr: int, melody: Melody, analysis: SpeechAnalysis, *, seed: int = 0,
             progress=None, groups=None) -> NeuralResult:
        """Sing ``[n]`` speech at ``sr`` to ``melody``; ``analysis`` is the speech's (:mod:`alignsts_cli.analysis`);
        ``groups``: a syllable-to-note plan, which places the chunk cuts (default: ``assign_syllables``)."""
        return self.sing_many([(audio, sr, melody, analysis, seed, groups)], progress=progress)[0]

    def sing_many(self, jobs, progress=None) -> list[NeuralResult]:
        """Several songs at once: ``jobs`` = [(audio, sr, melody, analysis, seed[, groups])]. On CUDA the chunks of all
        the songs share acoustic-model batches; every song gets what ``sing`` alone would give it. On the CPU
        denormal numbers count as 0 meanwhile (:class:`~alignsts_cli.runtime.flush_denormals`)."""
        with flush_denormals(self.device == "cpu"):
            return self._sing_many(jobs, progress)

    def _sing_many(self, jobs, progress=None) -> list[NeuralResult]:
        import time

        step = progress or (lambda frac: None)
        timings = [{"content": 0.0, "speaker": 0.0, "acoustic": 0.0, "vocoder": 0.0} for _ in jobs]
        plans = []
        for j, job in enumerate(jobs):
            plans.append(self._plan(*job, timings=timings[j]))
            step(0.1 * (j + 1) / len(jobs))
        items = [(j, k, item) for j, plan in enumerate(plans) for k, item in enumerate(plan.inputs)]
        outs: dict = {}
        batch = self.batch_size
        for i in range(0, len(items), batch):
            group = items[i:i + batch]
            t0 = time.perf_counter()
            for (j, k, _), out in zip(group, self._acoustic([g[2] for g in group])):
                outs[j, k] = out
            for j in {g[0] for g in group}:  # shared batches: time split evenly between their songs
                timings[j]["acoustic"] += (time.perf_counter() - t0) / len({g[0] for g in group})
            step(0.1 + 0.6 * min(1.0, (i + batch) / len(items)))
        results = []
        for j, plan in enumerate(plans):
            t0 = time.perf_counter()
            results.append(self._render(plan, [outs[j, k] for k in range(len(plan.inputs))], timings[j]))
            timings[j]["vocoder"] += time.perf_counter() - t0
            step(0.7 + 0.3 * (j + 1) / len(plans))
        return results

    def _plan(self, audio, sr, melody, analysis, seed, groups=None, *, timings) -> SongPlan:
        """Chunks, speaker embedding, content features, target F0 and noise draws of one song."""
        import time

        from alignsts_cli.features import CONTENT_SR, flat_speech

        torch = self.torch
        p = self.profile
        t0 = time.perf_counter()
        chunks = plan_chunks(melody, analysis.syllables, len(audio) / sr, groups=groups)
        speaker = self.features.speaker(audio, sr)
        t1 = time.perf_counter()
        timings["speaker"] += t1 - t0
        flat16 = flat_speech(audio, sr, analysis.median_f0, analysis.f0_floor, analysis.f0_ceiling)
        hop_s = p.hop_length / p.sample_rate
        total_frames = self._frames(melody.duration)
        f0_full = melody.frames(hop_s, total_frames)  # [T]
        gen = torch.Generator().manual_seed(int(seed))  # CPU draws: the same noise on every device
        inputs = []
        for k, ch in enumerate(chunks):
            a, b = int(round(ch.s0 * CONTENT_SR)), int(round(ch.s1 * CONTENT_SR))
            seg = flat16[a:b]
            if len(seg) < CONTENT_SR // 10:
                seg = flat16  # a chunk whose speech share is tiny: give it all the words
            content = self.features.content(seg)  # [T_c, D]
            f0_a = int(round(ch.t0 / hop_s))
            f0_b = total_frames if k == len(chunks) - 1 else int(round(ch.t1 / hop_s))
            f0 = f0_full[f0_a:f0_b]
            noise = torch.randn(self.acoustic.config.diffusion_steps + 1, 1, 1, p.n_mels, len(f0), generator=gen)
            phases = torch.rand(1, self.vocoder.config.nsf_harmonics + 1, generator=gen)
            phases[:, 0] = 0
            inputs.append(ChunkInput(content, f0, noise, phases, f0_a, self._source_mel(audio, sr, ch), speaker))
        timings["content"] += time.perf_counter() - t1
        return SongPlan(inputs, chunks, melody, f0_full, total_frames, gen, self._speech_envelope(audio, sr, analysis))

    def _speech_envelope(self, audio: np.ndarray, sr: int, analysis: SpeechAnalysis) -> np.ndarray | None:
        """Mean log-mel of the speech's loud voiced frames (``timbre.average_envelope``), for ``timbre="restore"``."""
        if self.timbre != "restore" or analysis.f0 is None:
            return None
        from alignsts_cli.analysis import STEP
        from alignsts_cli.profiles import mel_spectrogram
        from alignsts_cli.timbre import average_envelope

        p = self.profile
        mel = mel_spectrogram(resample(audio, sr, p.sample_rate), p)
        at = np.minimum((np.arange(len(mel)) * p.hop_length / p.sample_rate / STEP).astype(int), len(analysis.f0) - 1)
        return average_envelope(mel, analysis.f0[at] > 0, p.log_base)

    def _restore_envelope(self, plan: SongPlan, mels: list[np.ndarray]) -> list[np.ndarray]:
        """The chunks' mels with the speech's average envelope in place of the model's (``alignsts_cli.timbre``)."""
        from alignsts_cli.timbre import average_envelope, envelope_correction, mel_band_hz

        if plan.speech_envelope is None:
            return mels
        p = self.profile
        song = np.concatenate(mels, axis=0)
        voiced = np.zeros(len(song), bool)
        for item, mel in zip(plan.inputs, mels):
            voiced[item.start:item.start + len(mel)] = item.f0[: len(mel)] > 0
        song_env = average_envelope(song, voiced, p.log_base)
        if song_env is None:
            return mels
        fix = envelope_correction(plan.speech_envelope, song_env, mel_band_hz(p.n_mels, p.fmin, p.fmax), p.log_base)
        return [(mel + fix[None]).astype(np.float32) for mel in mels]

    def _render(self, plan: SongPlan, outs: list[ChunkOutput], timings: dict) -> NeuralResult:
        """Vocode one song's chunks and join them with cross-fades."""
        p = self.profile
        song = np.zeros(plan.frames * p.hop_length, dtype=np.float32)
        fade = int(CHUNK_XFADE * p.sample_rate)
        last = len(plan.inputs) - 1
        mels = self._restore_envelope(plan, [o.mel for o in outs])
        for k, (item, mel) in enumerate(zip(plan.inputs, mels)):
            wav = self._vocode(mel, item.f0, item.phases, plan.gen)
            if self.pitch_correct:
                wav = pitch_correct(wav, p.sample_rate, item.f0, p.hop_length / p.sample_rate)
            pos = item.start * p.hop_length
            env = fade_envelope(len(wav), fade, fade_in=k > 0, fade_out=k < last)
            end = min(len(song), pos + len(wav))
            song[pos:end] += (wav * env)[: end - pos]
        n_out = int(round(plan.melody.duration * p.sample_rate))
        song = song[:n_out] if len(song) >= n_out else np.pad(song, (0, n_out - len(song)))
        attn = max((o.attention for o in outs), key=lambda a: a.shape[0])
        codes = None if outs[0].codes is None else np.concatenate([o.codes for o in outs], axis=0)
        mel = np.concatenate(mels, axis=0)
        return NeuralResult(song, p.sample_rate, mel, plan.f0, attn, codes, plan.chunks, timings)

    def _source_mel(self, audio: np.ndarray, sr: int, ch: Chunk):
        """Mel [T_s, n_mels] of the chunk's speech: only voices without the rhythm adaptor (its rhythm curve) and
        reference_mel voices (its envelope) take it."""
        cfg = self.acoustic.config
        if cfg.use_rhythm_adaptor and not cfg.reference_mel:
            return None
        from alignsts_cli.profiles import mel_spectrogram

        seg = resample(audio[int(ch.s0 * sr):int(ch.s1 * sr)], sr, self.profile.sample_rate)
        return mel_spectrogram(seg, self.profile).astype(np.float32)  # [T_s, 80]

    def _acoustic(self, group: list[ChunkInput]) -> list[ChunkOutput]:
        """Acoustic model on one batch of chunks (padded with explicit lengths when more than one)."""
        torch = self.torch
        dev = self.device
        b = len(group)
        t_max = max(len(g.f0) for g in group)
        tc_max = max(len(g.content) for g in group)
        d = group[0].content.shape[1]
        content = torch.zeros(b, tc_max, d)
        f0 = torch.zeros(b, t_max)
        noise = torch.zeros(self.acoustic.config.diffusion_steps + 1, b, 1, self.profile.n_mels, t_max)
        for j, g in enumerate(group):
            content[j, : len(g.content)] = torch.from_numpy(g.content)
            f0[j, : len(g.f0)] = torch.from_numpy(g.f0.astype(np.float32))
            noise[:, j, :, :, : len(g.f0)] = g.noise[:, 0]
        kw = {}
        if b > 1:
            kw = {"lengths": torch.tensor([len(g.f0) for g in group], device=dev),
                  "content_lengths": torch.tensor([len(g.content) for g in group], device=dev)}
        if group[0].source_mel is not None:  # the speech's own rhythm (w/o adaptor) or envelope (reference_mel)
            from alignsts_cli.model import source_inputs

            ts = max(len(g.source_mel) for g in group)
            src = torch.full((b, ts, self.profile.n_mels), float(self.profile.log_floor))
            for j, g in enumerate(group):
                src[j, : len(g.source_mel)] = torch.from_numpy(g.source_mel)
            src_lengths = torch.tensor([len(g.source_mel) for g in group], device=dev) if b > 1 else None
            kw.update(source_inputs(self.acoustic.config, src.to(dev), src_lengths))
        spk = torch.from_numpy(np.stack([g.speaker for g in group])).to(dev)  # [B, 256]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            out = self.acoustic.infer(content.to(dev), spk, f0.to(dev), noise.to(dev), **kw)
        codes = out.get("rhythm_codes")
        res = []
        for j, g in enumerate(group):
            t, tc = len(g.f0), len(g.content)
            res.append(ChunkOutput(
                mel=out["mel"][j, :t].float().cpu().numpy(),
                codes=None if codes is None else codes[j, :t].cpu().numpy(),
                attention=out["attention"][j, :t, :tc].float().cpu().numpy(),
            ))
        return res

    def _vocode(self, mel: np.ndarray, f0: np.ndarray, phases, gen) -> np.ndarray:
        torch = self.torch
        from alignsts_cli.profiles import clip_for_vocoder

        m = clip_for_vocoder(torch.from_numpy(mel), self.profile).T[None].to(self.device)  # [1, 80, T]
        f = torch.from_numpy(f0.astype(np.float32))[None].to(self.device)  # [1, T]
        kw = {}
        if self.vocoder.config.nsf:
            n = len(f0) * self.profile.hop_length
            kw = {"phases": phases.to(self.device),
                  "noise": torch.randn(1, n, self.vocoder.config.nsf_harmonics + 1, generator=gen).to(self.device)}
        # Windows of ~VOCODER_WINDOW_SECONDS with real context (same audio as one pass, to float rounding):
        # a long chunk in one pass spills the CPU's caches and costs up to twice as much per second. On
        # CUDA the windows of a chunk go through as one batch.
        window = max(1, int(VOCODER_WINDOW_SECONDS * self.profile.sample_rate / self.profile.hop_length))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.vocoder_bf16):
            wav = self.vocoder(m, f if self.vocoder.config.nsf else None, window=window,
                               batch_windows=64 if self.device == "cuda" else 1, **kw)
        return wav[0, 0].float().cpu().numpy()


def pitch_correct(wav: np.ndarray, sr: int, f0: np.ndarray, hop_s: float) -> np.ndarray:
    """``[n]`` audio with its voiced F0 moved onto ``f0`` ``[T]`` (Hz on a ``hop_s`` grid) by Praat PSOLA."""
    import parselmouth
    from parselmouth.praat import call

    from alignsts_cli.audio import fit_length

    voiced = f0 > 0
    if not voiced.any() or len(wav) < int(0.05 * sr):
        return wav
    lo, hi = float(f0[voiced].min()), float(f0[voiced].max())
    snd = parselmouth.Sound(wav.astype(np.float64), sampling_frequency=sr)
    man = call(snd, "To Manipulation", 0.01, max(40.0, 0.6 * lo), min(1200.0, 1.6 * hi))
    tier = call("Create PitchTier", "target", snd.xmin, snd.xmax)
    for i in np.nonzero(voiced)[0]:
        call(tier, "Add point", (i + 0.5) * hop_s, float(f0[i]))
    call([man, tier], "Replace pitch tier")
    out = call(man, "Get resynthesis (overlap-add)").values[0].astype(np.float32)
    return fit_length(out, len(wav))
