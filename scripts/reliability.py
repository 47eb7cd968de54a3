#!/usr/bin/env python
"""The reliability campaign of issue 8: kill training at many moments, feed both CLIs hostile input.

    python scripts/reliability.py --kills 30 --seed 0   # the figures in docs/records/reliability.md
    python scripts/reliability.py --kills 6 --json      # what tests/tools/test_reliability.py runs

Kills: a tiny model trains on generated data in a child ``segmenter.py``; each trial resumes the
same run with ``--checkpoint load`` and is SIGKILLed either at an injected point
(``UNET_KILL_AT``: a step, before validation, inside the checkpoint commit) or after a random delay
(during start-up and resume, during data loading with 2 worker processes, or anywhere in an
epoch). After each kill the best and last checkpoints must pass ``read_meta``, load, and give the
same predictions as the same files gave before (a ledger keyed by the weights' sha256), the last
checkpoint must hold every epoch the run had reported (at most the epoch in progress is lost), and
the next trial must resume from it. A last resume runs to completion.

Hostile inputs: the cases of ``reliability_kit/cases`` against ``segmenter.py`` and
``evaluate.py`` (in-process ``main``): an error must be one ``error:`` line and a non-zero exit
code, never a traceback; valid odd inputs (16-bit, RGBA, palette, odd names) must work and give
the same mask as the plain 8-bit file.

This file is the command line; the campaigns live in the package ``reliability_kit`` beside it.
"""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # loaded by its path (tests/script_loader.py): find the package beside it
    sys.path.insert(0, HERE)

from reliability_kit.hostile import (  # noqa: E402
    case_names, hostile_campaign, hostile_cases, run_case)
from reliability_kit.judge import error_case, ok_case  # noqa: E402
from reliability_kit.kills import kill_campaign  # noqa: E402
from reliability_kit.report import report  # noqa: E402
from reliability_kit.runs import Child, call_cli, make_dataset  # noqa: E402
from reliability_kit.workspace import Workspace  # noqa: E402

# What the tests (tests/tools/test_reliability.py, test_hostile.py) reach through this script.
__all__ = ["Child", "Workspace", "call_cli", "case_names", "error_case", "hostile_campaign",
           "hostile_cases", "kill_campaign", "main", "make_dataset", "ok_case", "report",
           "run_case"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="kill trials (default 24; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trial plan (default 0)")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile inputs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="one line per trial on stderr")
    args = parser.parse_args(argv)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.verbose else None
    with tempfile.TemporaryDirectory(prefix="unet-reliability-") as root:
        kills = kill_campaign(os.path.join(root, "kills"), args.kills, args.seed, log) \
            if args.kills else None
        hostile = None if args.no_hostile else hostile_campaign(os.path.join(root, "hostile"), log)
    print(json.dumps({"kills": kills, "hostile": hostile}, indent=1) if args.json
          else report(kills, hostile))
    bad = (kills or {}).get("failures", 0) + sum((hostile or {}).get(k, 0)
                                                  for k in ("tracebacks", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
