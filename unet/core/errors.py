"""The package's error types that the CLIs turn into one line on stderr.

Anything the user can fix (a missing file, an unreadable PNG, an image/mask size mismatch, a
checkpoint that does not fit) is raised as :class:`InputError` with a one-line message that names
the file and what is wrong. The CLIs print that line on stderr and exit with code 2.
"""


class InputError(Exception):
    """Bad input from the user: the message is one line, fit to be shown as it is."""

    exit_code = 2

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept. Exit code 3."""

    exit_code = 3


class WorkerDied(Exception):
    """A data-loader worker process died with batches pending; the run saved its state first.
    Exit code 1."""

    exit_code = 1
