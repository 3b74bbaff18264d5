"""alignsts: turn a speech recording into singing.

The Python API (the command line is a thin layer over it)::

    from alignsts_cli import convert
    convert("speech.wav", "song.mid", "sung.wav")

    from alignsts_cli import load_model, import_official
    import_official("AlignSTS-release/", "alignsts-model/")   # the authors' checkpoint -> safetensors
    model = load_model("alignsts-model/")                     # model.config holds every size and switch
    out = model.infer(content, speaker, f0)                   # out["mel"]: [B, T, 80]
"""
from alignsts_cli.errors import AlignSTSError

__version__ = "0.1.0"
__all__ = ["AlignSTSError", "Converter", "convert", "extract_f0_file", "import_official", "load_model",
           "MelodyOptions", "__version__"]

_API = {"convert", "Converter", "extract_f0_file", "MelodyOptions"}
_MODEL = {"load_model", "import_official", "save_model", "AlignSTS", "AlignSTSConfig"}


def __getattr__(name):  # keep `import alignsts_cli` light: the API pulls in numpy, Praat and torch
    if name in _API:
        from alignsts_cli import api

        return getattr(api, name)
    if name in _MODEL:
        from alignsts_cli import model

        return getattr(model, name)
    raise AttributeError(name)
