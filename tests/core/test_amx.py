"""unet.core.amx: oneDNN's AMX kernels where the CPU has them and Linux grants the permission."""
import os
import subprocess
import sys

import pytest

from project_paths import ROOT
from unet.core import amx

# AMX usable here: the CPU has it and Linux grants this process the permission.
HAS_AMX = amx.AMX_FLAGS <= amx.cpu_flags() and amx.request_tile_permission()

# A bfloat16 copy of a small convolution network, compared with its float32 original; prints
# the largest difference relative to the largest output.
BF16_CONV = """
import numpy as np, mxnet as mx
from mxnet.contrib import amp
from mxnet.gluon import nn
mx.random.seed(0)
net = nn.HybridSequential()
net.add(nn.Conv2D(32, 3, padding=1, in_channels=4), nn.Conv2D(8, 3, padding=1, in_channels=32))
net.initialize(mx.init.Xavier())
net.hybridize()
x = mx.nd.random.normal(shape=(1, 4, 32, 32))
reference = net(x).asnumpy()
low = amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu())(x)
out = mx.nd.amp_cast(low, dtype="float32").asnumpy()
print(float(np.abs(out - reference).max() / np.abs(reference).max()))
"""


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != amx.ISA_VARIABLE}
    return dict(env, PYTHONPATH=ROOT, **extra)


def _run(code, **extra):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(**extra),
                          capture_output=True, text=True, timeout=120)


def test_cpu_flags_reads_the_first_cpus_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert amx.cpu_flags(str(info)) == {"fpu", "avx512f", "amx_tile", "amx_bf16"}
    assert amx.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_enable_amx_sets_the_isa_only_with_amx_and_the_permission():
    asked = []

    def granted():
        asked.append(True)
        return True

    environ = {}
    assert not amx.enable_amx(environ, flags={"avx512f", "avx512_bf16"}, request=granted)
    assert environ == {} and asked == []                   # no AMX: not even asked
    assert not amx.enable_amx(environ, flags=amx.AMX_FLAGS, request=lambda: False)
    assert environ == {}                                    # refused (Linux < 5.16): left off
    assert amx.enable_amx(environ, flags=amx.AMX_FLAGS | {"fpu"}, request=granted)
    assert environ == {amx.ISA_VARIABLE: amx.AMX_ISA}


def test_a_users_isa_is_kept_but_the_permission_is_still_asked_for():
    asked = []
    environ = {amx.ISA_VARIABLE: "AVX512_CORE_BF16"}
    assert not amx.enable_amx(environ, flags=amx.AMX_FLAGS, request=lambda: asked.append(1) or 1)
    assert environ == {amx.ISA_VARIABLE: "AVX512_CORE_BF16"} and asked == [1]
    # Inherited from a process that set it: this one asks too, so its AMX code cannot SIGILL.
    environ = {amx.ISA_VARIABLE: amx.AMX_ISA}
    assert amx.enable_amx(environ, flags=amx.AMX_FLAGS, request=lambda: True)
    # oneDNN takes the value as written: in small letters it does not turn AMX on.
    assert not amx.enable_amx({amx.ISA_VARIABLE: "avx512_core_amx"}, flags=amx.AMX_FLAGS,
                              request=lambda: True)


def test_a_refused_permission_with_the_amx_isa_set_is_reported(caplog):
    environ = {amx.ISA_VARIABLE: amx.AMX_ISA}
    assert not amx.enable_amx(environ, flags=amx.AMX_FLAGS, request=lambda: False)
    assert "refused" in caplog.text and environ == {amx.ISA_VARIABLE: amx.AMX_ISA}


def test_importing_unet_sets_it_only_with_amx_and_user_environ_leaves_it_out():
    # user_environ() is what the launcher (local and ssh) passes on to a cluster's processes.
    code = ("import os, unet; from unet.core.threads import user_environ; "
            f"print(os.environ.get('{amx.ISA_VARIABLE}', '-'), "
            f"user_environ().get('{amx.ISA_VARIABLE}', '-'))")
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [amx.AMX_ISA if HAS_AMX else "-", "-"]
    out = _run(code, **{amx.ISA_VARIABLE: "AVX2"})
    assert out.stdout.split() == ["AVX2", "AVX2"], out.stderr


@pytest.mark.skipif(not HAS_AMX, reason="no AMX here (CPU flags, or Linux's permission)")
def test_bf16_runs_on_amx_kernels_after_import_unet_and_matches_fp32():
    out = _run("import unet\n" + BF16_CONV, DNNL_VERBOSE="1")
    assert out.returncode == 0, out.stderr[-2000:]
    convolutions = [line for line in out.stdout.splitlines()
                    if line.startswith("dnnl_verbose,exec,cpu,convolution")]
    assert any("amx" in line for line in convolutions), convolutions
    assert float(out.stdout.splitlines()[-1]) < 2e-2     # bfloat16 has an 8-bit mantissa


@pytest.mark.skipif(not HAS_AMX, reason="no AMX here (CPU flags, or Linux's permission)")
def test_without_the_permission_the_same_isa_kills_the_process():
    # Why unet.core.amx asks for the permission: MXNet's oneDNN 2.4 does not.
    out = _run(BF16_CONV, **{amx.ISA_VARIABLE: amx.AMX_ISA})
    assert out.returncode == -4, (out.returncode, out.stderr[-2000:])     # SIGILL
