"""unet.workers.BatchWorkers: ordered results, worker errors, dead workers reported, not replaced.

The death cases run in a child process, so that a regression that hangs fails by timeout.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from unet.errors import InputError
from unet.workers import BatchWorkers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def square(task):
    if task == "bad":
        raise InputError("bad.png: not a PNG")
    return task * task


def test_results_come_in_task_order_and_a_left_iteration_is_forgotten():
    workers = BatchWorkers(square, 3, prefetch=2)
    try:
        assert list(workers.map(range(20))) == [i * i for i in range(20)]
        left = workers.map(range(100, 120))
        assert next(left) == 100 * 100        # 12 more are in flight when it is left
        left.close()
        assert list(workers.map(range(7))) == [i * i for i in range(7)]
        assert list(workers.map([])) == []
    finally:
        workers.close()
    workers.close()                           # twice is fine


def test_an_exception_in_a_worker_is_raised_again_in_the_caller():
    workers = BatchWorkers(square, 2)
    try:
        with pytest.raises(InputError, match="bad.png"):
            list(workers.map([1, 2, "bad", 4]))
        assert list(workers.map([5, 6])) == [25, 36]   # the worker lives on
    finally:
        workers.close()


DEATH = textwrap.dedent("""
    import os, signal, sys, time
    from unet.errors import WorkerDied
    from unet.workers import BatchWorkers

    def slow(task):
        time.sleep(0.05)
        return task

    workers = BatchWorkers(slow, 2)
    pids = workers.pids
    assert list(workers.map(range(4))) == [0, 1, 2, 3]
    os.kill(pids[1], getattr(signal, sys.argv[1]))
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


@pytest.mark.parametrize("signal_name, expected", [
    ("SIGKILL", "WorkerDied: data-loader worker 1 (pid {pid}) was killed by SIGKILL (out of memory?)"),
    ("SIGSEGV", "WorkerDied: data-loader worker 1 (pid {pid}) was killed by SIGSEGV;"),
    ("SIGTERM", "KeyboardInterrupt"),     # the process group is being stopped
])
def test_a_dead_worker_is_reported_not_replaced(signal_name, expected):
    out = subprocess.run([sys.executable, "-c", DEATH, signal_name], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "closed"
    pid = lines[0].split("pid ")[1].split(")")[0] if "pid " in lines[0] else ""
    assert lines[0].startswith(expected.format(pid=pid)), lines


def test_workers_exit_when_their_parent_is_killed():
    code = textwrap.dedent("""
        import time
        from unet.workers import BatchWorkers
        workers = BatchWorkers(abs, 2)
        print(*workers.pids, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    parent.kill()
    parent.wait(30)
    for pid in pids:
        for _ in range(100):        # orphans, reaped by init once they exit
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} outlived its parent")


def test_bad_arguments():
    with pytest.raises(ValueError):
        BatchWorkers(square, 0)
