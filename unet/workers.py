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
from multiprocessing.connection import wait

from .errors import WorkerDied

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
        Tasks queued per worker ahead of the one being consumed.

    :meth:`map` yields the results in task order. A worker killed by SIGTERM or SIGINT (the
    process group is being stopped: a scheduler's cancel, ``pkill -f``) raises
    ``KeyboardInterrupt`` in the caller, so it stops as on its own signal; any other death raises
    :class:`WorkerDied`. An exception in ``make_batch`` is raised again in the caller.
    """

    def __init__(self, make_batch, num_workers, prefetch=2):
        if num_workers < 1 or prefetch < 1:
            raise ValueError(f"need num_workers >= 1 and prefetch >= 1, got {num_workers!r}, "
                             f"{prefetch!r}")
        context = multiprocessing.get_context("fork")
        self.prefetch = int(prefetch)
        self._workers = []
        self._next_ticket = 0
        try:
            for rank in range(num_workers):
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                # The child closes the parent's ends it inherited, its own and the earlier
                # workers', so that it sees end-of-file when the parent dies.
                inherited = [end for w in self._workers for end in (w.tasks, w.results)]
                process = context.Process(
                    target=_serve, name=f"unet-loader-{rank}", daemon=True,
                    args=(make_batch, task_reader, result_writer,
                          inherited + [task_writer, result_reader]))
                process.start()
                task_reader.close()
                result_writer.close()
                self._workers.append(_Worker(rank, process, task_writer, result_reader))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        """The worker processes' ids, in rank order."""
        return [w.process.pid for w in self._workers]

    def map(self, tasks):
        """Yield ``make_batch(task)`` for each of ``tasks`` (a finite iterable), in order.

        Task ``i`` goes to worker ``i % num_workers``. Results of an earlier :meth:`map` that was
        left before its end are recognized and dropped.
        """
        tasks = list(tasks)
        start, self._next_ticket = self._next_ticket, self._next_ticket + len(tasks)
        ahead = min(len(tasks), self.prefetch * len(self._workers))
        for i in range(ahead):
            self._send(start, i, tasks[i])
        for i in range(len(tasks)):
            result = self._workers[i % len(self._workers)].receive(start + i)
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
        for worker in self._workers:
            if worker.process.exitcode is None:
                worker.process.kill()
        for worker in self._workers:
            worker.process.join()
            worker.tasks.close()
            worker.results.close()
            worker.process.close()
        self._workers = []


class _Worker:
    """The parent's handle on one worker: its process and its two pipe ends."""

    def __init__(self, rank, process, tasks, results):
        self.rank, self.process, self.tasks, self.results = rank, process, tasks, results

    def receive(self, ticket):
        """The result of ``ticket``; earlier tickets' results are dropped."""
        while True:
            # Results sent before a death are still read: the pipe is checked first.
            if not self.results.poll():
                wait([self.results, self.process.sentinel])
                if not self.results.poll():
                    self.raise_death()
            try:
                got, ok, value = self.results.recv()
            except EOFError:
                self.raise_death()
            if got < ticket:
                continue
            if not ok:
                raise value
            return value

    def raise_death(self):
        self.process.join(5.0)
        code = self.process.exitcode
        if code is not None and -code in STOP_SIGNALS:
            raise KeyboardInterrupt
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}" if code is not None else "closed its pipe")
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        raise WorkerDied(f"data-loader worker {self.rank} (pid {self.process.pid}) {how}{hint}; "
                         "--num-workers 0 loads in the main process")


def _serve(make_batch, tasks, results, inherited):
    """A worker's loop: receive ``(ticket, task)``, send ``(ticket, ok, result or exception)``."""
    for end in inherited:
        end.close()
    while True:
        try:
            ticket, task = tasks.recv()
        except (EOFError, OSError):     # the parent closed the pipe or died
            return
        try:
            message = (ticket, True, make_batch(task))
        except Exception as exc:        # raised again in the parent
            message = (ticket, False, _picklable(exc))
        try:
            results.send(message)
        except (BrokenPipeError, ConnectionResetError):
            return


def _picklable(exc):
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"in a data-loader worker: {''.join(traceback.format_exception(exc))}")
