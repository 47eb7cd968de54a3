"""unet.data.workers.BatchWorkers: ordered results, worker errors, dead workers reported, not replaced.

The death cases run in a child process, so that a regression that hangs fails by timeout.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from unet.core.errors import InputError, WorkerDied
from unet.data.workers import BatchWorkers, RemoteTraceback
from project_paths import ROOT


class TwoArgumentError(Exception):
    """Pickles, but does not unpickle: its __init__ needs two arguments, args holds one."""

    def __init__(self, first, second):
        super().__init__(first)


def square(task):
    if task == "odd":
        raise TwoArgumentError("odd", 2)
    if task == "bad":
        raise InputError("bad.png: not a PNG")
    if task == "unpicklable":
        return lambda: None
    if task == "slow":
        time.sleep(30)
    return task * task


def test_results_come_in_task_order_and_a_left_iteration_is_forgotten():
    workers = BatchWorkers(square, 3, prefetch=2)
    try:
        assert list(workers.map(range(20))) == [i * i for i in range(20)]
        left = workers.map(range(100, 120))
        assert next(left) == 100 * 100        # 6 tasks were sent (3 workers x 2): 5 in flight
        assert list(workers.map(range(7))) == [i * i for i in range(7)]
        with pytest.raises(RuntimeError, match="overtaken"):
            next(left)                        # the newer map took over
        assert list(workers.map([])) == []
    finally:
        workers.close()
    workers.close()                           # twice is fine


def test_an_exception_in_a_worker_is_raised_again_with_its_traceback():
    workers = BatchWorkers(square, 2)
    try:
        with pytest.raises(InputError, match="bad.png") as caught:
            list(workers.map([1, 2, "bad", 4]))
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "in square" in str(caught.value.__cause__)     # the worker's own frames
        unpicklable = "(?s)in a data-loader worker:.*TwoArgumentError: odd"
        with pytest.raises(RuntimeError, match=unpicklable):
            list(workers.map(["odd"]))
        with pytest.raises(Exception, match="pickle"):    # a result that cannot be sent back
            list(workers.map(["unpicklable"]))
        assert list(workers.map([5, 6])) == [25, 36]   # the workers live on
    finally:
        workers.close()


def test_a_worker_that_hangs_times_out():
    workers = BatchWorkers(square, 1, timeout=0.5)
    try:
        with pytest.raises(WorkerDied, match="worker 0 .* sent nothing for 0.5 s"):
            list(workers.map(["slow"]))
    finally:
        workers.close()


DEATH = textwrap.dedent("""
    import os, signal, sys, time
    from unet.core.errors import WorkerDied
    from unet.data.workers import BatchWorkers

    def slow(task):
        time.sleep(0.05)
        return task

    workers = BatchWorkers(slow, 2)
    pids = workers.pids
    print("pids", *pids)
    assert list(workers.map(range(4))) == [0, 1, 2, 3]
    os.kill(pids[1], int(sys.argv[1]))
    time.sleep(0.5)
    try:
        list(workers.map(range(6)))
        print("no error")
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    except WorkerDied as exc:
        print("WorkerDied:", exc)
    assert workers.pids == pids          # no replacement was forked
    workers.close()
    print("closed")
""")


@pytest.mark.parametrize("signal_number, expected", [
    (9, "WorkerDied: data-loader worker 1 (pid {pid}) was killed by SIGKILL (out of memory?);"),
    (10, "WorkerDied: data-loader worker 1 (pid {pid}) was killed by SIGUSR1;"),
    (40, "WorkerDied: data-loader worker 1 (pid {pid}) was killed by signal 40;"),   # real-time
    (15, "KeyboardInterrupt"),     # SIGTERM: the process group is being stopped
])
def test_a_dead_worker_is_reported_not_replaced(signal_number, expected):
    out = subprocess.run([sys.executable, "-c", DEATH, str(signal_number)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == "closed", out
    pids = lines[0].split()[1:]
    assert len(pids) == 2
    assert lines[1].startswith(expected.format(pid=pids[1])), lines


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:      # an orphan that exited, not yet reaped
        return stat.read().split(") ")[1].startswith("Z")


def test_workers_exit_when_their_parent_is_killed():
    code = textwrap.dedent("""
        import time
        from unet.data.workers import BatchWorkers
        workers = BatchWorkers(abs, 2)
        print(*workers.pids, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait(30)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), pids


def test_garbage_collection_stops_the_workers():
    workers = BatchWorkers(abs, 2)
    pids = workers.pids
    del workers
    assert all(_gone(pid) for pid in pids)


def test_bad_arguments():
    with pytest.raises(ValueError):
        BatchWorkers(square, 0)
