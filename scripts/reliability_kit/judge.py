"""What a hostile case expects of a CLI run: ``check(code, err)`` returns the problem or None."""
import os

import numpy as np

from .files import load


def error_case(cli, argv, *words, marker=None, also=None):
    """Expect stderr to be one ``error:`` line holding ``words`` (no progress bar or other line
    beside it) and a non-zero exit code; ``also()``, when given, returns what else is wrong
    (files the failed run touched) or None."""
    def check(code, err):
        lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
        if code == 0:
            return "silent: exit code 0 instead of an error"
        if len(lines) != 1 or "error:" not in lines[0]:
            errors = sum("error:" in l for l in lines)
            return (f"{len(lines)} stderr lines, {errors} of them errors, instead of one error "
                    f"line (exit code {code})")
        missing = [w for w in words if w not in lines[0]]
        if missing:
            return f"error line lacks {missing}: {lines[0]}"
        if marker and os.path.exists(marker):
            return "a pickle in the checkpoint was executed"
        return also() if also else None
    return cli, argv, check


def ok_case(cli, argv, verify):
    """Expect exit code 0 and ``verify()`` to return None (else the wrong result)."""
    def check(code, err):
        if code != 0:
            lines = [l for l in err.splitlines() if "error:" in l] or err.splitlines()[-1:]
            return f"valid input refused (exit code {code}): {lines[0] if lines else ''}"
        return verify()
    return cli, argv, check


def same_mask(path, reference):
    def verify():
        if not os.path.isfile(path):
            return f"no mask written at {path}"
        mask = load(path)
        if mask is None or mask.shape != reference.shape:
            return f"mask shape {None if mask is None else mask.shape}, expected {reference.shape}"
        if not np.array_equal(mask, reference):
            return f"mask differs from the 8-bit result in {int((mask != reference).sum())} pixels"
        return None
    return verify
