"""Informational log lines held back while a program checks what it was given, so that bad input
prints its one error line and nothing before it."""
import contextlib
import logging
import os

from .errors import InputError

_active = []        # (handler, hold) pairs installed now, for the at-fork clean-up


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


def _release(holds, emit):
    while holds:
        handler, hold = holds.pop(0)
        handler.removeFilter(hold)
        if (handler, hold) in _active:
            _active.remove((handler, hold))
        for record in hold.records if emit else ():
            handler.handle(record)


@contextlib.contextmanager
def held_info_lines(dropped_on=(InputError, ValueError)):
    """Hold the INFO and DEBUG records that the root logger's handlers receive in the block.

    Yields ``release()``: called once the checks are done, it emits what was held and stops
    holding, for the rest of the block. When the block ends normally, or raises anything but
    ``dropped_on`` (default: bad input, :class:`~unet.core.errors.InputError`, and a config's
    ``ValueError``), the held records are emitted as they were, with their own times; when it
    raises ``dropped_on`` they are dropped, and the error's one line is all the user sees.
    Warnings and errors are never held. A process forked meanwhile (a data-loader worker) holds
    nothing.
    """
    holds = []
    emit = True
    try:
        for handler in logging.getLogger().handlers:
            hold = _Hold()
            handler.addFilter(hold)
            holds.append((handler, hold))
            _active.append((handler, hold))
        yield lambda: _release(holds, True)
    except dropped_on:
        emit = False
        raise
    finally:
        _release(holds, emit)


def _forget_holds_in_child():
    for handler, hold in _active:
        handler.removeFilter(hold)
    _active.clear()


os.register_at_fork(after_in_child=_forget_holds_in_child)
