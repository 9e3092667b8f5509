"""The mistakes a user can make, as exceptions, and their one-line report.

A leaf module: every other module may raise these, and `run.py` turns each
into one line `run.py: error: ...` and exit status 2.
"""
import re


class UsageError(Exception):
    """A mistake in the command line or the environment it names."""


class DatasetError(ValueError):
    """A dataset flag names something that cannot be read.

    The message is a single line that names the offending flag(s)
    (`--dataset`, `--data_dir`, `--train_split`, `--eval_split`) and says what
    is allowed, so that `run.py` can print it as is.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


def error_line(error):
    """The first line of an error's message, for a one-line report: without
    TensorFlow's `{{function_node ...}}` prefix and `[Op:...]` suffix."""
    message = getattr(error, "message", None) or str(error)
    line = (message.strip().splitlines() or [""])[0]
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
    return re.sub(r"\s*\[Op:\w+\]$", "", line)
