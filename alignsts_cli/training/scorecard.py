"""The real-speech scorecard: engines judged on people's recordings and melody files, with no sung reference.

``evaluate_speech(pairs, systems, out)`` converts every pair (speech, melody[, transcript]) with each
system exactly as ``alignsts convert`` does (``api.Converter``, default melody options, fixed seed),
and scores what was written:

- **melody**: raw pitch and raw chroma accuracy at 50 cents, voiced cover and duration error
  (``metrics.melody_accuracy``);
- **voice**: Resemblyzer cosine between the input speech and the output (``metrics.speaker_similarity``);
- **words** (pairs with an English transcript): the word error rate (WER) of an open-vocabulary
  recogniser, the phone error rate (PER) of a phone recogniser against the transcript's pronunciation,
  and a closed-set test: among the known sentences (the manifest's English transcripts and the ten
  Harvard sentences of list 1), is the transcript the one nearest to the phones heard? (``listeners``);
- **quality**: DNSMOS P.835 (``listeners.quality``).

Besides the systems asked for, every report has rows that calibrate the figures:

``input``      the speech itself (the ceiling of words and quality; its voice is the reference);
``control``    a vowel-only control: the speaker's own average spectral envelope (LPC of their voiced
               frames) on a glottal pulse train that follows the melody exactly: the melody and the
               timbre without any word, which is the floor of the word figures;
``strangers``  the voice figure between input recordings of *different* speakers of the same sex:
               below it, the output does not sound like its speaker any more than a stranger does.

The winner (:func:`choose`) is decided words and voice first, then quality, then melody accuracy.
Outputs go to ``out/<system>/<id>.wav``, a picture per pair to ``out/plots/<id>.png``, and the table to
``out/report.json`` and ``out/report.md``. Nothing here prints; ``progress(stage, fraction)`` reports.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.training.evaluate import REPORT_JSON, REPORT_MD, SystemSpec, _check_out, _describe, _safe_id, parse_system

INPUT, CONTROL, STRANGERS = "input", "control", "strangers"
#: Harvard sentences, list 1 (IEEE 1969): the closed set's decoys beside the manifest's own transcripts.
HARVARD_LIST_1 = (
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
)
#: Report columns: key, header, how the mean is taken ("mean", "abs" = mean of absolute values).
COLUMNS = (
    ("raw_pitch_accuracy", "pitch ↑", "mean"),
    ("raw_chroma_accuracy", "chroma ↑", "mean"),
    ("voiced_cover", "voiced ↑", "mean"),
    ("duration_error", "|dur| s ↓", "abs"),
    ("speaker_similarity", "voice ↑", "mean"),
    ("wer", "WER ↓", "mean"),
    ("per", "PER ↓", "mean"),
    ("closed_set", "closed ↑", "mean"),
    ("dnsmos", "DNSMOS ↑", "mean"),
)
#: Two systems whose words-and-voice figures differ by less than this are told apart by quality, then melody.
TIE = 0.05
QUALITY_TIE = 0.1

Progress = Callable[[str, float], None]


# --------------------------------------------------------------------------- the manifest

@dataclass
class SpeechPair:
    id: str
    speech: Path
    melody: Path
    transcript: str | None = None
    language: str | None = None
    speaker: str | None = None
    sex: str | None = None
    kind: str | None = None  # what the pairing tests, e.g. "multitrack, out of range"


_FIELDS = ("id", "speech", "melody", "transcript", "language", "speaker", "sex", "kind")


def _rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignSTSError(f"{path}: cannot read the pairs manifest ({exc}); it must be a text CSV") from None
    return [[c.strip() for c in r] for r in csv.reader(text.splitlines())
            if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]


def is_speech_manifest(path: str | os.PathLike) -> bool:
    """Whether a pairs CSV lists speech and melodies (header naming ``speech`` and ``melody``) rather
    than outputs to score against references (``reference,output``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    rows = _rows(p)
    return bool(rows) and {"speech", "melody"} <= {c.lower() for c in rows[0]}


def read_speech_pairs(path: str | os.PathLike) -> list[SpeechPair]:
    """Pairs from a CSV whose header names its columns: ``speech,melody`` and optionally ``id``,
    ``transcript``, ``language`` (ISO code, ``en`` for the word figures), ``speaker``, ``sex`` (m/f),
    ``kind``. Paths are relative to the CSV."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AlignSTSError(f"{p}: no such pairs manifest")
    rows = _rows(p)
    head = [c.lower() for c in rows[0]] if rows else []
    if "speech" not in head or "melody" not in head:
        raise AlignSTSError(f"{p}: the first row must name the columns, e.g. speech,melody,transcript")
    col = {name: head.index(name) for name in _FIELDS if name in head}
    pairs, seen = [], set()
    for k, r in enumerate(rows[1:], 2):
        get = lambda name: (r[col[name]] if name in col and col[name] < len(r) and r[col[name]] else None)  # noqa: E731
        if not get("speech") or not get("melody"):
            raise AlignSTSError(f"{p}: row {k} needs a speech file and a melody")
        pid = get("id") or f"{Path(get('speech')).stem}--{Path(get('melody')).stem}"
        if pid in seen:
            raise AlignSTSError(f"{p}: row {k}: the id {pid} is used twice; give each row its own id")
        seen.add(pid)
        pairs.append(SpeechPair(pid, p.parent / get("speech"), p.parent / get("melody"), get("transcript"),
                                (get("language") or "").lower() or None, get("speaker"),
                                (get("sex") or "").lower() or None, get("kind")))
    if not pairs:
        raise AlignSTSError(f"{p}: lists no pairs; write rows of speech,melody[,transcript]")
    return pairs


# --------------------------------------------------------------------------- the control

def vowel_control(speech: np.ndarray, sr: int, melody, voiced_f0: np.ndarray | None = None,
                  step: float = 0.01) -> np.ndarray:
    """The vowel-only control ``[round(melody.duration · sr)]`` at ``sr``: the melody on one vowel in the speaker's
    own average timbre, without a single word.

    The all-pole envelope (LPC, order 2 + sr / 1 kHz) of the autocorrelation summed over the speech's
    voiced frames (``voiced_f0`` > 0 on a ``step`` grid, else every frame loud enough), driven by a
    pulse train on the melody's contour, with 10 ms ramps at note edges, at the level of the voiced
    speech.
    """
    import librosa
    from scipy.signal import butter, lfilter, sosfilt

    x = np.asarray(speech, dtype=np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])  # pre-emphasis
    win = int(0.03 * sr)
    hop = int(step * sr)
    frames = librosa.util.frame(np.pad(x, (0, win)), frame_length=win, hop_length=hop).T  # [F, win]
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    if voiced_f0 is not None:
        keep = np.asarray(voiced_f0)[: len(frames)] > 0
        keep = np.pad(keep, (0, len(frames) - len(keep)))
    else:
        keep = energy > 0.1 * energy.max()
    if not keep.any():
        keep = energy >= np.median(energy)
    order = 2 + int(sr / 1000)
    nfft = 1 << int(np.ceil(np.log2(2 * win)))
    spectra = np.abs(np.fft.rfft(frames[keep] * np.hanning(win), nfft, axis=1)) ** 2  # [F, nfft/2+1]
    r = np.fft.irfft(spectra.sum(axis=0), nfft)[: order + 1]  # autocorrelation summed over the frames
    r[0] *= 1.0001  # a little white noise keeps the recursion stable
    a = _levinson(r, order)
    # Excitation: a sum of harmonics below Nyquist on the melody's phase (band-limited pulses).
    n = int(round(melody.duration * sr))  # as long as the engines sing it
    t = np.arange(n) / sr
    f0 = np.interp(t, melody.times, melody.f0)
    on = np.interp(t, melody.times, (melody.f0 > 0).astype(float))
    f0 = np.where(on > 0.5, np.maximum(f0, 1.0), 0.0)
    # Excitation: one pulse per period on the melody's phase, split between the two nearest samples.
    cycles = np.cumsum(f0) / sr
    k = np.flatnonzero(np.diff(np.floor(cycles)) > 0) + 1  # the sample where a new period has begun
    frac = (cycles[k] - np.floor(cycles[k])) / np.maximum(f0[k] / sr, 1e-9)  # how far past the pulse
    exc = np.zeros(n + 1)
    np.add.at(exc, k - 1, frac)
    np.add.at(exc, k, 1.0 - frac)
    exc = exc[:n]
    gate = np.convolve((f0 > 0).astype(float), np.ones(int(0.01 * sr)) / int(0.01 * sr), "same")
    y = lfilter([1.0], a, exc * gate)
    y = lfilter([1.0], [1.0, -0.97], y)  # de-emphasis
    y = sosfilt(butter(2, 40.0, "highpass", fs=sr, output="sos"), y)  # the pulses' DC, which de-emphasis lifts
    mask = np.repeat(keep, hop)[: len(speech)]
    mask = np.pad(mask, (0, len(speech) - len(mask)))
    level = float(np.sqrt(np.mean(np.asarray(speech, dtype=np.float64)[mask] ** 2))) if mask.any() else 0.1
    sung = float(np.sqrt(np.mean(y[gate > 0.5] ** 2))) if np.any(gate > 0.5) else 1.0
    y *= (level or 0.1) / (sung or 1.0)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _levinson(r: np.ndarray, order: int) -> np.ndarray:
    """LPC polynomial ``[order + 1]`` (a[0] = 1) from autocorrelation ``r`` (Levinson-Durbin)."""
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = r[0]
    for i in range(1, order + 1):
        k = -(r[i] + np.dot(a[1:i], r[i - 1:0:-1])) / err
        a[1:i] = a[1:i] + k * a[i - 1:0:-1]
        a[i] = k
        err *= 1.0 - k * k
    return a


# --------------------------------------------------------------------------- the report

@dataclass
class SpeechReport:
    """Per-pair scores of every system and the calibration rows, their means, and what failed."""

    systems: list[str]  # the systems asked for, in order
    rows: list[dict] = field(default_factory=list)  # {"system", "id", "output", <COLUMNS keys>, ...}
    failures: list[dict] = field(default_factory=list)  # {"system", "id", "error"}
    settings: dict = field(default_factory=dict)
    strangers: dict = field(default_factory=dict)  # {"speaker_similarity", "pairs"}

    @property
    def names(self) -> list[str]:
        """Row order of the table: the ceiling, the systems, the floors."""
        return [INPUT] + self.systems + [CONTROL, STRANGERS]

    def means(self) -> dict[str, dict]:
        """``{name: {column: mean or None, "items": scored, "failed": count}}``."""
        out = {}
        for name in self.names:
            if name == STRANGERS:
                entry = {key: None for key, _, _ in COLUMNS}
                entry["speaker_similarity"] = self.strangers.get("speaker_similarity")
                entry["items"], entry["failed"] = self.strangers.get("pairs", 0), 0
                out[name] = entry
                continue
            rows = [r for r in self.rows if r["system"] == name]
            entry = {}
            for key, _, how in COLUMNS:
                vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
                if how == "abs":
                    vals = [abs(v) for v in vals]
                entry[key] = float(np.mean(vals)) if vals else None
            entry["words_items"] = sum(1 for r in rows if r.get("closed_set") is not None)
            entry["items"] = len(rows)
            entry["failed"] = sum(1 for f in self.failures if f["system"] == name)
            out[name] = entry
        return out

    def table(self) -> list[list[str]]:
        head = ["system"] + [h for _, h, _ in COLUMNS] + ["items"]
        rows = [head]
        for name, e in self.means().items():
            label = {INPUT: "input (ceiling)", CONTROL: "control (floor)", STRANGERS: "strangers (floor)"}.get(name, name)
            if name == STRANGERS:
                items = f"{e['items']} pairs"
            else:
                items = str(e["items"]) + (f" ({e['failed']} failed)" if e["failed"] else "")
            rows.append([label] + [_fmt(e[key], key) for key, _, _ in COLUMNS] + [items])
        return rows

    def markdown(self) -> str:
        t = self.table()
        s = self.settings
        lines = [f"# alignsts scorecard: {s.get('source', '')}".rstrip(), ""]
        lines += ["| " + " | ".join(t[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(t[0]) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
        m = self.means()
        words_n = max((m[n]["words_items"] for n in self.names if n != STRANGERS), default=0)
        lines += ["", f"{s.get('items', '?')} pairs of {s.get('speech_files', '?')} recordings. Melody (pitch and chroma "
                      "accuracy at 50 cents, voiced cover) over the melody's voiced frames less 40 ms at each note "
                      "edge; |dur|: output length against the melody's. Voice: Resemblyzer cosine with the "
                      f"input speech. Words, on the {words_n} pairs with an English transcript (pocketsphinx): word "
                      "and phone error rates against the transcript, and closed: the share where the transcript is "
                      f"the nearest of {s.get('closed_set_size', '?')} sentences to the phones heard. DNSMOS: P.835 "
                      "overall (1-5) at 16 kHz. Input (ceiling): the speech itself. Control (floor): the melody on "
                      "one vowel in the speaker's average timbre, no words. Strangers (floor): the voice figure "
                      "between different speakers of the same sex."]
        winner = choose(self)
        if winner is not None:
            lines += ["", f"**Best by the scorecard** (words and voice first, then quality, then melody): "
                          f"**{winner['system']}**. {winner['why']}"]
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {f['system']} / {f['id']}: {f['error']}" for f in self.failures]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in self.rows]
        return {"format": "alignsts-scorecard", "version": 1, "settings": self.settings, "systems": self.means(),
                "strangers": self.strangers, "choice": choose(self), "items": rows, "failures": self.failures}

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        from alignsts_cli.files import write_json, write_text

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        return write_json(folder / REPORT_JSON, self.to_dict()), write_text(folder / REPORT_MD, self.markdown())


def _fmt(v, key: str) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if key in ("duration_error", "dnsmos") else f"{v:.3f}"


def _calibrated(value, floor, ceiling):
    if value is None or floor is None or ceiling is None or abs(ceiling - floor) < 0.05:
        return None
    return (value - floor) / (ceiling - floor)


def choose(report: SpeechReport) -> dict | None:
    """The best of the report's systems: ``{"system", "why", "scores": {name: {...}}}``, or None.

    Each system's words figure (closed-set accuracy, PER and WER, each put on the scale from the
    control, 0, to the input speech, 1, then averaged) and voice figure (from the strangers' similarity, 0, to 1) are
    averaged; the highest wins, unless the next is within ``TIE``: then the higher DNSMOS (by at least
    ``QUALITY_TIE``), then the higher chroma accuracy.
    """
    m = report.means()
    if not report.systems:
        return None
    inp, ctl = m[INPUT], m[CONTROL]
    floor_voice = report.strangers.get("speaker_similarity")
    scores = {}
    for name in report.systems:
        e = m[name]
        if not e["items"]:
            continue
        words = [w for w in (_calibrated(e["closed_set"], ctl["closed_set"], inp["closed_set"]),
                             _calibrated(e["per"], ctl["per"], inp["per"]),
                             _calibrated(e["wer"], ctl["wer"], inp["wer"])) if w is not None]
        voice = _calibrated(e["speaker_similarity"], floor_voice if floor_voice is not None else 0.0, 1.0)
        parts = ([float(np.mean(words))] if words else []) + ([voice] if voice is not None else [])
        scores[name] = {"words": float(np.mean(words)) if words else None, "voice": voice,
                        "words_and_voice": float(np.mean(parts)) if parts else None,
                        "dnsmos": e["dnsmos"], "raw_chroma_accuracy": e["raw_chroma_accuracy"]}
    if not scores:
        return None
    key = lambda n: scores[n]["words_and_voice"] if scores[n]["words_and_voice"] is not None else -math.inf  # noqa: E731
    order = sorted(scores, key=key, reverse=True)
    best = order[0]
    why = (f"words {_pct(scores[best]['words'])} and voice {_pct(scores[best]['voice'])} of the way from the floor "
           "to the input speech")
    if len(order) > 1:
        second = order[1]
        gap = key(best) - key(second)
        if gap < TIE:
            qa, qb = scores[best]["dnsmos"], scores[second]["dnsmos"]
            if qa is not None and qb is not None and abs(qa - qb) >= QUALITY_TIE:
                best = best if qa > qb else second
                why = f"words and voice tie with the next (within {TIE}); better quality (DNSMOS)"
            else:
                ca = scores[best]["raw_chroma_accuracy"] or 0.0
                cb = scores[second]["raw_chroma_accuracy"] or 0.0
                best = best if ca >= cb else second
                why = "words, voice and quality tie with the next; better melody accuracy"
        else:
            why += f"; next: {second} (words {_pct(scores[second]['words'])}, voice {_pct(scores[second]['voice'])})"
    return {"system": best, "why": why + ".", "scores": scores}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


# --------------------------------------------------------------------------- running it

@dataclass
class _Speech:
    audio: np.ndarray
    sr: int
    analysis: object
    embedding: np.ndarray


class _Judges:
    """Everything that scores, built once: the speaker encoder, the recogniser and the closed set."""

    def __init__(self, pairs: list[SpeechPair]):
        from alignsts_cli.training.listeners import Recognizer, require
        from alignsts_cli.training.listeners import words as listeners_words
        from alignsts_cli.training.metrics import speaker_encoder

        require("speechmos")
        require("onnxruntime")
        self.recognizer = Recognizer()
        english = [p.transcript for p in pairs if p.transcript and p.language == "en"]
        unique = {" ".join(listeners_words(s)): s for s in list(english) + list(HARVARD_LIST_1)}
        self.closed_set = [s for s in unique.values() if self.recognizer.known(s)]
        self.encoder = speaker_encoder("cpu")

    def score(self, audio: np.ndarray, sr: int, pair: SpeechPair, speech: _Speech, melody) -> dict:
        from alignsts_cli.training import listeners, metrics

        out = {}
        if melody is not None:
            out.update(metrics.melody_accuracy(audio, sr, melody))
            out["speaker_similarity"] = metrics.cosine(speech.embedding,
                                                       metrics.speaker_embedding(audio, sr, self.encoder))
        if self.words_apply(pair):
            out["heard"] = self.recognizer.transcribe(audio, sr)
            out["wer"] = listeners.word_error_rate(pair.transcript, out["heard"])
            phones = self.recognizer.phones(audio, sr)
            out["heard_phones"] = " ".join(phones)
            out["per"] = listeners.edit_rate(self.recognizer.phones_of(pair.transcript), phones)
            chosen, _ = self.recognizer.closed_set(audio, sr, self.closed_set)
            out["closed_set_heard"] = chosen
            out["closed_set"] = float(chosen is not None and listeners.words(chosen) == listeners.words(pair.transcript))
        q = listeners.quality(audio, sr)
        out["dnsmos"], out["dnsmos_sig"], out["dnsmos_bak"] = q["ovrl"], q["sig"], q["bak"]
        return out

    def words_apply(self, pair: SpeechPair) -> bool:
        return bool(pair.transcript) and pair.language == "en" and self.recognizer.known(pair.transcript) \
            and len(self.closed_set) >= 2


def _strangers(pairs: list[SpeechPair], speeches: dict[Path, _Speech]) -> dict:
    """Mean voice figure between recordings of different speakers of the same sex."""
    from alignsts_cli.training.metrics import cosine

    files = {}
    for p in pairs:
        if p.speaker and p.sex and p.speech in speeches:
            files.setdefault(p.speech, (p.speaker, p.sex))
    items = list(files.items())
    sims = [cosine(speeches[a].embedding, speeches[b].embedding)
            for i, (a, (sa, xa)) in enumerate(items) for b, (sb, xb) in items[i + 1:] if sa != sb and xa == xb]
    return {"speaker_similarity": float(np.mean(sims)) if sims else None, "pairs": len(sims)}


def evaluate_speech(
    pairs: list[SpeechPair],
    systems: Iterable[str | SystemSpec] = ("psola", "alignsts"),
    out: str | os.PathLike = "scorecard",
    *,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    plots: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SpeechReport:
    """Convert every pair with every system (``psola``, ``alignsts[-LABEL][:VOICE]``; a bare ``alignsts``
    is the voice ``--engine alignsts`` uses) and score them with the calibration rows; see the module
    docstring. Returns the :class:`SpeechReport` and writes it to ``out``."""
    from alignsts_cli.analysis import analyse_speech
    from alignsts_cli.api import Converter, MelodyOptions, prepare_for_voice
    from alignsts_cli.audio import load_audio, load_speech, save_audio
    from alignsts_cli.melody import load_melody
    from alignsts_cli.training.metrics import speaker_embedding

    specs = [s if isinstance(s, SystemSpec) else parse_system(s) for s in systems]
    if not specs:
        raise AlignSTSError("no systems to evaluate; give at least one --system")
    names = [s.name for s in specs]
    for s in specs:
        if s.kind == "ground-truth":
            raise AlignSTSError(f"--system {s.name}: real speech has no sung reference to resynthesise; "
                                "use psola or alignsts[:VOICE]")
        if s.name in (INPUT, CONTROL, STRANGERS) or names.count(s.name) > 1:
            raise AlignSTSError(f"--system {s.name}: the name is taken; label it, e.g. alignsts-mine:VOICE")
    if not pairs:
        raise AlignSTSError("no pairs to evaluate")
    missing = sorted({str(f) for p in pairs for f in (p.speech, p.melody) if not Path(f).is_file()})
    if missing:
        raise AlignSTSError(f"{missing[0]}: no such file ({len(missing)} of the manifest's files are missing); "
                            "fix the paths, which are relative to the manifest, before a long run")
    out = _check_out(Path(out), names + [CONTROL, "plots"], overwrite)
    step = progress or (lambda stage, frac: None)
    step("loading the judges", 0.0)
    judges = _Judges(pairs)
    step("loading the systems", 0.0)
    converters = {s.name: Converter(s.kind, model=s.path, device=device, precision=precision, timbre=s.timbre)
                  for s in specs}
    for s in specs:
        if s.kind == "alignsts":
            converters[s.name].neural  # a missing voice fails now, before any work
    report = SpeechReport(names, settings={
        "source": "pairs", "sample_rate": "native", "items": len(pairs),
        "speech_files": len({p.speech for p in pairs}), "seed": seed,
        "closed_set_size": len(judges.closed_set),
        "systems": {s.name: {"kind": s.kind, "path": s.path, "engine": converters[s.name].describe()} for s in specs},
    })
    speeches: dict[Path, _Speech] = {}
    total = len(pairs) * (len(specs) + 2)
    done = 0
    for pair in pairs:
        stem = _safe_id(pair.id)
        step(f"input: {pair.id}", done / total)
        try:
            if pair.speech not in speeches:
                audio, sr = load_speech(pair.speech)
                speeches[pair.speech] = _Speech(audio, sr, analyse_speech(audio, sr),
                                                speaker_embedding(audio, sr, judges.encoder))
            sp = speeches[pair.speech]
            raw = load_melody(pair.melody)
            melody = prepare_for_voice(raw, MelodyOptions(), sp.analysis.median_f0)
            report.rows.append({"system": INPUT, "id": pair.id, "output": str(pair.speech), "kind": pair.kind,
                                **judges.score(sp.audio, sp.sr, pair, sp, None)})
        except Exception as exc:
            report.failures += [{"system": n, "id": pair.id, "error": _describe(exc)} for n in [INPUT] + names + [CONTROL]]
            done += len(specs) + 2
            continue
        made = []
        for s in specs:
            done += 1
            step(f"{s.name}: {pair.id}", done / total)
            path = out / s.name / f"{stem}.wav"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                res = converters[s.name].convert(pair.speech, pair.melody, path, seed=seed, overwrite=True)
                audio, sr = load_audio(path, what="output")
                scores = judges.score(audio, sr, pair, sp, res.melody)
            except Exception as exc:  # one pair failing never stops the evaluation
                report.failures.append({"system": s.name, "id": pair.id, "error": _describe(exc)})
                continue
            report.rows.append({"system": s.name, "id": pair.id, "output": str(path), "kind": pair.kind, **scores})
            made.append((s.name, audio, sr))
        done += 1
        step(f"control: {pair.id}", done / total)
        path = out / CONTROL / f"{stem}.wav"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_audio(path, vowel_control(sp.audio, sp.sr, melody, sp.analysis.f0), sp.sr, overwrite=True)
            audio, sr = load_audio(path, what="control")
            report.rows.append({"system": CONTROL, "id": pair.id, "output": str(path), "kind": pair.kind,
                                **judges.score(audio, sr, pair, sp, melody)})
            made.append((CONTROL, audio, sr))
        except Exception as exc:
            report.failures.append({"system": CONTROL, "id": pair.id, "error": _describe(exc)})
        if plots and made:
            from alignsts_cli.plot import plot_scorecard

            try:
                (out / "plots").mkdir(exist_ok=True)
                plot_scorecard(out / "plots" / f"{stem}.png", sp.audio, sp.sr, melody, made,
                               title=f"{pair.id}" + (f" ({pair.kind})" if pair.kind else ""), overwrite=True)
            except Exception as exc:
                report.failures.append({"system": "plot", "id": pair.id, "error": _describe(exc)})
    report.strangers = _strangers(pairs, speeches)
    step("writing the report", 1.0)
    report.write(out)
    return report
