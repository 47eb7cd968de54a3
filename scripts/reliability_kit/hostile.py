"""The hostile inputs: every case of :mod:`reliability_kit.cases` run against ``segmenter.py``
and ``evaluate.py`` in this process. An error must be one ``error:`` line and a non-zero exit
code, never a traceback; valid odd inputs must work and give the plain 8-bit file's result."""
import traceback

import numpy as np

from .cases.checkpoints import evaluate_checkpoint_cases, resume_cases
from .cases.images import evaluate_image_cases
from .cases.outputs import output_path_cases
from .cases.training_data import training_data_cases
from .runs import call_cli
from .workspace import Workspace


def hostile_cases(ws):
    """``[(name, build)]``; ``build(folder) -> (cli, argv, check)``."""
    return [case for group in (evaluate_image_cases, evaluate_checkpoint_cases,
                               training_data_cases, resume_cases, output_path_cases)
            for case in group(ws)]


class _Names:
    """Enough of a :class:`Workspace` to list the case names (for pytest ids)."""

    gray = np.zeros((8, 8), np.uint8)
    root = data = image = ckpt = ""


def case_names():
    return [name for name, _ in hostile_cases(_Names())]


def run_case(ws, name, build):
    """Run one hostile case; returns ``(outcome, detail)``, outcome in
    ``{'ok', 'traceback', 'wrong'}``."""
    folder = ws.fresh(name)
    try:
        cli, argv, check = build(folder)
        code, err = call_cli(cli, argv)
    except Exception:  # noqa: BLE001 - an exception out of main() is what we count
        return "traceback", traceback.format_exc(limit=-3).strip().splitlines()[-1]
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1]
    problem = check(code, err)
    return ("wrong", problem) if problem else ("ok", None)


def hostile_campaign(root, log=None):
    log = log or (lambda text: None)
    ws = Workspace(root)
    results = []
    for name, build in hostile_cases(ws):
        outcome, detail = run_case(ws, name, build)
        results.append({"case": name, "outcome": outcome, "detail": detail})
        log(f"{name}: {outcome}{': ' + detail if detail else ''}")
    return {"tried": len(results),
            "tracebacks": sum(r["outcome"] == "traceback" for r in results),
            "wrong": sum(r["outcome"] == "wrong" for r in results), "cases": results}
