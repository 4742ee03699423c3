"""The one exception type that means "the user gave us something wrong".

Jobs catch it at the top and print its message as a single line with a non-zero
exit; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2
