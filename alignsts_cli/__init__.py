"""alignsts: turn a speech recording into singing.

The Python API (the command line is a thin layer over it)::

    from alignsts_cli import convert
    convert("speech.wav", "song.mid", "sung.wav")
"""
from alignsts_cli.errors import AlignSTSError

__version__ = "0.1.0"
__all__ = ["AlignSTSError", "convert", "extract_f0_file", "MelodyOptions", "__version__"]


def __getattr__(name):  # keep `import alignsts_cli` light: the API pulls in numpy and Praat
    if name in ("convert", "extract_f0_file", "MelodyOptions"):
        from alignsts_cli import api

        return getattr(api, name)
    raise AttributeError(name)
