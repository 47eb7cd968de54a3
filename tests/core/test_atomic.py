"""Atomic writes: the old file survives any failure, no temporary file is left behind."""
import json
import os

import pytest

from unet.core.atomic import atomic_path, write_bytes, write_json, write_text


def test_success_replaces_through_a_temp_file_beside_the_target(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        assert tmp.endswith(".png") and tmp != str(target)
        with open(tmp, "wb") as handle:
            handle.write(b"new")
        assert target.read_bytes() == b"old"          # not visible before the block ends
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["mask.png"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_leaves_old_file_and_no_temp(tmp_path, error):
    target = tmp_path / "unet.params"
    target.write_bytes(b"old weights")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half")
            raise error("crash while writing")
    assert target.read_bytes() == b"old weights"
    assert os.listdir(tmp_path) == ["unet.params"]


def test_exception_without_an_old_file_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "new.json"):
            raise ValueError("no")
    assert os.listdir(tmp_path) == []


def test_failing_rename_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def replace(src, dst):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_missing_folder_raises_and_writes_nothing(tmp_path):
    with pytest.raises(OSError):
        write_bytes(tmp_path / "absent" / "x.bin", b"data")
    assert os.listdir(tmp_path) == []


def test_write_helpers(tmp_path):
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    write_text(tmp_path / "t.txt", "membrane \u00b5m\n")
    write_json(tmp_path / "j.json", {"b": [1, 2], "a": None})
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_bytes() == "membrane \u00b5m\n".encode("utf-8")
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": None, "b": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "j.json", "t.txt"]
