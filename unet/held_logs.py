"""Informational log lines held back while a program checks what it was given, so that bad input
prints its one error line and nothing before it."""
import contextlib
import logging

from .errors import InputError


class _Hold(logging.Filter):
    """Keeps the records below WARNING that reach one handler, instead of letting it emit them."""

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def held_info_lines(dropped_on=(InputError, ValueError)):
    """Hold the INFO and DEBUG records that the root logger's handlers receive in the block.

    When the block ends normally, or raises anything but ``dropped_on`` (default: bad input,
    :class:`~unet.errors.InputError`, and a config's ``ValueError``), the held records are
    emitted as they were, with their own times; when it raises ``dropped_on`` they are dropped,
    and the error's one line is all the user sees. Warnings and errors are never held.
    """
    holds = [(handler, _Hold()) for handler in logging.getLogger().handlers]
    for handler, hold in holds:
        handler.addFilter(hold)
    emit = True
    try:
        yield
    except dropped_on:
        emit = False
        raise
    finally:
        for handler, hold in holds:
            handler.removeFilter(hold)
            if emit:
                for record in hold.records:
                    handler.handle(record)
