"""Files and folders that appear whole or not at all: bundles (`write_bundle`) and comparison reports are written
with `staged_dir`, single files (weights, run state, checkpoints) with `replaced_file`, copies with `copy_file`.

    with staged_dir(Path("models/ham")) as tmp:
        (tmp / "model.tflite").write_bytes(data)      # fill the staging folder...
    # ...which has now replaced models/ham in one rename; on an exception models/ham is left as it was

The staging folder is a hidden sibling (same file system, so the final rename is atomic). Its files are fsynced
before the swap, and a previous folder is kept aside until the new one is in place, then removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on a clean exit it replaces `path` in one rename, and it is
    removed either way, so a failed write (a full disk, an exception) leaves `path` as it was. The name keeps all of
    `path`'s suffixes, because Keras and numpy choose the file format from them."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, dest: Path) -> None:
    """shutil.copyfile through `replaced_file`: a copy that fails half way leaves `dest` as it was."""
    with replaced_file(dest) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it replaces `out_dir`, on an error it is deleted."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # mkdtemp makes the folder private (0700); give it the usual permissions under the umask so another user
        # (a service account on the device) can read it, also after a copy that preserves modes
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            try:
                tmp.rename(out_dir)
            except BaseException:
                old.rename(out_dir)  # put the previous folder back before reporting the failure
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
