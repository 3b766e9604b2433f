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
import sys

import click

from skinedge import __version__

# subcommand -> "module:attribute"; nothing here is imported until the subcommand runs
COMMANDS = {
    "train": "skinedge.train.cli:train",
    "convert": "skinedge.convert.cli:convert",
    "compare": "skinedge.train.cli:compare",
    "device": "skinedge.device.cli:device",
}
HELP = {
    "train": "Train a classifier with quantization-aware training (needs skinedge[train]).",
    "convert": "Convert a trained run to a verified full-integer int8 TFLite bundle (needs skinedge[train]).",
    "compare": "Compare float, QAT, int8 TFLite and PTQ models on labelled images (needs skinedge[train]).",
    "device": "Run a bundle on a device: classify images offline, no TensorFlow.",
}


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
