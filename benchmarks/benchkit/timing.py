"""The child's clock: timed calls, their median, the process' peak memory."""
import time

CPU_MS = []   # process CPU ms of each timed call of the row: steadier than wall time on a busy machine


def peak_rss_mb():
    """The peak resident memory of this process so far, in MB (``ru_maxrss``)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def timed(fn, warmup, repeat):
    """Time calls of ``fn``: the first, ``warmup - 1`` more untimed, then ``repeat`` timed.

    The process CPU time of each timed call goes to :data:`CPU_MS`.

    Parameters
    ----------
    fn : callable
        Called without arguments; it waits for its own results.
    warmup : int
        Untimed calls, the first included (at least the first always runs).
    repeat : int
        Timed calls.

    Returns
    -------
    tuple of (float, list of float)
        The first call's ms and the ms of each timed call.
    """
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1e3
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        CPU_MS.append((time.process_time() - cpu) * 1e3)
    return first, times


def median(values):
    """The median of a non-empty sequence of numbers (the mean of the middle two if even)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
