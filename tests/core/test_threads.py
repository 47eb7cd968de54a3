"""unet.core.threads: one OpenMP thread per physical core unless OMP_NUM_THREADS is set."""
import os
import subprocess
import sys

from unet.core import threads
from project_paths import ROOT


def test_physical_cores_is_within_the_cpus_we_may_use():
    assert 1 <= threads.physical_cores() <= len(os.sched_getaffinity(0))


def test_default_fills_in_only_an_unset_variable():
    environ = {}
    assert threads.default_omp_threads(environ) == str(threads.physical_cores())
    assert threads.default_omp_threads({"OMP_NUM_THREADS": "3"}) == "3"


def test_importing_unet_sets_it_before_mxnet_starts_and_cluster_processes_do_not_inherit_it():
    code = ("import os, unet, mxnet; from unet.core import threads; from unet.cluster import nodes; "
            "print(os.environ['OMP_NUM_THREADS'], threads.physical_cores(), "
            "nodes.local_nodes(1, 1, ['x'], 9)[2].env['OMP_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    set_to, cores, worker = out.stdout.split()
    assert set_to == cores and worker == "1", out.stderr
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         env=dict(env, OMP_NUM_THREADS="5"), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split()[0] == "5" and out.stdout.split()[2] == "5", out.stderr
