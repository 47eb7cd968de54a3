"""Import scripts/reliability.py (a script, not a package module) for the tests that drive it."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_reliability_script():
    spec = importlib.util.spec_from_file_location(
        "reliability", os.path.join(ROOT, "scripts", "reliability.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
