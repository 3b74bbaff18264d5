"""Training AlignSTS from a prepared cache: ``alignsts train cache/ -o run/ --config alignsts_cli/training/configs/compact-16k.json``.

    from alignsts_cli.training.train import TrainConfig, train
    result = train("cache/", "run/", TrainConfig.load("alignsts_cli/training/configs/compact-16k.json"))

Modes (``TrainConfig.mode``):

* ``"sts"``: paired speech-to-singing. Content and speaker come from the speech, the target is the
  singing mel and F0 (paper §3).
* ``"zero-shot"``: singing-to-singing (paper §4.4). Content and speaker come from the singing itself;
  at inference the model is fed speech, as in ``sts``.

Each step: a length-bucketed batch of ``batch_size`` train items (long items randomly cropped to
``max_frames`` mel frames, content cut proportionally; each item's crop and diffusion draw come from its
own place in the data, not from the process), ``model.forward`` with explicit lengths, AdamW, gradient
clipping, inverse-square-root learning rate with warm-up. ``batch_size`` is the global batch: under
``torchrun`` (distributed.py) each of the W ranks takes 1/W of it, in ``accumulate`` micro-batches, and
DistributedDataParallel (gloo on the CPU, NCCL on CUDA) averages the gradients, so a step is the same
update whatever W and ``accumulate`` (exactly, when the batch's items are of one length). Only rank 0
writes the run folder, validates and renders samples; a run may resume on another number of ranks.
``precision`` runs the forward in bfloat16 or float16 autocast (float16 with a gradient scaler, CUDA
only). The run folder::

    run/train_config.json                    the TrainConfig in use
    run/log.csv                              step,time,lr,<loss terms>,grad_norm (averaged over log_every)
    run/valid.csv                            step,time,<loss terms> on the valid split
    run/checkpoints/step_<N>/                config.json + model.safetensors (save_model) + trainer.pt
    run/last                                 "checkpoints/step_<N>": the newest checkpoint
    run/samples/step_<N>/<id>.wav            valid items sung from their speech (model.infer + vocoder)
    run/samples/ground_truth/<id>.wav        the same items' true singing mel through the vocoder
    run/voice/{acoustic,vocoder}             the newest model as a voice: ``alignsts convert --model run/voice``

``trainer.pt`` holds plain tensors and dicts (optimizer, scheduler, step, data position, RNG states,
the train config as JSON) and is read with ``torch.load(weights_only=True)``. Resuming restores all of
it, so on the CPU N steps + resume + N steps give exactly the weights of 2N steps in one go.
Every file is written atomically: checkpoints are built in a hidden folder and renamed into place.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import write_text
from alignsts_cli.model import AlignSTS, AlignSTSConfig, load_model, save_model, source_inputs
from alignsts_cli.training import distributed
from alignsts_cli.training.cache import PREPARE_HINT, Cache, read_cache
from alignsts_cli.training.distributed import World
from alignsts_cli.training.cache import pad as pad_stack
TRAINER_FORMAT, TRAINER_VERSION = "alignsts-trainer", 1
LOSS_TERMS = ("l1", "ssim", "vq", "rhythm_ce", "guided_attn", "guided_attn_predictor", "total")
#: Per mode: the cache arrays fed as content, as speaker, and the mel whose rhythm curve is the source
#: rhythm of the w/o-rhythm-adaptor ablation.
MODE_INPUTS = {"sts": ("content", "speaker", "speech_mel"), "zero-shot": ("sing_content", "sing_speaker", "mel")}
#: The example configs shipped with the repository (compact-16k.json, official.json, ...).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
MIN_FRAMES = 8  # shorter items are left out (the rhythm stream runs at T/4)
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
LOG_FLUSH_SECONDS = 30.0


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``run/train_config.json`` and in every checkpoint.

    ``model`` holds AlignSTSConfig fields that differ from the official defaults. ``audio_profile``,
    ``content_dim`` and ``content_kind`` may be left out: they are taken from the cache.
    """

    model: dict = field(default_factory=dict)
    mode: str = "sts"  # "sts" (speech -> singing) or "zero-shot" (singing -> singing, speech at inference)
    steps: int = 200_000
    batch_size: int = 16  # items per step over all ranks (official ~16); each rank takes batch_size / ranks
    accumulate: int = 1  # micro-batches per rank and step (gradient accumulation)
    max_batch_frames: int | None = None  # also cap padded mel frames per batch (items × longest)
    max_frames: int | None = None  # randomly crop longer items to this many mel frames
    lr: float | None = None  # peak learning rate; None: lr_scale · hidden^-0.5 · warmup^-0.5 (official)
    lr_scale: float = 2.0
    warmup: int = 2000  # linear warm-up steps, then lr · sqrt(warmup / step)
    min_lr: float = 1e-7
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 100  # rows of log.csv (loss terms averaged over the interval)
    valid_every: int = 2000  # validation loss (also at every checkpoint)
    ckpt_every: int = 2000  # checkpoint + rendered samples + voice export (also at the last step)
    keep_checkpoints: int = 5  # newest checkpoints kept; 0 keeps all
    n_samples: int = 4  # valid items rendered per checkpoint
    valid_max_items: int = 64  # valid items used for the validation loss
    vocoder: str | None = "auto"  # "auto" (torchscript-16k for compact-16k), "torchscript-16k", a folder, None
    seed: int = 1234
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"
    precision: str = "auto"  # "auto" (bfloat16 autocast on CUDA GPUs that have it, else float32), "float32",
    # "bfloat16" (autocast, CPU or CUDA) or "float16" (autocast with a gradient scaler, CUDA only)

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if not isinstance(self.model, dict):
            raise AlignSTSError("train config: 'model' must be an object of AlignSTSConfig fields")
        checks = [
            (self.mode in MODE_INPUTS, f"mode must be one of {', '.join(MODE_INPUTS)}, not {self.mode!r}"),
            (self.mode == "sts" or not self.model.get("reference_mel"),
             "reference_mel needs mode 'sts' (in zero-shot mode the reference would be the target singing itself)"),
            (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be at least 1"),
            (self.accumulate >= 1, "accumulate must be at least 1"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"),
            (self.warmup >= 1, "warmup must be at least 1 step"),
            (self.lr is None or self.lr > 0, "lr must be positive (or null for the official rule)"),
            (min(self.log_every, self.valid_every, self.ckpt_every) >= 1,
             "log_every, valid_every and ckpt_every must be at least 1"),
            (self.max_frames is None or self.max_frames >= MIN_FRAMES, f"max_frames must be at least {MIN_FRAMES}"),
            (self.max_batch_frames is None or self.max_batch_frames >= 1, "max_batch_frames must be positive"),
            (len(self.betas) == 2, "betas must be two numbers"),
            (self.grad_clip > 0, "grad_clip must be positive"),
            (min(self.n_samples, self.valid_max_items, self.keep_checkpoints, self.num_threads) >= 0,
             "n_samples, valid_max_items, keep_checkpoints and num_threads cannot be negative"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise AlignSTSError("invalid train config: " + "; ".join(problems) + "; fix the config file")

    def model_config(self, cache_meta: dict | None = None) -> AlignSTSConfig:
        """The AlignSTSConfig to train: official defaults, the cache's data fields, then ``model``."""
        data = {}
        if cache_meta is not None:
            data = {"audio_profile": cache_meta["profile"], "content_dim": int(cache_meta["content_dim"]),
                    "content_kind": cache_meta["content_kind"]}
        return AlignSTSConfig.from_dict({**data, **self.model})

    def peak_lr(self, hidden: int) -> float:
        return self.lr if self.lr is not None else self.lr_scale * hidden**-0.5 * self.warmup**-0.5

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Keys starting with ``_`` (``"_comment"``) are notes and are ignored."""
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise AlignSTSError(f"train config: unknown field(s) {unknown}; check the spelling against "
                                "alignsts_cli/training/configs/compact-16k.json")
        try:
            return cls(**data)
        except TypeError as exc:  # a value of the wrong type (e.g. a string for steps)
            raise AlignSTSError(f"train config: {exc}; fix the config file") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a JSON config: a file, or the name of one in the shipped configs/ ("compact-16k")."""
        path = Path(path).expanduser()
        if not path.exists() and path.name == str(path) and (CONFIGS_DIR / f"{path.name}.json").exists():
            path = CONFIGS_DIR / f"{path.name}.json"
        from alignsts_cli.files import read_json

        data = read_json(path, missing="no such config file; see alignsts_cli/training/configs/ for examples",
                         unreadable="not a readable JSON config", fix="fix the file")
        if not isinstance(data, dict):
            raise AlignSTSError(f"{path}: a train config must be a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def lr_factor(step: int, warmup: int) -> float:
    """Multiplier of the peak lr for the update after ``step`` updates: linear warm-up to 1 at
    ``warmup``, then sqrt(warmup / step) (official inverse-square-root schedule)."""
    return min(step / warmup, 1.0) * math.sqrt(warmup / max(step, warmup))


# ---------------------------------------------------------------------------------------------
# The prepared cache
# ---------------------------------------------------------------------------------------------

def load_item(cache: Cache, item: dict, mode: str) -> dict:
    """One item's arrays for ``mode``: mel [T, M], f0 [T], content [Tc, D], speaker [S], source [Ts, M]."""
    c_key, s_key, src_key = MODE_INPUTS[mode]
    arrays = cache.arrays(item["id"], ("mel", "f0", c_key, s_key, src_key))
    out = {"mel": arrays["mel"], "f0": arrays["f0"], "content": arrays[c_key], "speaker": arrays[s_key],
           "source": arrays[src_key]}
    if out["mel"].ndim != 2 or out["f0"].shape != out["mel"].shape[:1] or out["content"].ndim != 2 \
            or len(out["content"]) < 1 or out["source"].ndim != 2:
        raise AlignSTSError(f"{cache.folder}/items/{item['id']}.npz: arrays have the wrong shapes (mel "
                            f"{out['mel'].shape}, f0 {out['f0'].shape}, {c_key} {out['content'].shape}); "
                            f"{PREPARE_HINT} again")
    return out


def _family(content_kind: str) -> str:
    """"wav2vec2-ctc" and "wav2vec2-ctc-logits" name the same features (as the engine reads them)."""
    return "mfcc" if content_kind.startswith("mfcc") else "wav2vec2" if content_kind.startswith("wav2vec2") \
        else content_kind


def check_compatible(cache: Cache, cfg: AlignSTSConfig) -> None:
    """Raise when the model cannot be trained on the cache's features."""
    m = cache.info
    problems = []
    if m["profile"] != cfg.audio_profile:
        problems.append(f"audio profile {m['profile']} vs the model's {cfg.audio_profile}")
    if int(m["content_dim"]) != cfg.content_dim or _family(m["content_kind"]) != _family(cfg.content_kind):
        problems.append(f"content {m['content_kind']} × {m['content_dim']} vs the model's "
                        f"{cfg.content_kind} × {cfg.content_dim}")
    if int(m["speaker_dim"]) != cfg.speaker_dim:
        problems.append(f"speaker embedding {m['speaker_dim']}-d vs the model's {cfg.speaker_dim}")
    if problems:
        raise AlignSTSError(f"{cache.folder}: the cache does not fit the model ({'; '.join(problems)}); "
                            "change the config's model section or prepare the cache to match")


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

def make_batches(frames: list[int], batch_size: int, max_batch_frames: int | None, rng) -> list[list[int]]:
    """One epoch of length-bucketed batches: shuffle, sort pools of 32 batches by length, cut into
    batches of similar lengths (at most ``batch_size`` items and ``max_batch_frames`` padded frames),
    shuffle the batches. Every index appears exactly once."""
    order = rng.permutation(len(frames))
    pool = 32 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        cur, longest = [], 0
        for i in sorted(order[start:start + pool].tolist(), key=lambda j: frames[j]):
            grown = max(longest, frames[i]) * (len(cur) + 1)
            if cur and (len(cur) == batch_size or (max_batch_frames and grown > max_batch_frames)):
                batches.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, frames[i])
        batches.append(cur)
    return [batches[k] for k in rng.permutation(len(batches))]


def crop(item: dict, max_frames: int | None, rng=None) -> dict:
    """Cut an item to at most ``max_frames`` mel frames (random start from ``rng``, else the start);
    content and source are cut to the same share of their length."""
    t = len(item["mel"])
    if max_frames is None or t <= max_frames:
        return item
    a = int(rng.integers(0, t - max_frames + 1)) if rng is not None else 0
    b = a + max_frames

    def share(x):
        n = len(x)
        lo = min(int(math.floor(a / t * n)), n - 1)
        return x[lo:max(lo + 1, min(n, int(math.ceil(b / t * n))))]

    return {**item, "mel": item["mel"][a:b], "f0": item["f0"][a:b], "content": share(item["content"]),
            "source": share(item["source"])}


def collate(items: list[dict], device) -> dict:
    """Pad items into a batch: mel [B, T, M], f0 [B, T], content [B, Tc, D], speaker [B, S],
    source [B, Ts, M] and lengths / content_lengths / source_lengths [B] (long); with the items'
    diffusion draws (:func:`draw`) also t [B] and noise [B, 1, M, T] (0 past each item's end)."""
    def pad(key):
        out, lengths = pad_stack([torch.from_numpy(np.ascontiguousarray(it[key])) for it in items])
        return out.to(device), lengths.to(device)

    (mel, lengths), (f0, _), (content, content_lengths), (source, source_lengths) = map(
        pad, ("mel", "f0", "content", "source"))
    speaker = torch.from_numpy(np.stack([it["speaker"] for it in items])).to(device)
    batch = dict(mel=mel, f0=f0, content=content, speaker=speaker, source=source, lengths=lengths,
                 content_lengths=content_lengths, source_lengths=source_lengths)
    if all("t" in it for it in items):
        batch["t"] = torch.tensor([it["t"] for it in items], dtype=torch.long, device=device)
        noise, _ = pad_stack([torch.from_numpy(it["noise"]) for it in items])  # [B, T, M]
        batch["noise"] = noise.transpose(1, 2)[:, None].to(device)
    return batch


def draw(item: dict, rng, diffusion_steps: int) -> dict:
    """The item's diffusion step t and noise [T, M], drawn from ``rng`` (the item's own generator), so
    that a step's draws do not depend on how its batch is split over ranks and micro-batches."""
    t = int(rng.integers(0, diffusion_steps + 1))
    return {**item, "t": t, "noise": rng.standard_normal(item["mel"].shape, dtype=np.float32)}


def _source(model: AlignSTS, batch: dict) -> dict:
    """What forward/infer take from a batch's source mel (``model.source_inputs``)."""
    return source_inputs(model.config, batch["source"], batch["source_lengths"])


def compute_losses(model: AlignSTS, batch: dict, net=None) -> dict:
    """The loss terms of a batch; ``net`` is what runs the forward (``model``, or its DDP wrapper)."""
    out = (net or model)(batch["mel"], batch["content"], batch["speaker"], batch["f0"], lengths=batch["lengths"],
                         content_lengths=batch["content_lengths"], t=batch.get("t"), noise=batch.get("noise"),
                         **_source(model, batch))
    return out["losses"]


# ---------------------------------------------------------------------------------------------
# Files of the run folder
# ---------------------------------------------------------------------------------------------

class CsvLog:
    """A CSV kept in memory and rewritten atomically on ``flush``; resuming keeps rows up to a step."""

    def __init__(self, path: Path, columns: list[str], keep_upto: int | None, *, enabled: bool = True):
        self.path, self.columns, self.rows, self.enabled = path, columns, [], enabled  # disabled: ranks > 0
        if enabled and keep_upto is not None and path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            if lines and lines[0].split(",") == columns:
                for line in lines[1:]:
                    parts = line.split(",")
                    if len(parts) == len(columns) and parts[0].isdigit() and int(parts[0]) <= keep_upto:
                        self.rows.append(line)
        self.flushed = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(",".join(str(row[c]) if isinstance(row[c], int) else f"{row[c]:.6g}" for c in self.columns))

    def flush(self) -> None:
        if not self.enabled:
            return
        write_text(self.path, "\n".join([",".join(self.columns), *self.rows]) + "\n")
        self.flushed = time.monotonic()


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first: (step, folder)."""
    found = []
    for p in (run / "checkpoints").glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", p.name)
        if m and all((p / f).is_file() for f in ("trainer.pt", "model.safetensors", "config.json")):
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(run: Path, step: int, model: AlignSTS, trainer: dict, keep: int) -> Path:
    """Write checkpoints/step_<step>/ (model + trainer.pt) via a hidden folder, point ``last`` at it,
    and drop the oldest beyond ``keep`` (0 = keep all)."""
    folder = run / "checkpoints"
    final, tmp = folder / f"step_{step}", folder / f".step_{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    torch.save(trainer, tmp / "trainer.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text(run / "last", f"checkpoints/{final.name}\n")
    if keep:
        for _, old in checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer(folder: Path) -> dict:
    """trainer.pt of a checkpoint folder (plain tensors and dicts; loaded with weights_only=True)."""
    try:
        state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise AlignSTSError(f"{folder}/trainer.pt: unreadable ({exc}); delete this checkpoint to resume "
                            "from the one before") from None
    if not isinstance(state, dict) or state.get("format") != TRAINER_FORMAT:
        raise AlignSTSError(f"{folder}/trainer.pt: not an alignsts trainer state")
    return state


def export_voice(run: Path, model: AlignSTS, vocoder) -> Path:
    """run/voice/acoustic (the current model) and, once, run/voice/vocoder (the sample vocoder)."""
    from alignsts_cli.model.checkpoint import save_vocoder

    voice = run / "voice"
    save_model(model, voice / "acoustic")  # each file replaced atomically
    if vocoder is not None and not (voice / "vocoder" / "model.safetensors").exists():
        tmp = voice / ".vocoder.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        save_vocoder(vocoder, tmp)
        shutil.rmtree(voice / "vocoder", ignore_errors=True)
        os.replace(tmp, voice / "vocoder")
    return voice


def load_sample_vocoder(spec: str | None, profile: str, device):
    """The vocoder for samples and the exported voice: None, "auto" (the profile's default vocoder, if it
    has one), "torchscript-16k", or a vocoder in our format (model/checkpoint.py)."""
    from alignsts_cli.model.foreign import default_vocoder, load_named_vocoder

    if spec == "auto":
        spec = default_vocoder(profile)
    if spec is None:
        return None
    vocoder, _, vprofile = load_named_vocoder(spec)
    if vprofile != profile:
        raise AlignSTSError(f"vocoder {spec} is for audio profile {vprofile}, the model for {profile}; "
                            "set the config's vocoder to one that matches (or null for no samples)")
    return vocoder.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Validation and samples (isolated from the training RNG, so they never change the training run)
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def isolated_rng(device: torch.device, seed: int):
    """Run a block with torch's RNGs seeded to ``seed``; the caller's RNG states are restored after."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def validate(model: AlignSTS, batches: list[dict], seed: int) -> dict:
    """Mean loss terms over the valid batches (eval mode, fixed diffusion draws)."""
    device = next(model.parameters()).device
    sums, n = dict.fromkeys(LOSS_TERMS, 0.0), 0
    was_training = model.training
    model.eval()
    with isolated_rng(device, seed):
        for batch in batches:
            losses = compute_losses(model, batch)
            b = len(batch["lengths"])
            for k in LOSS_TERMS:
                sums[k] += float(losses[k]) * b
            n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def render_samples(model: AlignSTS, vocoder, items: list[tuple[str, dict]], folder: Path, seed: int,
                   ground_truth: Path | None = None) -> list[Path]:
    """Sing each valid item from its speech content and speaker (how the model is used) to its F0;
    write folder/<id>.wav, and the true mel's resynthesis to ground_truth/<id>.wav when missing."""
    from alignsts_cli.audio import save_audio

    device = next(model.parameters()).device
    c = model.config
    folder.mkdir(parents=True, exist_ok=True)
    sr = vocoder.config.sample_rate
    written = []
    with isolated_rng(device, seed):
        for item_id, item in items:
            batch = collate([item], device)
            noise = torch.randn(c.diffusion_steps + 1, 1, 1, c.n_mels, len(item["mel"])).to(device)
            out = model.infer(batch["content"], batch["speaker"], batch["f0"], noise, **_source(model, batch))
            audio = vocoder.synthesize(out["mel"][0], batch["f0"][0])
            written.append(save_audio(folder / f"{item_id}.wav", audio, sr, overwrite=True))
            if ground_truth is not None and not (ground_truth / f"{item_id}.wav").exists():
                ground_truth.mkdir(parents=True, exist_ok=True)
                save_audio(ground_truth / f"{item_id}.wav", vocoder.synthesize(batch["mel"][0], batch["f0"][0]), sr)
    return written


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

#: Settings a resumed run must keep: they shape the optimizer state, the schedule or the data order.
FIXED_ON_RESUME = ("mode", "lr", "lr_scale", "warmup", "min_lr", "betas", "weight_decay", "seed", "batch_size",
                   "max_batch_frames", "max_frames")


def _pick_device(name: str) -> torch.device:
    from alignsts_cli.runtime import pick_device

    return torch.device(pick_device(name))


def _check_resumable(folder: Path, model: AlignSTS, mcfg: AlignSTSConfig, state: dict, config: TrainConfig):
    ours, theirs = model.config.to_dict(), mcfg.to_dict()
    ours.pop("extra"), theirs.pop("extra")
    changed = sorted(k for k in ours if ours[k] != theirs[k])
    before = TrainConfig.from_dict(json.loads(state["train_config"])).to_dict()
    changed += sorted(k for k in FIXED_ON_RESUME if before[k] != config.to_dict()[k])
    if changed:
        raise AlignSTSError(f"{folder}: the config changes {', '.join(changed)} from the run's; resume with the "
                            "run's train_config.json (steps, intervals, samples and device may change) or "
                            "start another output folder")


def train(cache: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None, *,
          resume: bool = True, progress=None) -> dict:
    """Train AlignSTS on ``cache`` (a prepared cache folder) into the run folder ``out``.

    config: the TrainConfig; None reuses ``out/train_config.json`` (resuming) or the defaults.
    resume: continue from the newest checkpoint in ``out`` (weights, optimizer, scheduler, data
    position and RNG states); with False, a folder that already holds checkpoints is refused.
    progress: called as ``progress(step, steps, info)`` after every step; info holds ``lr`` and the
    step's loss terms, plus ``valid`` (dict) after a validation and ``checkpoint`` (Path) after a save.

    Under ``torchrun`` every rank calls this; only rank 0 writes the run folder and calls ``progress``.

    Returns {"step", "run", "checkpoint", "voice", "parameters", "train_items", "valid_items",
    "resumed_from", "seconds_per_step", "losses" (last log row), "valid" (last validation), "notes",
    "rank", "world_size", "backend", "per_rank_batch"}.
    """
    threads = torch.get_num_threads()
    try:
        return _train(cache, out, config, resume, progress)
    finally:
        torch.set_num_threads(threads)  # config.num_threads applies to the run only


@dataclass
class _Session:
    """What one training session works with: the model, its optimizer and schedule, and where it is."""

    model: AlignSTS
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    step: int = 0  # updates done
    epoch: int = 0  # position in the data (global batches)
    index: int = 0
    elapsed: float = 0.0  # seconds trained before this session
    precision: "_Precision | None" = None
    world: World = field(default_factory=World)
    net: torch.nn.Module | None = None  # what runs the forward: the model, or its DDP wrapper


class _Precision:
    """The forward's autocast and, for float16, the gradient scaler."""

    def __init__(self, name: str, device: torch.device):
        if name == "float16" and device.type != "cuda":
            raise AlignSTSError("train config: precision float16 needs a CUDA GPU; use bfloat16 or float32 on the CPU")
        if name == "auto":
            name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        self.name, self.device = name, device
        self.dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler("cuda") if name == "float16" else None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def _train(cache, out, config: TrainConfig | None, resume: bool, progress) -> dict:
    run = Path(out).expanduser()
    if run.exists() and not run.is_dir():
        raise AlignSTSError(f"{run}: is a file; give a folder for the training run")
    done = checkpoints(run) if run.is_dir() else []
    if done and not resume:
        raise AlignSTSError(f"{run} already holds a training run (step {done[-1][0]}); resume it or choose "
                            "another output folder")
    if config is None:
        saved = run / "train_config.json"
        config = TrainConfig.load(saved) if saved.exists() else TrainConfig()
    data, mcfg, train_items, valid_items, notes = _open_data(cache, config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = _pick_device(config.device)
    world = distributed.join(device.type)
    try:
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.set_float32_matmul_precision("high")  # TF32 matmuls
        return _train_ranks(run, data, mcfg, train_items, valid_items, notes, config, done, device, world, progress)
    finally:
        distributed.leave(world)


def _train_ranks(run, data, mcfg, train_items, valid_items, notes, config, done, device, world, progress) -> dict:
    ses, resumed = _start(data, mcfg, config, done, device, world)
    first_step = ses.step
    parts = world.size * config.accumulate
    if config.batch_size < parts:
        notes.append(f"batch_size {config.batch_size} is less than {world.size} rank(s) x accumulate "
                     f"{config.accumulate}: some micro-batches are empty and their ranks wait")

    # -- run folder, logs, validation data, vocoder (rank 0) ---------------------------------------
    main = world.main
    if main:
        run.mkdir(parents=True, exist_ok=True)
        config.save(run / "train_config.json")
    log = CsvLog(run / "log.csv", ["step", "time", "lr", *LOSS_TERMS, "grad_norm"], ses.step if resumed else None,
                 enabled=main)
    vlog = CsvLog(run / "valid.csv", ["step", "time", *LOSS_TERMS], ses.step if resumed else None, enabled=main)
    vocoder, valid_batches, samples = _validation(data, valid_items, config, ses, notes) if main else (None, [], [])
    frames = [min(int(it["frames"]), config.max_frames or 10**9) for it in train_items]

    # -- the loop ----------------------------------------------------------------------------------
    t_start = time.monotonic()
    sums, count = dict.fromkeys([*LOSS_TERMS, "grad_norm"], 0.0), 0
    last_row = last_valid = None
    checkpoint = done[-1][1] if done else None
    plan_epoch, batches = None, []
    steps_of_diffusion = ses.model.config.diffusion_steps
    while ses.step < config.steps:
        if plan_epoch != ses.epoch:
            batches = make_batches(frames, config.batch_size, config.max_batch_frames,
                                   np.random.default_rng([config.seed, ses.epoch]))
            plan_epoch = ses.epoch
        chosen = batches[ses.index]

        def item(j):  # position j of the global batch: its crop and draws from its own place in the data
            rng = np.random.default_rng([config.seed, ses.epoch, ses.index, j])
            return draw(crop(load_item(data, train_items[chosen[j]], config.mode), config.max_frames, rng), rng,
                        steps_of_diffusion)

        mine = distributed.rank_parts(list(range(len(chosen))), world, config.accumulate)
        micro = [(collate([item(j) for j in part], device), len(part) / len(chosen)) for part in mine]
        info, grad_norm = _update(ses, micro or [(collate([item(0)], device), 0.0)], config.grad_clip, len(batches))
        step, now = ses.step, ses.elapsed + time.monotonic() - t_start
        for k in LOSS_TERMS:
            sums[k] += info[k]
        sums["grad_norm"] += grad_norm
        count += 1
        if step % config.log_every == 0 or step == config.steps:
            last_row = {"step": step, "time": now, "lr": info["lr"], **{k: v / count for k, v in sums.items()}}
            log.add(last_row)
            sums, count = dict.fromkeys(sums, 0.0), 0
            if time.monotonic() - log.flushed > LOG_FLUSH_SECONDS:
                log.flush()
        is_ckpt = step % config.ckpt_every == 0 or step == config.steps
        if valid_batches and (is_ckpt or step % config.valid_every == 0):
            last_valid = info["valid"] = {"step": step, "time": now, **validate(ses.model, valid_batches, config.seed)}
            vlog.add(last_valid)
            vlog.flush()
        if is_ckpt and main:
            checkpoint = info["checkpoint"] = _save(run, ses, now, config, vocoder, samples)
            log.flush()
        if progress is not None and main:
            progress(step, config.steps, info)

    if ses.step == first_step:
        notes.append(f"the run is already at step {ses.step} of {config.steps}: raise steps to train further")
    if world.size > 1:
        from torch import distributed as dist

        dist.barrier()  # every rank returns once rank 0 has written the last checkpoint
    session = time.monotonic() - t_start
    return {
        "step": ses.step, "run": run, "checkpoint": checkpoint, "voice": run / "voice",
        "parameters": sum(p.numel() for p in ses.model.parameters()), "train_items": len(train_items),
        "valid_items": len(valid_items), "resumed_from": first_step if resumed else None,
        "seconds_per_step": session / (ses.step - first_step) if ses.step > first_step else None,
        "losses": last_row, "valid": last_valid, "notes": notes, "rank": world.rank, "world_size": world.size,
        "backend": world.backend, "per_rank_batch": math.ceil(config.batch_size / world.size),
        "precision": ses.precision.name,
    }


def _validation(data: Cache, valid_items: list[dict], config: TrainConfig, ses: "_Session", notes: list):
    """Rank 0's vocoder, validation batches and sample items: (vocoder or None, batches, samples)."""
    with isolated_rng(torch.device("cpu"), config.seed):  # building a vocoder draws random numbers
        vocoder = load_sample_vocoder(config.vocoder, ses.model.config.audio_profile, ses.device)
    if vocoder is None:
        notes.append(f"no vocoder for profile {ses.model.config.audio_profile}: no samples, and run/voice has "
                     "no vocoder/; set the config's vocoder to a vocoder folder")
    by_id = sorted(valid_items, key=lambda it: it["id"])
    valid = sorted((crop(load_item(data, it, config.mode), config.max_frames)
                    for it in by_id[:config.valid_max_items]), key=lambda x: len(x["mel"]))
    batches = [collate(valid[i:i + config.batch_size], ses.device) for i in range(0, len(valid), config.batch_size)]
    samples = []  # always sung from the speech, as the model is used, whatever the training mode
    if vocoder is not None:
        samples = [(it["id"], crop(load_item(data, it, "sts"), config.max_frames)) for it in by_id[:config.n_samples]]
    return vocoder, batches, samples


def _open_data(cache, config: TrainConfig):
    """(cache, model config, train items, valid items, notes for the user) of a run, checked to fit."""
    data = read_cache(cache)
    mcfg = config.model_config(data.info)
    check_compatible(data, mcfg)
    train_items = data.split("train", min_frames=MIN_FRAMES)
    valid_items = data.split("valid", min_frames=MIN_FRAMES)
    if not train_items:
        raise AlignSTSError(f"{data.folder}: the cache has no train items (of {MIN_FRAMES}+ frames); "
                            f"{PREPARE_HINT} with a train split")
    notes = []
    if not valid_items:
        notes.append("the cache has no valid split: no validation loss and no samples")
    short = sum(1 for it in data.items if int(it.get("frames", 0)) < MIN_FRAMES)
    if short:
        notes.append(f"{short} item(s) under {MIN_FRAMES} frames were left out")
    return data, mcfg, train_items, valid_items, notes


def _start(data: Cache, mcfg: AlignSTSConfig, config: TrainConfig, done: list, device,
           world: World) -> tuple[_Session, bool]:
    """Model, optimizer and schedule: fresh, or exactly as the newest checkpoint in ``done`` left them
    (weights, optimizer, schedule, gradient scaler, data position, RNG; the other ranks seed their own
    RNG, which only dropout draws from). Returns (session, resumed?)."""
    torch.manual_seed(config.seed)
    state = None
    if done:
        model = load_model(done[-1][1])
        state = load_trainer(done[-1][1])
        _check_resumable(done[-1][1], model, mcfg, state, config)
    else:
        mcfg.extra = {**mcfg.extra, "training": {"mode": config.mode, "cache": str(data.info.get("source", ""))}}
        model = AlignSTS(mcfg)
    model.to(device).train()
    peak = config.peak_lr(model.config.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak, betas=config.betas, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(lr_factor(s, config.warmup),
                                                                          config.min_lr / peak))
    ses = _Session(model, optimizer, schedule, device, precision=_Precision(config.precision, device), world=world)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if ses.precision.scaler is not None and state.get("scaler"):
            ses.precision.scaler.load_state_dict(state["scaler"])
        ses.step, ses.epoch, ses.index, ses.elapsed = state["step"], state["epoch"], state["batch"], state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"] and world.size == 1:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    if not world.main:
        torch.manual_seed(int(np.random.SeedSequence([config.seed, ses.step, world.rank]).generate_state(1)[0]))
    for vq in _quantisers(model):
        vq.hold = True  # one codebook update per step, summed over micro-batches and ranks (_update)
    ses.net = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        c = model.config
        ses.net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # the codebook is kept equal by VQEmbeddingEMA.flush
            find_unused_parameters=not (c.use_rhythm_adaptor and c.use_cross_modal_alignment))  # ablations
    return ses, state is not None


def _quantisers(model: AlignSTS) -> list:
    from alignsts_cli.model.vq import VQEmbeddingEMA

    return [m for m in model.modules() if isinstance(m, VQEmbeddingEMA)]


def _update(ses: _Session, micro: list[tuple[dict, float]], grad_clip: float, n_batches: int) -> tuple[dict, float]:
    """One optimizer step on this rank's micro-batches of the global batch, each (batch, its share of
    the global batch; 0 for a placeholder when the rank has none); moves the session on by one batch.
    Returns (info, gradient norm): info holds the step's ``lr`` and the global batch's loss terms."""
    lr = ses.optimizer.param_groups[0]["lr"]
    world, quantisers = ses.world, _quantisers(ses.model)
    ses.optimizer.zero_grad(set_to_none=True)
    terms = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=ses.device)
    for k, (batch, share) in enumerate(micro):
        synced = k == len(micro) - 1  # DDP averages the gradients on each rank's last backward
        for vq in quantisers:
            vq.frozen = share == 0.0
        with ses.net.no_sync() if world.size > 1 and not synced else contextlib.nullcontext():
            with ses.precision.autocast():
                losses = compute_losses(ses.model, batch, ses.net)
            ses.precision.backward(losses["total"].float() * (share * world.size))
        terms += torch.stack([losses[t].detach().to(torch.float64) for t in LOSS_TERMS]) * share
    for vq in quantisers:
        vq.frozen = False
    if world.size > 1:
        from torch import distributed as dist

        dist.all_reduce(terms)  # the shares sum to 1 over the ranks: the global batch's loss terms
    total = float(terms[LOSS_TERMS.index("total")])
    if not math.isfinite(total):
        raise AlignSTSError(f"training diverged at step {ses.step + 1} (loss {total}); "
                            "lower lr, or resume from an earlier checkpoint")
    ses.precision.unscale(ses.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(ses.model.parameters(), grad_clip)
    ses.precision.step(ses.optimizer)
    for vq in quantisers:
        vq.flush()
    ses.schedule.step()
    ses.step, ses.index = ses.step + 1, ses.index + 1
    if ses.index == n_batches:
        ses.epoch, ses.index = ses.epoch + 1, 0
    return {"lr": lr, **{t: float(v) for t, v in zip(LOSS_TERMS, terms)}}, float(grad_norm)


def _save(run: Path, ses: _Session, now: float, config: TrainConfig, vocoder, samples) -> Path:
    """A checkpoint (model and trainer state), the step's samples and run/voice; returns the checkpoint."""
    trainer = {
        "format": TRAINER_FORMAT, "version": TRAINER_VERSION, "step": ses.step, "epoch": ses.epoch,
        "batch": ses.index, "elapsed": now, "optimizer": ses.optimizer.state_dict(),
        "scheduler": ses.schedule.state_dict(),
        "scaler": ses.precision.scaler.state_dict() if ses.precision.scaler is not None else {},
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if ses.device.type == "cuda" else []},
        "train_config": json.dumps(config.to_dict()),
    }
    checkpoint = save_checkpoint(run, ses.step, ses.model, trainer, config.keep_checkpoints)
    if samples:
        render_samples(ses.model, vocoder, samples, run / "samples" / f"step_{ses.step}", config.seed,
                       ground_truth=run / "samples" / "ground_truth")
    export_voice(run, ses.model, vocoder)
    return checkpoint
