"""The one exception type that means "the user gave us something wrong".

Jobs catch it at the top and print its message as a single line with a non-zero
exit; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class DownloadFailed(Exception):
    """A remote file that could not be had, after retries: that image's reject, not the job's end."""


def one_line(exc: BaseException) -> str:
    """An unexpected per-item failure as one line, for a reject record rather than a traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
