"""The user-error types: problems a user can fix, each said in one line.

Callers that must tell problems apart catch a subclass, never match message text.
Anything else that is raised (``ValueError`` for a tensor of the wrong shape passed by a
caller, say) is a programming error: the command line reports it as an internal error.
"""
from __future__ import annotations


class AlignSTSError(Exception):
    """A problem with the user's input or set-up.

    The message is one line that says what is wrong and what to do about it.
    The command line prints it without a traceback and exits non-zero.
    """


class WeightsMissing(AlignSTSError):
    """Model weights that are not installed or not downloaded (the psola engine still works).

    ``problem`` is the message without the ``instead`` alternative (", or use --engine psola"), for
    callers that take the alternative themselves.
    """

    def __init__(self, problem: str, *, instead: str | None = None):
        super().__init__(problem + (f", or {instead}" if instead else ""))
        self.problem = problem


class WeightsDamaged(AlignSTSError):
    """Model weights on disk that are unreadable or do not match their sha256: fetch them again."""


class DownloadFailed(AlignSTSError):
    """The Hub could not be reached, or refused a download."""
