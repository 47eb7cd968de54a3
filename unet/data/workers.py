"""Worker processes that build training batches, forked once by the caller.

Why not ``multiprocessing.Pool`` (what MXNet 1.9.1's ``DataLoader`` runs on): when a worker dies,
the pool's handler thread forks a replacement from that background thread. MXNet's at-fork
handler then waits for the engine to drain while the forking thread holds the GIL, and a main
thread that is using the engine at that moment (saving the state after a SIGTERM to the whole
process group killed the workers, say) never gets it back: the run hangs. Here only the caller
forks, every worker has its own pair of pipes (no shared lock that a killed worker could keep
taken), and a dead worker is reported at once instead of being replaced.
"""
import multiprocessing
import pickle
import signal
import traceback
import weakref
from multiprocessing.connection import wait

from ..core.errors import WorkerDied

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class BatchWorkers:
    """``num_workers`` processes, each calling ``make_batch(task)`` for the tasks it is sent.

    Parameters
    ----------
    make_batch : callable
        Runs in the workers. With the ``fork`` start method it is not pickled: closures over
        the caller's data (a dataset in memory) are fine; its results are pickled back.
    num_workers : int
        At least 1. The processes are forked here, by the calling thread.
    prefetch : int, default 2
        Tasks queued per worker ahead of the one being consumed. Tasks must be small (indices,
        not data): a task is sent while its worker may be blocked sending a large result.
    timeout : float or None, default None
        Seconds to wait for one result before :class:`WorkerDied`; None waits as long as it takes.

    :meth:`map` yields the results in task order. A worker killed by SIGTERM or SIGINT (the
    process group is being stopped: a scheduler's cancel, ``pkill -f``) raises
    ``KeyboardInterrupt`` in the caller, so it stops as on its own signal; any other death raises
    :class:`WorkerDied`. An exception in ``make_batch`` is raised again in the caller, with the
    worker's traceback as its cause. Workers ignore SIGINT: a terminal's Ctrl-C, sent to the whole
    process group, is the caller's to handle. They are killed by :meth:`close` or when this
    object is garbage-collected.
    """

    def __init__(self, make_batch, num_workers, prefetch=2, timeout=None):
        if num_workers < 1 or prefetch < 1:
            raise ValueError(f"need num_workers >= 1 and prefetch >= 1, got {num_workers!r}, "
                             f"{prefetch!r}")
        context = multiprocessing.get_context("fork")
        self.prefetch, self.timeout = int(prefetch), timeout
        self._workers = []
        self._next_ticket = 0
        self._current_map = None
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        # Ctrl-C and SIGTERM are blocked in this thread across the forks, and a child inherits
        # the mask: it would otherwise take one with the parent's handlers before _serve
        # installs its own (a KeyboardInterrupt traceback from inside the interpreter's at-fork
        # hooks). The child then drops a Ctrl-C and dies of a SIGTERM; this thread gets what
        # came meanwhile when its mask is restored (other threads may take one earlier).
        parent_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        try:
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                for rank in range(num_workers):
                    task_reader, task_writer = context.Pipe(duplex=False)
                    result_reader, result_writer = context.Pipe(duplex=False)
                    # The child closes the parent's ends it inherited, its own and the earlier
                    # workers', so that it sees end-of-file when the parent dies.
                    inherited = [end for w in self._workers for end in (w.tasks, w.results)]
                    process = context.Process(
                        target=_serve, name=f"unet-loader-{rank}", daemon=True,
                        args=(make_batch, task_reader, result_writer,
                              inherited + [task_writer, result_reader], parent_mask))
                    process.start()
                    task_reader.close()
                    result_writer.close()
                    self._workers.append(_Worker(rank, process, task_writer, result_reader))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        """The worker processes' ids, in rank order."""
        return [w.process.pid for w in self._workers]

    def map(self, tasks):
        """Yield ``make_batch(task)`` for each of ``tasks`` (a finite iterable), in order.

        Task ``i`` goes to worker ``i % num_workers``. One map runs at a time: results of an
        earlier map that was left before its end are recognized and dropped, and resuming that
        earlier map raises ``RuntimeError``.
        """
        tasks = list(tasks)
        start, self._next_ticket = self._next_ticket, self._next_ticket + len(tasks)
        self._current_map = start
        ahead = min(len(tasks), self.prefetch * len(self._workers))
        for i in range(ahead):
            self._send(start, i, tasks[i])
        for i in range(len(tasks)):
            if self._current_map != start or not self._workers:
                raise RuntimeError("this map was overtaken by a newer one, or the workers closed")
            result = self._workers[i % len(self._workers)].receive(start + i, self.timeout)
            if i + ahead < len(tasks):
                self._send(start, i + ahead, tasks[i + ahead])
            yield result

    def _send(self, start, i, task):
        worker = self._workers[i % len(self._workers)]
        try:
            worker.tasks.send((start + i, task))
        except (BrokenPipeError, ConnectionResetError):
            worker.raise_death()

    def close(self):
        """Kill the workers and wait for them; safe to call twice."""
        self._finalizer()


def _stop(workers):
    """Kill and reap ``workers`` (a list of :class:`_Worker`), close their pipes, empty the list."""
    for worker in workers:
        if worker.process.exitcode is None:
            worker.process.kill()
    for worker in workers:
        worker.process.join()
        worker.tasks.close()
        worker.results.close()
        worker.process.close()
    workers.clear()


class _Worker:
    """The parent's handle on one worker: its process and its two pipe ends."""

    def __init__(self, rank, process, tasks, results):
        self.rank, self.process, self.tasks, self.results = rank, process, tasks, results

    def receive(self, ticket, timeout=None):
        """The result of ``ticket``; earlier tickets' results are dropped."""
        while True:
            # Results sent before a death are still read: the pipe is checked first.
            if not self.results.poll():
                wait([self.results, self.process.sentinel], timeout)
                if not self.results.poll():
                    self.raise_death(timeout)
            try:
                got, ok, value, remote_traceback = self.results.recv()
            except EOFError:
                self.raise_death()
            if got < ticket:
                continue
            if got > ticket:
                raise RuntimeError(f"worker {self.rank} answered task {got} before {ticket}")
            if not ok:
                raise value from RemoteTraceback(remote_traceback)
            return value

    def raise_death(self, timeout=None):
        """Raise what this worker's silence means: its death, or a timeout while it lives."""
        self.process.join(0.0 if timeout is not None else 5.0)
        code = self.process.exitcode
        name = f"data-loader worker {self.rank} (pid {self.process.pid})"
        if code is None and timeout is not None:
            raise WorkerDied(f"{name} sent nothing for {timeout:g} s")
        if code is not None and -code in STOP_SIGNALS:
            raise KeyboardInterrupt
        how = (f"was killed by {_signal_name(-code)}" if code is not None and code < 0
               else f"exited with code {code}" if code is not None else "closed its pipe")
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        raise WorkerDied(f"{name} {how}{hint}; --num-workers 0 loads in the main process")


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text (the ``__cause__`` of the
    exception raised again in the caller)."""

    def __str__(self):
        return "\n" + self.args[0]


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _serve(make_batch, tasks, results, inherited, signal_mask):
    """A worker's loop: receive ``(ticket, task)``, send ``(ticket, ok, result or exception,
    traceback text)``. Starts with SIGINT and SIGTERM blocked; ``signal_mask`` is the parent's
    mask, restored once the worker's own handlers are in place."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
    for end in inherited:
        end.close()
    while True:
        try:
            ticket, task = tasks.recv()
        except (EOFError, OSError):     # the parent closed the pipe or died
            return
        try:
            message = (ticket, True, make_batch(task), None)
            payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:        # raised again in the parent
            text = "".join(traceback.format_exception(exc))
            payload = pickle.dumps((ticket, False, _picklable(exc, text), text),
                                   pickle.HIGHEST_PROTOCOL)
        try:
            results.send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError):
            return


def _picklable(exc, text):
    """``exc``, or a RuntimeError with its traceback where ``exc`` does not survive pickling."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"in a data-loader worker: {text}")
