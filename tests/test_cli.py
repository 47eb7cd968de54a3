"""unet.cli: processes forked under run_guarded (data-loader workers) die quietly."""
import os
import signal
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A pool forked under run_guarded, terminated (SIGTERM to its workers) while they wait for work,
# as the DataLoader's pool is at the end of every epoch; then Ctrl-C sent to a worker.
SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    from unet.cli import run_guarded

    def body():
        pool = multiprocessing.get_context("fork").Pool(2)
        workers = [p.pid for p in pool._pool]
        time.sleep(0.5)
        os.kill(workers[0], signal.SIGINT)      # ignored by the worker
        time.sleep(0.5)
        alive = all(p.is_alive() for p in pool._pool)
        pool.terminate()
        pool.join()
        print("workers alive after SIGINT:", alive)
        print("handler still ours:", signal.getsignal(signal.SIGTERM).__name__)
        return 0

    sys.exit(run_guarded(body))
""")


def test_forked_workers_ignore_ctrl_c_and_die_quietly_on_sigterm():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "workers alive after SIGINT: True" in run.stdout
    assert "handler still ours: _terminate" in run.stdout
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr
