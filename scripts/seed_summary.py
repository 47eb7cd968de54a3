#!/usr/bin/env python
"""The mean, spread and worst run of a recipe's scores over several seeds (issue 32).

    python scripts/seed_summary.py runs/isbi_seeds/seed-*/predictions/metrics.json
    python scripts/seed_summary.py A/metrics.json B/metrics.json --json summary.json

Each file is the ``metrics.json`` that ``evaluate.py`` writes for a dataset split; its ``mean``
row is one run's score. Printed: a Markdown table with, per score, the mean over the runs, the
sample standard deviation, the worst run (the lowest V_Rand, V_Info or Dice; the highest error)
and its distance from the mean, then every run. A file that is missing or not such a
``metrics.json`` is one error line and exit code 2.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))       # the checkout, for unet.core

from unet.core.atomic import atomic_path  # noqa: E402
from unet.core.cli import OneLineParser, run_guarded  # noqa: E402
from unet.core.errors import InputError  # noqa: E402

#: The scores summarized, challenge scores first, and whether higher is better.
SCORES = (("v_rand", True), ("v_info", True), ("pixel_error", False),
          ("rand_error_thinned", False), ("dice", True))


def read_run(path):
    """The ``mean`` row of the ``metrics.json`` at ``path``; InputError naming it otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            mean = json.load(handle)["mean"]
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a metrics.json of evaluate.py (no 'mean' row)") from None
    missing = [name for name, _ in SCORES if not isinstance(mean.get(name), (int, float))]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} in its mean row (written by an "
                         "older evaluate.py?)")
    return {name: float(mean[name]) for name, _ in SCORES}


def summarize(runs):
    """``{score: {'mean', 'std', 'worst', 'worst_minus_mean', 'runs'}}`` of the run rows ``runs``
    (``std``: the sample standard deviation, 0.0 for one run)."""
    summary = {}
    for name, higher_better in SCORES:
        values = [run[name] for run in runs]
        mean = statistics.fmean(values)
        worst = min(values) if higher_better else max(values)
        summary[name] = {"mean": mean,
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "worst": worst, "worst_minus_mean": worst - mean, "runs": values}
    return summary


def format_summary(summary, labels):
    """A Markdown table of :func:`summarize`'s result, a column per run named by ``labels``."""
    head = ["score", "mean", "std", "worst", "worst - mean"] + list(labels)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary.items():
        cells = [name] + [f"{row[key]:.4f}" for key in ("mean", "std", "worst")] + \
            [f"{row['worst_minus_mean']:+.4f}"] + [f"{v:.4f}" for v in row["runs"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(path):
    """The run's name: the folder above ``predictions/`` or ``predictions-NAME/`` (``seed-0``),
    else the file's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder).split("-")[0] == "predictions":
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", metavar="METRICS_JSON",
                        help="metrics.json of each run (evaluate.py --data-dir ... --split ...)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the summary and the runs' paths as JSON to PATH")
    args = parser.parse_args(argv)

    def body():
        runs = [read_run(path) for path in args.metrics]
        summary = summarize(runs)
        print(format_summary(summary, [_label(path) for path in args.metrics]))
        if args.json:
            with atomic_path(args.json) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"runs": [os.path.abspath(p) for p in args.metrics],
                           "summary": summary}, handle, indent=2)
        return 0
    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
