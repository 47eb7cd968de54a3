"""Hostile inputs to both CLIs (scripts/reliability.py's list): every bad file gets one
``error:`` line and a non-zero exit code, never a traceback; valid odd files (16-bit, RGBA,
palette, 1x1, names with spaces or non-UTF-8 bytes) work and give the 8-bit file's result; no
pickle in a checkpoint is ever executed."""
import pytest

from script_loader import load_reliability_script

reliability = load_reliability_script()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = reliability.Workspace(str(tmp_path_factory.mktemp("hostile")))
    return ws, dict(reliability.hostile_cases(ws))


@pytest.mark.parametrize("name", reliability.case_names())
def test_hostile_input(workspace, name):
    ws, cases = workspace
    outcome, detail = reliability.run_case(ws, name, cases[name])
    assert outcome == "ok", detail


def test_case_list_covers_the_issue():
    names = " ".join(reliability.case_names())
    for needed in ("zero-byte", "truncated", "text named .png", "16-bit", "RGBA", "palette",
                   "1x1", "huge header", "unexpected values", "another size", "non-UTF-8",
                   "spaces", "another architecture", "params that is a PNG", "pickle",
                   "JSON without model", "JSON missing"):
        assert needed in names, needed
    assert len(reliability.case_names()) >= 50


def test_a_traceback_and_a_silent_success_are_caught(workspace, tmp_path):
    """The judge itself: an exception out of main() and an exit code 0 for bad input count."""
    ws, _ = workspace

    def raises(folder):
        raise RuntimeError("boom")
    assert reliability.run_case(ws, "raises", raises)[0] == "traceback"

    def silent(folder):
        return reliability.error_case("evaluate", ["--image", ws.image, "--network-param",
                                                   ws.ckpt, "--output",
                                                   str(tmp_path / "m.png")])
    outcome, detail = reliability.run_case(ws, "silent", silent)
    assert outcome == "wrong" and "exit code 0" in detail
