"""What both command-line programs share: logging set-up, list parsing, and turning errors into
one line on stderr with an exit code (2 bad input, 3 diverged training, 130 interrupted,
141 a closed output pipe)."""
import argparse
import errno
import logging
import os
import signal
import sys

from .errors import InputError, TrainingDiverged, WorkerDied

log = logging.getLogger("unet")


def setup_logging(verbose=False, quiet=False):
    """Log lines on stderr: INFO by default, DEBUG when ``verbose``, WARNING when ``quiet``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("PIL", "mxboard", "mxboard.event_file_writer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def int_list(text):
    """``'0,1'`` -> ``(0, 1)``; ``''`` -> ``()``. For argparse ``type=``."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def float_list(text):
    """``'1,2.5'`` -> ``(1.0, 2.5)``. For argparse ``type=``."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


# Errors of a path the user gave (exit code 2); others (a full disk, EIO, ENOMEM) exit 1.
_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES,
                errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP}


def add_dataset_writer_flags(parser):
    """``--overwrite`` and ``--quiet``, as every program that writes a dataset folder has them."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the PNGs of splits that already hold files instead of refusing")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _calm_forked_child():
    """In a process forked under :func:`run_guarded` (the data loader's workers): SIGTERM kills
    quietly and Ctrl-C is left to the parent.

    A terminal sends Ctrl-C to the whole process group, and a scheduler's cancel SIGTERM; with
    the inherited handlers every worker would print a KeyboardInterrupt traceback. The parent
    alone saves and reports (a worker's death by SIGTERM stops it too, :mod:`unet.data.workers`).
    """
    if signal.getsignal(signal.SIGTERM) is _terminate:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


os.register_at_fork(after_in_child=_calm_forked_child)


def run_guarded(body):
    """Run ``body()`` -> exit code; known errors become one line on stderr.

    SIGTERM is turned into ``KeyboardInterrupt`` so that both save state and exit the same way.
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return body()
    except (InputError, TrainingDiverged, WorkerDied) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except ValueError as exc:        # a bad option value caught by a config's validation
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except BrokenPipeError:          # `... | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141                   # 128 + SIGPIPE, as a shell reports a killed writer
    except OSError as exc:           # one the checks before did not foresee
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        return 2 if exc.errno in _PATH_ERRNOS else 1
    except MemoryError as exc:
        sys.stderr.write(f"error: out of memory{': ' + str(exc) if str(exc) else ''}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_dataset_writer(args, write):
    """The body of a program that writes a dataset folder: log as ``args.quiet`` says, then
    ``write(args)`` under :func:`run_guarded`; returns the exit code (0 ok, 2 bad input)."""
    setup_logging(quiet=args.quiet)

    def body():
        write(args)
        return 0

    return run_guarded(body)
