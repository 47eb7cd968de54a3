"""The package's layout: imports run one way (programs -> stages -> core), and no module of the
project outgrows ~400 lines."""
import ast
import os

import pytest

from project_paths import ROOT

# Each stage and what it may import of the others: a stage never reaches back up the pipeline.
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "data": {"core"},
    "cluster": {"core"},
    "checkpoints": {"core", "model"},
    "inference": {"core", "model", "data", "checkpoints"},
    "training": {"core", "model", "data", "checkpoints", "inference", "cluster"},
    "commands": {"core", "model", "data", "checkpoints", "inference", "training", "cluster"},
}
MAX_LINES = 400


def _python_files(folder):
    for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield from (os.path.join(base, f) for f in files if f.endswith(".py"))


def stages_imported(path, stage):
    """The stages of ``unet`` that module ``path`` (in ``unet/<stage>/``) imports."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("unet."):
                found.add(node.module.split(".")[1])
            elif node.level == 2 and node.module:   # from ..stage.module import x
                found.add(node.module.split(".")[0])
            elif node.level == 2:                  # from .. import stage
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("unet."))
    return found - {stage, "__version__"}


def test_the_stages_are_the_folders():
    folders = {name for name in os.listdir(os.path.join(ROOT, "unet"))
               if os.path.isfile(os.path.join(ROOT, "unet", name, "__init__.py"))}
    assert folders == set(ALLOWED)


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_imports_run_one_way(stage):
    wrong = {os.path.relpath(path, ROOT): sorted(stages_imported(path, stage) - ALLOWED[stage])
             for path in _python_files(os.path.join("unet", stage))}
    assert {path: found for path, found in wrong.items() if found} == {}


def test_the_judge_sees_an_import_back_up(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from ..training.loop import train\nfrom unet.inference import tiling\n"
                      "from .. import checkpoints\nfrom .. import __version__\n")
    assert stages_imported(module, "data") == {"training", "inference", "checkpoints"}


def test_no_module_outgrows_its_job():
    long = {}
    for folder in ("unet", "benchmarks", "scripts"):
        for path in _python_files(folder):
            with open(path, encoding="utf-8") as handle:
                lines = sum(1 for _ in handle)
            if lines > MAX_LINES:
                long[os.path.relpath(path, ROOT)] = lines
    assert long == {}
