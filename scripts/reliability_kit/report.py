"""The text report of both campaigns (``--json`` prints their results as they are)."""
from .kills import POINTS, RANDOM, describe


def kill_table(result):
    rows = {}
    for trial in result["trials"]:
        row = rows.setdefault(trial["point"], [0, 0, 0])
        row[0] += 1
        row[1] += not trial["problems"]
        row[2] += bool(trial.get("left"))
    lines = [f"{'kill point':<28}{'tried':>6}{'survived':>10}{'left .tmp/.pending':>20}"]
    for point in POINTS + RANDOM:
        if point in rows:
            tried, survived, left = rows[point]
            lines.append(f"{point:<28}{tried:>6}{survived:>10}{left:>20}")
    return "\n".join(lines)


def report(kills, hostile):
    lines = []
    if kills is not None:
        lines += [f"kills: {kills['tried']} tried, {kills['survived']} survived, "
                  f"{kills['failures']} failures (final resume to epoch {kills['final_epoch']}: "
                  f"{'ok' if kills['final_resume'] else 'FAILED'})", kill_table(kills)]
        lines += [f"  {describe(t)}: {'; '.join(t['problems'])}"
                  for t in kills["trials"] if t["problems"]]
        if not kills["best_consistent"]:
            lines.append("  after the final resume the last checkpoint names epoch %d as the "
                         "best, the best checkpoint holds epoch %d" % tuple(kills["best"]))
    if hostile is not None:
        lines.append(f"hostile inputs: {hostile['tried']} tried, {hostile['tracebacks']} "
                     f"tracebacks, {hostile['wrong']} silent wrong results")
        lines += [f"  {c['case']}: {c['outcome']}: {c['detail']}" for c in hostile["cases"]
                  if c["outcome"] != "ok"]
    return "\n".join(lines)
