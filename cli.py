"""The `skinedge` command: a click group whose subcommands are imported only when invoked.

    skinedge train DATA --out runs/ham            # workstation (TensorFlow)
    skinedge convert runs/ham --out models/ham    # workstation (TensorFlow)
    skinedge compare DATA --run runs/ham --bundle models/ham --out reports/ham
    skinedge device classify models/ham IMAGES... # Raspberry Pi (no TensorFlow)

Lazy loading keeps `skinedge device ...` free of TensorFlow and quick to start.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import click

from skinedge import __version__

# Exit status of every command: 0 done; 1 the work failed part way (a write error, a model that fails
# verification, some inputs of a batch that could not be read); 2 a usage error or an input that cannot be used
# at all (data, run dir, model, bundle), reported before any work starts.
EXIT_FAILED, EXIT_USAGE = 1, 2
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# subcommand -> "module:attribute"; nothing here is imported until the subcommand runs
COMMANDS = {
    "train": "skinedge.train.cli:train",
    "convert": "skinedge.convert.cli:convert",
    "compare": "skinedge.train.cli:compare",
    "card": "skinedge.train.cli:card",
    "runs": "skinedge.train.cli:runs",
    "device": "skinedge.device.cli:device",
}
HELP = {
    "train": "Train a classifier with quantization-aware training (needs skinedge[train]).",
    "convert": "Convert a trained run to a verified full-integer int8 TFLite bundle (needs skinedge[train]).",
    "compare": "Compare float, QAT, int8 TFLite and PTQ models on labelled images (needs skinedge[train]).",
    "card": "Write a bundle's model card (README.md) from its model.json, a compare report and the run.",
    "runs": "List training runs side by side: status, split, differing settings, validation scores.",
    "device": "Run a bundle on a device: classify images offline, no TensorFlow.",
}


class InputError(click.ClickException):
    """Data, a run dir, a model or a bundle that cannot be used: one line naming the file, exit status 2."""

    exit_code = EXIT_USAGE


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses NaN and infinity (NaN passes every range comparison)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some libraries put several lines or none in it)."""
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def os_error(exc: OSError, where: object) -> str:
    """A failed read or write as one line: which file, and why (No space left on device, Read-only file system...).
    `where` names the folder when the error does not carry a file name (h5py's do not)."""
    return f"{exc.filename or where}: {exc.strerror or one_line(exc)}"


def check_hdf5(path: Path) -> None:
    """Refuse a weights file that is not HDF5 (a truncated copy, an HTML error page) before any work: exit 2."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InputError(os_error(exc, path)) from None
    if magic != HDF5_MAGIC:
        raise InputError(f"{path}: not an HDF5 weights file")


def check_out_dir(out: str, replaceable: Optional[Callable[[Path], bool]] = None, what: str = "folder",
                  param_hint: str = "'--out'") -> Path:
    """Refuse an output folder that cannot be written, before any work starts (click usage error, exit 2).

    `out` may exist (an empty folder, or one `replaceable` accepts: a previous bundle or report) or not; then its
    nearest existing parent must be writable. Checked with os.access and a small write probe (os.access alone
    says yes to root on a read-only mount)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} exists and is not a folder.", param_hint=param_hint)
    if path.is_dir() and replaceable is not None and any(path.iterdir()) and not replaceable(path):
        raise click.BadParameter(f"{path} already exists, is not empty and is not a skinedge {what}: refusing "
                                 "to use it (choose a new folder).", param_hint=param_hint)
    base = path.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise click.BadParameter(f"{base} is not a folder.", param_hint=param_hint)
    if not os.access(base, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{base} is not writable.", param_hint=param_hint)
    try:
        fd, probe = tempfile.mkstemp(prefix=".skinedge-write-test-", dir=base)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise click.BadParameter(f"cannot write in {base} ({exc.strerror or one_line(exc)}).",
                                 param_hint=param_hint) from None
    return path


def is_bundle_dir(path: Path) -> bool:
    """A folder written by `skinedge convert` (its files only, no subfolders)."""
    return (path / "model.tflite").is_file() and not any(p.is_dir() for p in path.iterdir())


def is_report_dir(path: Path) -> bool:
    """A folder written by `skinedge compare` (its files only, no subfolders)."""
    return (path / "metrics.json").is_file() and not any(p.is_dir() for p in path.iterdir())


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise click.ClickException(
                f"`skinedge {name}` needs a package that is not installed ({missing}); "
                "install the workstation extra: pip install 'skinedge[train]'"
            ) from None
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        """Run the subcommand; an error no command anticipated still ends in one line and exit status 1, with the
        traceback shown only at -vv (debug)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback for users
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            if isinstance(exc, OSError) and exc.errno is not None:
                message = f"{exc.filename}: {exc.strerror}" if exc.filename else f"system error: {one_line(exc)}"
            else:
                message = f"unexpected {type(exc).__name__}: {one_line(exc)} (run with -vv for the traceback)"
            raise click.ClickException(message) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # describe subcommands without importing them (that would load TensorFlow just to print help)
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skinedge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Skin-lesion classification at the edge: QAT training, int8 TFLite bundles, offline device runner.

    \b
    Example (the whole pipeline on a small slice of HAM10000):
      skinedge train ../shared/data/ham10000 --limit 600 --out runs/quick
      skinedge convert runs/quick --out models/quick
      skinedge compare ../shared/data/ham10000 --run runs/quick --bundle models/quick --out reports/quick
      skinedge device classify models/quick ../shared/data/ham10000/images/ISIC_0027419.jpg
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
