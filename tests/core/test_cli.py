"""unet.core.cli: processes forked under run_guarded (data-loader workers) die quietly."""
import os
import signal
import subprocess
import sys
import textwrap
from project_paths import ROOT


# Loader workers forked under run_guarded: Ctrl-C reaches the whole process group, so a worker
# ignores it (the parent alone saves and reports); a SIGTERM kills a worker without a traceback,
# and the parent then stops as on its own SIGTERM: "interrupted", exit code 130.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from unet.core.cli import run_guarded
    from unet.data.workers import BatchWorkers

    def body():
        workers = BatchWorkers(abs, 2)
        try:
            first, second = workers.pids
            os.kill(first, signal.SIGINT)       # ignored by the worker
            time.sleep(0.5)
            print("results after SIGINT:", list(workers.map([-1, -2, -3])), flush=True)
            print("handler still ours:", signal.getsignal(signal.SIGTERM).__name__, flush=True)
            os.kill(second, signal.SIGTERM)
            time.sleep(0.5)
            list(workers.map([-4, -5]))
            return 0
        finally:
            workers.close()

    sys.exit(run_guarded(body))
""")


def test_forked_workers_ignore_ctrl_c_and_die_quietly_on_sigterm():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 130, run.stderr
    assert "results after SIGINT: [1, 2, 3]" in run.stdout
    assert run.stderr.strip() == "interrupted"
    assert "handler still ours: _terminate" in run.stdout
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr


def test_oserrors_are_one_line_with_the_exit_code_of_their_kind(capsys):
    import errno
    from unet.core.cli import run_guarded

    def raising(exc):
        def body():
            raise exc
        return body
    cases = [(NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/b"), 2),
             (OSError(errno.ENOSPC, "No space left on device", "out.png"), 1)]
    for exc, code in cases:
        assert run_guarded(raising(exc)) == code
        err = capsys.readouterr().err
        assert err == f"error: {exc.strerror} ({exc.filename})\n"


def test_a_closed_output_pipe_is_quiet():
    # `evaluate.py ... | head`: the reader goes away; no traceback, no error line.
    script = ("import sys\nfrom unet.core.cli import run_guarded\n"
              "def body():\n    for _ in range(100000):\n        print('x' * 100)\n    return 0\n"
              "sys.exit(run_guarded(body))\n")
    run = subprocess.run(f"{sys.executable} -c \"$S\" | head -1", shell=True, cwd=ROOT,
                         env=dict(os.environ, S=script), capture_output=True, text=True,
                         timeout=60)
    assert run.stdout == "x" * 100 + "\n" and run.stderr == "", run.stderr
