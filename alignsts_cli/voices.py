"""Voice models for the neural engine: where they are, and importing the authors' release as one.

A *voice model* is a folder with ``acoustic`` (the AlignSTS model) and ``vocoder`` (the HiFi-GAN),
each a folder or one ``.safetensors`` file in our checkpoint format (:mod:`alignsts_cli.model.checkpoint`),
and optionally ``content/`` (a transformers wav2vec2 folder); without it the content model comes
from ``weights.lock`` when the acoustic model's config asks for one.

:func:`locate` finds the voice to sing with, in this order: the ``--model`` folder (or the name of an
imported one), the imported ``official`` model, the voice that ``weights.lock`` lists (the bundled one).
It never downloads. :func:`import_checkpoint` turns the authors' archive into an imported voice.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from alignsts_cli.errors import AlignSTSError, WeightsDamaged, WeightsMissing

#: Where imported models live (``alignsts import-checkpoint``): ALIGNSTS_HOME/models/<name>.
DEFAULT_IMPORTED = "official"


def alignsts_home() -> Path:
    return Path(os.environ.get("ALIGNSTS_HOME") or Path.home() / ".local" / "share" / "alignsts").expanduser()


def imported_model_dir(name: str = DEFAULT_IMPORTED) -> Path:
    return alignsts_home() / "models" / name


@dataclass
class VoiceModel:
    """Where the parts of a neural voice are on disk."""

    acoustic: Path
    vocoder: Path
    source: str  # what the user should read: "imported official", "weights.lock", a path
    content: Path | None = None  # folder of the wav2vec2 model, when the acoustic model uses one


def _voice_part(p: Path, name: str) -> Path | None:
    """``p/name/`` (config + weights) or ``p/name.safetensors`` (one file, config in its metadata)."""
    if (p / name).is_dir():
        return p / name
    if (p / f"{name}.safetensors").is_file():
        return p / f"{name}.safetensors"
    return None


def _is_voice_folder(p: Path) -> bool:
    return _voice_part(p, "acoustic") is not None and _voice_part(p, "vocoder") is not None


def _voice_in(p: Path, source: str) -> VoiceModel:
    return VoiceModel(_voice_part(p, "acoustic"), _voice_part(p, "vocoder"), source)


def locate(model: str | os.PathLike | None = None, *, cache_dir=None) -> VoiceModel:
    """Find the neural voice: ``model`` (a folder or an imported name), else an imported one, else weights.lock's.

    Never downloads: missing weights raise ``WeightsMissing`` naming the command to run.
    """
    from alignsts_cli import weights as W

    comps = W.read_lock()
    if model is not None:
        p = Path(model).expanduser()
        if not p.exists() and os.sep not in str(model) and _is_voice_folder(imported_model_dir(str(model))):
            p = imported_model_dir(str(model))  # a name given to `alignsts import-checkpoint --name`
        if not _is_voice_folder(p):
            raise AlignSTSError(f"{p}: not a voice model (a folder with acoustic/ and vocoder/); check --model")
        voice = _voice_in(p, str(p))
    elif _is_voice_folder(imported_model_dir()):
        p = imported_model_dir()
        voice = _voice_in(p, f"imported ({p})")
    else:
        acoustic, vocoder = W.find(comps, "acoustic"), W.find(comps, "vocoder")
        if acoustic is None or vocoder is None:
            raise WeightsMissing("no AlignSTS weights are installed: import the authors' checkpoint with "
                                 "`alignsts import-checkpoint ARCHIVE`", instead="use --engine psola")
        a = W.resolve(acoustic, cache_dir=cache_dir)
        v = W.resolve(vocoder, cache_dir=cache_dir)
        voice = VoiceModel(_part(a), _part(v), "bundled" if acoustic.bundled else "weights.lock")
    kind = _content_kind(voice.acoustic)
    own_content = voice.acoustic.parent / "content"  # the voice folder's, whether acoustic is a folder or a file
    if kind.startswith("wav2vec2") and (own_content / "config.json").is_file():
        voice.content = own_content  # a self-contained voice folder carries its content model
    elif kind.startswith("wav2vec2"):
        voice.content = content_model(cache_dir, needed_by=f"the acoustic model needs the '{kind}' content model")
    return voice


def content_model(cache_dir=None, *, needed_by: str = "the wav2vec2 content features need it",
                  instead: str | None = None) -> Path:
    """Folder of the wav2vec2 content model that ``weights.lock`` lists (verified, never downloaded)."""
    from alignsts_cli import weights as W

    comp = W.find(W.read_lock(), "content")
    if comp is None:
        raise WeightsMissing(f"{needed_by}, which weights.lock does not list", instead=instead)
    return W.resolve(comp, cache_dir=cache_dir).folder


def _part(res) -> Path:
    """A single-file component is that file (config in its metadata), else the folder of its files."""
    files = list(res.files.values())
    return files[0] if len(files) == 1 else res.folder


def _content_kind(acoustic: Path) -> str:
    from alignsts_cli.model.checkpoint import ACOUSTIC, read_config

    try:
        return read_config(acoustic, ACOUSTIC).get("content_kind", "wav2vec2-ctc-logits")
    except Exception:  # missing file, bad JSON, damaged safetensors: all mean "get it again"
        raise WeightsDamaged(f"{acoustic}: the acoustic model has no readable config; import or download it again") from None


# --------------------------------------------------------------------------- importing the authors' release

def _extract_archive(src: Path, into: Path) -> Path:
    """Unpack a .zip or .tar(.gz) into ``into`` (refusing paths that escape it)."""
    import tarfile
    import zipfile

    if zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as zf:
                for name in zf.namelist():
                    if Path(name).is_absolute() or ".." in Path(name).parts:
                        raise AlignSTSError(f"{src}: the archive holds an unsafe path ({name}); refusing to extract it")
                zf.extractall(into)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise AlignSTSError(f"{src}: the archive is damaged ({exc}); download it again") from None
        return into
    if tarfile.is_tarfile(src):
        try:
            with tarfile.open(src) as tf:
                tf.extractall(into, filter="data")  # refuses links and paths that leave ``into``
        except tarfile.FilterError as exc:
            raise AlignSTSError(f"{src}: the archive holds an unsafe entry ({exc}); refusing to extract it, "
                                "use the archive as its authors released it") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise AlignSTSError(f"{src}: the archive is damaged ({exc}); download it again") from None
        return into
    raise AlignSTSError(f"{src}: not a .zip or .tar archive, a folder, or a .ckpt file")


def _find_vocoder_folder(root: Path) -> Path | None:
    hits = sorted({p.parent for p in root.rglob("*.ckpt") if "hifi" in str(p.relative_to(root)).lower()})
    return hits[0] if hits else None


def import_checkpoint(
    src: str | os.PathLike,
    *,
    name: str = DEFAULT_IMPORTED,
    vocoder: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn the authors' released AlignSTS archive (or its extracted folder) into a voice model.

    Writes ``ALIGNSTS_HOME/models/<name>/{acoustic,vocoder}`` (safetensors) and returns that
    folder; the model named ``official`` is the one ``--engine auto`` uses. ``vocoder``: the
    NSF-HiFiGAN checkpoint or its folder when it is not inside ``src``.

    The authors' files are pickles, read with tensors and plain data only allowed (a file that holds other
    objects, which could run code, is refused); they are read once here and never again.
    """
    import shutil
    import tempfile

    from alignsts_cli.model.checkpoint import save_vocoder
    from alignsts_cli.model.foreign import import_official, load_official_nsf

    source = Path(src).expanduser()
    if not source.exists():
        raise AlignSTSError(f"{source}: no such file or folder; give the downloaded archive or its extracted folder")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise AlignSTSError(f"--name {name}: use letters, digits, '.', '_' or '-'")
    dest = imported_model_dir(name)
    if dest.exists() and not overwrite:
        raise AlignSTSError(f"{dest}: a model named '{name}' is already imported; pass --overwrite to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        root = source
        if source.is_file() and source.suffix != ".ckpt":
            root = _extract_archive(source, tmp / "archive")
            if not any(root.rglob("*.ckpt")):
                raise AlignSTSError(f"{source}: the archive holds no .ckpt checkpoint; give the authors' AlignSTS "
                                    "release archive, or its extracted folder")
        import_official(root, tmp / "model" / "acoustic")
        voc_src = Path(vocoder).expanduser() if vocoder is not None else (
            _find_vocoder_folder(root) if root.is_dir() else None)
        if voc_src is None:
            raise AlignSTSError(
                f"{source}: no HiFi-GAN checkpoint found (a folder named like 'hifigan' holding a .ckpt); "
                "give it with --vocoder"
            )
        model, _, _ = load_official_nsf(voc_src)
        save_vocoder(model, tmp / "model" / "vocoder")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / "model", dest)
    return dest
