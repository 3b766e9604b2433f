"""staged_dir: the folder swap behind bundles and reports (a folder appears whole or not at all)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from skinedge.device.atomic import staged_dir


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_new_folder_appears_with_its_files_and_shared_permissions(tmp_path: Path):
    out = tmp_path / "bundle"
    with staged_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        assert not out.exists()  # nothing visible until the block ends
    assert (out / "sub" / "a.txt").read_text() == "a"
    assert _siblings(out) == ["bundle"]  # no staging or .old folder left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_an_existing_folder_is_replaced_whole(tmp_path: Path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with staged_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(out) == ["report"]


def test_an_error_while_filling_leaves_the_old_folder_untouched(tmp_path: Path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as tmp:
            (tmp / "model.tflite").write_bytes(b"half")
            raise KeyboardInterrupt
    assert (out / "model.tflite").read_bytes() == b"old"
    assert _siblings(out) == ["bundle"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"old")
    real_rename = Path.rename

    def rename(self: Path, target):
        if self.name.startswith(".bundle.") and not self.name.endswith(".old"):  # the staging folder's swap
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        with staged_dir(out) as tmp:
            (tmp / "model.tflite").write_bytes(b"new")
    assert (out / "model.tflite").read_bytes() == b"old"
    assert _siblings(out) == ["bundle"]
