"""The parts of ``benchmarks/bench.py``, the CLI that puts them together.

Parent side (the ``bench.py`` process): :mod:`.specs` turns the command line into one spec per
row and checks it, :mod:`.machine` describes the machine, :mod:`.runner` runs every row in a fresh
``bench.py --child`` process, :mod:`.table` prints the rows.

Child side (one row per process): :mod:`.child` measures a row with the runner of its task,
:mod:`.train` (a training step), :mod:`.infer` (a forward pass, tiled inference), :mod:`.loader`
(the data pipeline), :mod:`.epoch` (a short training run) or :mod:`.stream` (chunked inference
of a Zarr section), on the networks of :mod:`.nets`,
with the clock of :mod:`.timing` and the FLOP count of :mod:`.flops`.

Nothing here imports ``mxnet`` or ``unet`` at import time: the child imports ``unet`` first, as
the CLIs do.
"""
