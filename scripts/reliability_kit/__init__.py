"""The pieces of ``scripts/reliability.py``, the reliability campaign of issue 8.

    runs.py        the CLIs as a child process (``Child``) and in this process (``call_cli``)
    kills.py       the kill campaign: the trial plan, one kill, its judge, the final resume
    files.py       fabricated files (broken and odd PNGs, pickles) and checkpoint edits
    workspace.py   the dataset and trained checkpoint that the hostile cases start from
    judge.py       what a hostile case expects: one ``error:`` line, or the 8-bit result
    cases/         the hostile cases, by what they attack
    hostile.py     the list of cases and the campaign that runs them
    report.py      the text report of both campaigns
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # segmenter.py, evaluate.py and unet/ live two folders up
    sys.path.insert(0, ROOT)
