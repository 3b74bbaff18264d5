"""The one exception type for problems a user can fix."""


class AlignSTSError(Exception):
    """A problem with the user's input or set-up.

    The message is one line that says what is wrong and what to do about it.
    The command line prints it without a traceback and exits non-zero; anything
    else that is raised is a bug.
    """
