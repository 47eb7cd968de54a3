"""The two CLIs run for the campaigns: ``segmenter.py`` as a child process, either in-process."""
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading

from . import ROOT

TINY = ["--base-channels", "4", "--depth", "2", "--image-size", "32", "--norm", "batch",
        "--batch-size", "4", "--log-images", "1"]


def make_dataset(root):
    from unet.data.demo import generate_demo_dataset
    generate_demo_dataset(root, seed=3, size=64, n_train=8, n_validate=2, n_test=2)
    return root


class Child:
    """A ``segmenter.py`` child in its own session, its stderr lines collected by a thread."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "segmenter.py")] + argv,
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=True)
        self.lines, self.seen = [], threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()

    def wait_for(self, text, timeout):
        """Block until a stderr line contains ``text`` (True) or the child ends (False)."""
        with self.seen:
            return self.seen.wait_for(lambda: any(text in l for l in self.lines)
                                      or self.proc.poll() is not None, timeout) and \
                any(text in l for l in self.lines)

    def kill_after(self, delay):
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout=300):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # loader workers left behind, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=30)
        return code, "".join(self.lines)


def call_cli(name, argv):
    """``name.main(argv)`` in this process; returns (exit code, stderr text), the log lines
    included, as a process of its own would print them: the log handler that the first call's
    ``logging.basicConfig`` bound to its own stderr is pointed at this call's, and where there
    is none (under pytest, whose handlers make ``basicConfig`` do nothing) one is added, with the
    INFO level that ``unet.core.cli.setup_logging`` sets."""
    module = __import__(name)
    err, out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    # Plain StreamHandlers only: pytest's capture handlers are subclasses and stay as they are.
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(err)
    added, level = None, root.level
    if not handlers:
        added = logging.StreamHandler(err)
        root.addHandler(added)
        root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = module.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
        if added is not None:
            root.removeHandler(added)
            root.setLevel(level)
    return code, err.getvalue()
