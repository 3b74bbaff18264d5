"""Train and measure the phone recogniser (``alignsts_cli.model.phones``) on perturbed synthetic speech.

- **Voices.** Every English voice the Debian registry offers with phone timings: Flite's ``kal16``,
  ``awb``, ``rms``, ``slt`` (``flite -psdur``) and Festival's ``kal``, ``ked`` and ``slt`` HTS
  (its Segment relation). ``awb`` (Scottish English, male) and ``ked`` are held out: never trained on.
- **Sentences.** ``corpus.SENTENCES`` and seeded random word sequences from Festival's CMU lexicon
  (phone coverage beyond a small vocabulary); 15 % of each held out. Never the Harvard sentences
  (the scorecard's closed set) nor any real recording.
- **Perturbations** (``PERTURBATIONS``): vocal-tract length and pitch (Praat PSOLA), pitch
  flattening (what the content model hears in conversion), speaking rate, random EQ, 8 kHz telephone
  band with mu-law, MP3 at a low bit rate, noise, and room reverberation. Each training item gets a
  random chain of one to three; the measurement applies each alone to held-out voices and sentences.
- **Measured**: frame phone accuracy per held-out voice and per perturbation, and speaker probes (how
  well a linear softmax regression, and one with a hidden layer, recover which of the seven voices
  spoke a frame; lower is better) on the posteriorgram against today's MFCC content
  (``features.mfcc_content``).

    python -m alignsts_cli.training.phones data  WORK          # synthesise + perturb + features (npz)
    python -m alignsts_cli.training.phones train WORK -o alignsts_cli/bundled/phones.safetensors
    python -m alignsts_cli.training.phones measure WORK --model alignsts_cli/bundled/phones.safetensors

Needs ``flite`` and ``festival`` with its voices (``bash scripts/install-festival.sh``).
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignsts_cli.audio import fit_length, resample
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.model.phones import HOP, SAMPLE_RATE, log_mel, phone_index
from alignsts_cli.training import corpus

LEXICON = Path("/usr/share/festival/dicts/cmu/cmudict-0.4.out")
INSTALL_HINT = corpus.INSTALL_HINT


@dataclass(frozen=True)
class PhoneVoice:
    name: str
    engine: str  # "flite" | "festival"
    voice: str  # flite -voice NAME, or the Festival voice function
    held_out: bool = False


VOICES: tuple[PhoneVoice, ...] = (
    PhoneVoice("flite-kal", "flite", "kal16"),
    PhoneVoice("flite-rms", "flite", "rms"),
    PhoneVoice("flite-slt", "flite", "slt"),
    PhoneVoice("fest-kal", "festival", "voice_kal_diphone"),
    PhoneVoice("fest-slt", "festival", "voice_cmu_us_slt_arctic_hts"),
    PhoneVoice("flite-awb", "flite", "awb", held_out=True),
    PhoneVoice("fest-ked", "festival", "voice_ked_diphone", held_out=True),
)

PERTURBATIONS = ("clean", "vtl", "flat", "rate", "eq", "telephone", "mp3", "noise", "reverb")


# --------------------------------------------------------------------------- sentences

def random_sentences(n: int, seed: int) -> list[str]:
    """``n`` seeded sequences of 5-10 plain words from Festival's CMU lexicon."""
    if not LEXICON.is_file():
        raise AlignSTSError(f"Festival's CMU lexicon ({LEXICON}) is missing; {INSTALL_HINT}")
    words = sorted({m.group(1) for m in re.finditer(r'^\("([a-z]{2,9})" ', LEXICON.read_text(errors="replace"), re.M)})
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(5, 11)))).capitalize() + "." for _ in range(n)]


def sentence_split(n_random: int, seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}``: written and random sentences, 15 % of each held out."""
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}
    for group in (list(corpus.SENTENCES), random_sentences(n_random, seed)):
        order = rng.permutation(len(group))
        k = max(1, round(0.15 * len(group)))
        out["test"] += [group[i] for i in order[:k]]
        out["train"] += [group[i] for i in order[k:]]
    return out


# --------------------------------------------------------------------------- speaking with phone timings

def _labels(segments: list[tuple[str, float]], seconds: float) -> np.ndarray:
    """Frame labels ``[T]`` (index in ``PHONES``; -1 where unknown) at 50 frames/s."""
    n = int(seconds * SAMPLE_RATE) // HOP + 1
    t = np.arange(n) * HOP / SAMPLE_RATE
    ends = np.array([e for _, e in segments] + [np.inf])
    idx = np.array([phone_index(p) for p, _ in segments] + [0])
    return idx[np.searchsorted(ends, t, side="right")].astype(np.int8)


def _parse_segments(text: str) -> list[tuple[str, float]]:
    return [(p, float(e)) for p, e in re.findall(r"([a-z#]+):([0-9.]+)", text)]


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(x.mean(axis=1), sr, SAMPLE_RATE)


def _speak_flite(voice: str, sentence: str, workdir: Path, key: str):
    exe = shutil.which("flite")
    if exe is None:
        raise AlignSTSError(f"the phone corpus needs the flite synthesiser; {INSTALL_HINT}")
    out = workdir / f"{key}.wav"
    res = subprocess.run([exe, "-voice", voice, "-psdur", "-t", sentence, "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    return _read(out), _parse_segments(res.stdout)


def _speak_festival(voice: str, sentences: list[str], workdir: Path, key: str):
    lines = [f"({voice})"]
    for i, s in enumerate(sentences):
        wav = workdir / f"{key}-{i}.wav"
        lines.append(f"(set! u (utt.synth (Utterance Text {corpus._scheme_string(s)})))")
        lines.append(f'(format t "SEG {i} ")')
        lines.append("(mapcar (lambda (s) (format t \"%s:%f \" (item.name s) (item.feat s \"end\"))) "
                     "(utt.relation.items u 'Segment))")
        lines.append('(format t "\\n")')
        lines.append(f"(utt.save.wave u {corpus._scheme_string(str(wav))} 'riff)")
    text = corpus._run_festival("\n".join(lines) + "\n", workdir, key, timeout=1800)
    segs = {int(m.group(1)): _parse_segments(m.group(2)) for m in re.finditer(r"^SEG (\d+) (.*)$", text, re.M)}
    if len(segs) != len(sentences):
        raise AlignSTSError(f"Festival's {voice} did not speak every sentence; {INSTALL_HINT}")
    return [(_read(workdir / f"{key}-{i}.wav"), segs[i]) for i in range(len(sentences))]


def speak(voice: PhoneVoice, sentences: list[str], workdir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(audio16, labels[T]), ...]``: each sentence spoken by ``voice``, labelled frame by frame."""
    if voice.engine == "flite":
        with ThreadPoolExecutor(2) as pool:
            said = list(pool.map(lambda a: _speak_flite(voice.voice, a[1], workdir, f"{voice.name}-{a[0]}"),
                                 enumerate(sentences)))
    else:
        said = []
        for start in range(0, len(sentences), 60):
            said += _speak_festival(voice.voice, sentences[start:start + 60], workdir, f"{voice.name}-{start}")
    return [(a, _labels(s, len(a) / SAMPLE_RATE)) for a, s in said]


# --------------------------------------------------------------------------- perturbations

def _praat_rate(audio: np.ndarray, factor: float) -> np.ndarray:
    """Speech ``factor`` times longer (PSOLA, pitch kept)."""
    import parselmouth
    from parselmouth.praat import call

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=SAMPLE_RATE)
    man = call(snd, "To Manipulation", 0.01, 60, 500)
    dur = call("Create DurationTier", "rate", snd.xmin, snd.xmax)
    call(dur, "Add point", snd.xmin, float(factor))
    call([man, dur], "Replace duration tier")
    return call(man, "Get resynthesis (overlap-add)").values[0].astype(np.float32)


def _eq(audio: np.ndarray, rng) -> np.ndarray:
    """A random spectral tilt and three peaking bands of +/-10 dB (a microphone and a room's colour)."""
    spec = np.fft.rfft(audio)
    f = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(f, 50.0) / 1000.0)
    gain_db = rng.uniform(-4, 4) * octaves
    for _ in range(3):
        centre = np.log2(rng.uniform(150, 6000) / 1000.0)
        gain_db += rng.uniform(-10, 10) * np.exp(-0.5 * ((octaves - centre) / rng.uniform(0.2, 0.8)) ** 2)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=len(audio)).astype(np.float32)


def _telephone(audio: np.ndarray, rng) -> np.ndarray:
    """8 kHz, 300-3400 Hz, 8-bit mu-law, back at 16 kHz."""
    x = resample(audio, SAMPLE_RATE, 8000)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    spec[(f < rng.uniform(200, 400)) | (f > rng.uniform(3200, 3600))] = 0
    x = np.fft.irfft(spec, n=len(x))
    x = x / (np.max(np.abs(x)) + 1e-9) * 0.9
    mu = 255.0
    q = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) + 1) / 2 * mu)
    y = q / mu * 2 - 1
    x = np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu
    return fit_length(resample(x.astype(np.float32), 8000, SAMPLE_RATE), len(audio))


def _mp3(audio: np.ndarray, rng) -> np.ndarray:
    """Through an MP3 encoder at a low bit rate and back, re-aligned to the input."""
    import soundfile as sf

    buf = io.BytesIO()
    x = audio / (np.max(np.abs(audio)) + 1e-9) * 0.8
    sf.write(buf, x, SAMPLE_RATE, format="MP3", compression_level=float(rng.uniform(0.5, 0.95)))
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    lag = int(np.argmax(np.correlate(y[:8000 + 3000], x[:8000], mode="valid"))) if len(y) > 11000 else 0
    return fit_length(y[lag:], len(audio))


def _noise(audio: np.ndarray, rng) -> np.ndarray:
    """White or pink noise at 5-30 dB SNR."""
    n = rng.standard_normal(len(audio))
    if rng.random() < 0.5:
        spec = np.fft.rfft(n)
        spec /= np.sqrt(np.maximum(np.fft.rfftfreq(len(n), 1 / SAMPLE_RATE), 20.0))
        n = np.fft.irfft(spec, n=len(n))
    snr = rng.uniform(5, 30)
    p = np.mean(audio ** 2) + 1e-12
    return (audio + n * np.sqrt(p / (np.mean(n ** 2) + 1e-12) / 10 ** (snr / 10))).astype(np.float32)


def _reverb(audio: np.ndarray, rng) -> np.ndarray:
    """A synthetic room (exponentially decaying noise, RT60 0.2-0.9 s) mixed with the direct sound."""
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.2, 0.9)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 0
    ir *= rng.uniform(0.3, 1.5) / (np.sqrt(np.sum(ir ** 2)) + 1e-9)
    ir[0] = 1.0
    return fftconvolve(audio, ir)[: len(audio)].astype(np.float32)


def perturb(audio: np.ndarray, labels: np.ndarray, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """``audio`` (16 kHz) and its frame ``labels`` after one perturbation (``rate`` rescales the labels)."""
    if kind == "clean":
        return audio, labels
    if kind == "vtl":
        out = corpus.transform_voice(audio, float(rng.uniform(0.82, 1.22)), float(rng.uniform(0.65, 1.6)), 60, 500,
                                     seed=int(rng.integers(1 << 30)))
        return out, labels
    if kind == "flat":
        from alignsts_cli.features import flatten_pitch

        return flatten_pitch(audio, SAMPLE_RATE, float(rng.uniform(85, 260)), 60, 500), labels
    if kind == "rate":
        factor = float(rng.uniform(0.75, 1.35))
        out = _praat_rate(audio, factor)
        n = len(out) // HOP + 1
        src = np.minimum((np.arange(n) / factor).round().astype(int), len(labels) - 1)
        return out, labels[src]
    fn = {"eq": _eq, "telephone": _telephone, "mp3": _mp3, "noise": _noise, "reverb": _reverb}[kind]
    return fn(audio, rng), labels


def _featurise(job) -> tuple[np.ndarray, np.ndarray]:
    audio, labels, kinds, seed = job
    rng = np.random.default_rng(seed)
    for kind in kinds:
        audio, labels = perturb(audio, labels, kind, rng)
    audio = audio * float(rng.uniform(0.1, 0.9)) / (np.max(np.abs(audio)) + 1e-9)
    x = log_mel(audio)
    n = min(len(x), len(labels))
    return x[:n].astype(np.float16), labels[:n]


# --------------------------------------------------------------------------- the data

def make_data(work: Path, *, n_random: int = 400, variants: int = 2, seed: int = 0, workers: int = 2,
              voices: tuple[PhoneVoice, ...] = VOICES, perturbed: bool = True, log=print) -> Path:
    """Speak, perturb and featurise; write ``work/phones-data.npz`` (train and test sets) and return it.

    ``perturbed=False`` leaves the training items clean (the ablation; the test set is perturbed as always)."""
    work.mkdir(parents=True, exist_ok=True)
    split = sentence_split(n_random, seed)
    rng = np.random.default_rng(seed + 1)
    jobs = {"train": [], "test": []}
    meta = {"train": [], "test": []}
    with tempfile.TemporaryDirectory(prefix="alignsts-phones-") as tmp:
        for vi, voice in enumerate(voices):
            t0 = time.time()
            sets = ["test"] if voice.held_out else ["train", "test"]
            for part in sets:
                said = speak(voice, split[part], Path(tmp))
                for si, (audio, labels) in enumerate(said):
                    if part == "train":
                        for _ in range(variants):
                            kinds = list(rng.choice(PERTURBATIONS[1:], size=int(rng.integers(1, 4)), replace=False))
                            if rng.random() < 0.15 or not perturbed:
                                kinds = []
                            order = [k for k in PERTURBATIONS if k in kinds]  # voice first, channel last
                            jobs[part].append((audio, labels, order, int(rng.integers(1 << 31))))
                            meta[part].append((vi, si, "+".join(order) or "clean"))
                    else:
                        for kind in PERTURBATIONS:
                            jobs[part].append((audio, labels, [kind], int(rng.integers(1 << 31))))
                            meta[part].append((vi, si, kind))
            log(f"{voice.name}: spoken in {time.time() - t0:.0f} s")
    arrays = {}
    with ProcessPoolExecutor(workers) as pool:
        for part in ("train", "test"):
            t0 = time.time()
            done = list(pool.map(_featurise, jobs[part], chunksize=8))
            lengths = np.array([len(x) for x, _ in done])
            arrays[f"{part}_x"] = np.concatenate([x for x, _ in done])
            arrays[f"{part}_y"] = np.concatenate([y for _, y in done])
            arrays[f"{part}_len"] = lengths
            arrays[f"{part}_voice"] = np.array([m[0] for m in meta[part]], np.int16)
            arrays[f"{part}_sentence"] = np.array([m[1] for m in meta[part]], np.int32)
            arrays[f"{part}_perturbation"] = np.array([m[2] for m in meta[part]])
            log(f"{part}: {len(done)} items, {lengths.sum() / 50 / 3600:.2f} h, featurised in {time.time() - t0:.0f} s")
    arrays["voices"] = np.array([v.name for v in voices])
    arrays["held_out"] = np.array([v.held_out for v in voices])
    out = work / "phones-data.npz"
    np.savez(out, **arrays)
    (work / "phones-data.json").write_text(json.dumps({"seed": seed, "n_random": n_random, "variants": variants,
                                                       "sentences": split}, indent=1))
    return out


def load_data(path: Path, part: str) -> list[dict]:
    """The items of ``part`` ("train"/"test"): dicts of ``x`` [T, 80], ``y`` [T], voice, sentence, perturbation."""
    with np.load(path) as d:  # each key read once: an NpzFile reads its array again on every access
        x, y, lengths = d[f"{part}_x"], d[f"{part}_y"], d[f"{part}_len"]
        voices, which = list(d["voices"]), d[f"{part}_voice"]
        sentences, kinds = d[f"{part}_sentence"], d[f"{part}_perturbation"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [{"x": x[a:b], "y": y[a:b], "voice": voices[v], "sentence": int(s), "perturbation": str(k)}
            for a, b, v, s, k in zip(offsets[:-1], offsets[1:], which, sentences, kinds)]


# --------------------------------------------------------------------------- training

def train(data: Path, out: Path, *, minutes: float = 30.0, seed: int = 0, batch_frames: int = 12000,
          lr: float = 2e-3, log=print) -> dict:
    """Train a recogniser for about ``minutes`` (Adam, one-cycle schedule); save to ``out``; return its figures."""
    import torch

    from alignsts_cli.model.phones import PhoneRecogniser, save_phone_recogniser

    torch.manual_seed(seed)
    items = load_data(data, "train")
    rng = np.random.default_rng(seed)
    model = PhoneRecogniser()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    seg = 200  # frames per training crop (4 s)
    crops_per_batch = batch_frames // seg
    t0 = time.time()
    step = 0
    losses = []
    while (elapsed := time.time() - t0) < minutes * 60:
        frac = elapsed / (minutes * 60)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, frac / 0.05) * 0.5 * (1 + np.cos(np.pi * frac))
        xs, ys = [], []
        for i in rng.integers(len(items), size=crops_per_batch):
            it = items[i]
            start = int(rng.integers(max(1, len(it["y"]) - seg + 1)))
            x = np.zeros((seg, it["x"].shape[1]), np.float32)
            y = np.full(seg, -1, np.int64)
            piece = slice(start, start + seg)
            n = len(it["y"][piece])
            x[:n], y[:n] = it["x"][piece], it["y"][piece]
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.stack(xs))
        x = x * torch.exp(torch.randn(x.shape[0], 1, 1) * 0.1)  # scale jitter
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(np.stack(ys)).reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log(f"step {step}  loss {np.mean(losses[-100:]):.3f}  {elapsed / 60:.1f} min")
    figures = {"steps": step, "minutes": round((time.time() - t0) / 60, 1), "final_loss": float(np.mean(losses[-100:]))}
    save_phone_recogniser(model, out, meta={"training": figures})
    return figures


# --------------------------------------------------------------------------- measuring

def frame_accuracy(model, items: list[dict]) -> float:
    """Share of labelled frames whose most probable phone is the label."""
    import torch

    right = total = 0
    with torch.inference_mode():
        for it in items:
            pred = model(torch.from_numpy(it["x"].astype(np.float32))[None])[0].argmax(-1).numpy()
            keep = it["y"] >= 0
            right += int((pred[keep] == it["y"][keep]).sum())
            total += int(keep.sum())
    return right / max(1, total)


def speaker_probe(features: list[np.ndarray], speakers: list[int], groups: list[int], *, hidden: int = 0,
                  seed: int = 0, steps: int = 300) -> float:
    """Balanced accuracy of a probe predicting the speaker of each frame (chance: 1 / speakers).

    ``features[i]`` [T_i, D] of utterance i, spoken by ``speakers[i]``; utterances whose ``groups[i]``
    (the sentence) is odd are the probe's test set, so it is tested on sentences it was not fitted on.
    ``hidden=0``: a linear softmax regression (L-BFGS, ``steps`` iterations); ``hidden=H``: one hidden
    layer of H ReLU units (Adam, ``steps`` batches of 1,024 frames), which finds what per-utterance
    normalisation hides from a linear probe. Features are standardised on the fitting frames; every
    speaker weighs the same.
    """
    import torch

    torch.manual_seed(seed)
    speakers_ = sorted(set(speakers))
    fit = [i for i, g in enumerate(groups) if g % 2 == 0]
    test = [i for i, g in enumerate(groups) if g % 2 == 1]

    def stack(ids):
        x = np.concatenate([features[i] for i in ids]).astype(np.float32)
        y = np.concatenate([np.full(len(features[i]), speakers_.index(speakers[i])) for i in ids])
        return torch.from_numpy(x), torch.from_numpy(y)

    xf, yf = stack(fit)
    xt, yt = stack(test)
    mu, sd = xf.mean(0), xf.std(0) + 1e-5
    xf, xt = (xf - mu) / sd, (xt - mu) / sd
    weight = 1.0 / torch.bincount(yf, minlength=len(speakers_)).float().clamp(min=1)
    weight = weight / weight.mean()
    n = len(speakers_)
    if hidden:
        probe = torch.nn.Sequential(torch.nn.Linear(xf.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n))
        opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(len(xf), (1024,))
            loss = torch.nn.functional.cross_entropy(probe(xf[idx]), yf[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        probe = torch.nn.Linear(xf.shape[1], n)
        opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(probe(xf), yf, weight=weight)
            loss.backward()
            return loss

        opt.step(closure)
    with torch.inference_mode():
        pred = probe(xt).argmax(-1)
    return float(np.mean([float((pred[yt == k] == k).float().mean()) for k in range(n) if (yt == k).any()]))


def measure(data: Path, model_path: Path, *, log=print) -> dict:
    """Phone accuracy per voice and per perturbation on held-out sentences; the speaker probe against MFCC."""
    from alignsts_cli.model.phones import load_phone_recogniser

    model = load_phone_recogniser(model_path)
    with np.load(data) as d:
        held = {str(v) for v, h in zip(d["voices"], d["held_out"]) if h}
    items = load_data(data, "test")
    result = {"accuracy": {}, "by_perturbation": {}}
    for voice in sorted({it["voice"] for it in items}):
        result["accuracy"][voice] = round(frame_accuracy(model, [i for i in items if i["voice"] == voice]), 3)
    for kind in PERTURBATIONS:
        chosen = [i for i in items if i["voice"] in held and i["perturbation"] == kind]
        result["by_perturbation"][kind] = round(frame_accuracy(model, chosen), 3)
    result["held_out_voices"] = sorted(held)
    log(json.dumps(result, indent=1))
    return result


def probe_against_mfcc(model_path: Path, *, sentences: int = 24, seed: int = 0, log=print) -> dict:
    """The speaker probe on clean held-out sentences of every voice: posteriorgram vs today's MFCC content.

    Both see what conversion gives them: the speech flattened to its median F0 (``features.flat_speech``).
    """
    from alignsts_cli.features import flat_speech, mfcc_content
    from alignsts_cli.model.phones import load_phone_recogniser

    model = load_phone_recogniser(model_path)
    test = sentence_split(400, seed)["test"][:sentences]
    feats = {"mfcc": [], "phones": []}
    speakers, groups = [], []
    with tempfile.TemporaryDirectory(prefix="alignsts-probe-") as tmp:
        for vi, voice in enumerate(VOICES):
            for si, (audio, _) in enumerate(speak(voice, test, Path(tmp))):
                flat = flat_speech(audio, SAMPLE_RATE, _median_f0(audio), 60, 500)
                feats["mfcc"].append(mfcc_content(flat, 20))
                feats["phones"].append(model.posteriorgram(flat))
                speakers.append(vi)
                groups.append(si)
    result = {f"{probe}_{k}": round(speaker_probe(v, speakers, groups, hidden=h, steps=400 if h else 300,
                                                  seed=seed), 3)
              for probe, h in (("linear", 0), ("mlp", 256)) for k, v in feats.items()}
    result["chance"] = round(1 / len(VOICES), 3)
    log(json.dumps(result))
    return result


def _median_f0(audio: np.ndarray) -> float:
    from alignsts_cli.melody import extract_f0

    f0 = extract_f0(audio, SAMPLE_RATE, floor=60, ceiling=500)[0]
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if len(voiced) else 120.0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m alignsts_cli.training.phones", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("data")
    a.add_argument("work", type=Path)
    a.add_argument("--random-sentences", type=int, default=400)
    a.add_argument("--variants", type=int, default=2)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--no-perturbations", action="store_true", help="clean training items (the ablation)")
    b = sub.add_parser("train")
    b.add_argument("work", type=Path)
    b.add_argument("-o", "--out", type=Path, required=True)
    b.add_argument("--minutes", type=float, default=30.0)
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("measure")
    c.add_argument("work", type=Path)
    c.add_argument("--model", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "data":
        make_data(args.work, n_random=args.random_sentences, variants=args.variants, seed=args.seed,
                  perturbed=not args.no_perturbations)
    elif args.cmd == "train":
        print(json.dumps(train(args.work / "phones-data.npz", args.out, minutes=args.minutes, seed=args.seed)))
    else:
        result = measure(args.work / "phones-data.npz", args.model)
        result["speaker_probe"] = probe_against_mfcc(args.model)
        (args.work / "phones-measure.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
