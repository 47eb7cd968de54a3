"""The project as an installed package: ``pip install .`` into a fresh environment gives
``import unet`` from any folder, the compiled kernels' sources, and the ``unet-train`` and
``unet-evaluate`` commands; ``python -m unet.launch`` stays free of MXNet's import."""
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

from project_paths import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A new environment with ``pip install --no-deps .`` of this checkout; the pinned
    dependencies come from the test environment's site-packages (a ``.pth`` line)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", "--no-deps", "--no-cache-dir", ROOT],
        capture_output=True, text=True, timeout=600)
    if build.returncode and "Could not find a version that satisfies" in build.stderr:
        pytest.skip("no setuptools for the build environment (no package index here)")
    assert build.returncode == 0, build.stderr[-2000:]
    return env_dir, site


def run(env_dir, *argv, cwd):
    return subprocess.run([str(env_dir / "bin" / argv[0]), *argv[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_unet_imports_from_the_installed_copy_in_any_folder(installed, tmp_path):
    env_dir, site = installed
    out = run(env_dir, "python", "-c",
              "import unet, unet.model.native as n; print(unet.__file__); "
              "print(all(p.is_file() for p in (n.WIDTH_NORM.source, n.CONV3X3.source, "
              "n.CONV3X3.source.with_name('operator.h'))))", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    location, sources = out.stdout.split()
    assert location.startswith(site) and sources == "True"


def test_the_console_commands_run_the_programs(installed, tmp_path):
    env_dir, _ = installed
    train = run(env_dir, "unet-train", "--summary", "--channels", "1", "--image-size", "32",
                "--base-channels", "4", "--depth", "2", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "BaseConvBlock" in train.stdout and "Total params" in train.stdout
    evaluate = run(env_dir, "unet-evaluate", "--help", cwd=tmp_path)
    assert evaluate.returncode == 0 and "--network-param" in evaluate.stdout
    missing = run(env_dir, "unet-evaluate", "--image", "nope.png", "--network-param",
                  "nope.params", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr


def test_the_launcher_module_starts_without_mxnet(installed, tmp_path):
    env_dir, _ = installed
    out = run(env_dir, "python", "-c",
              "import runpy, sys; sys.argv = ['x', '--help']\n"
              "try:\n    runpy.run_module('unet.launch', run_name='__main__')\n"
              "except SystemExit as e:\n    print(e.code, 'mxnet' in sys.modules)", cwd=tmp_path)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr
