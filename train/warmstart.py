"""Pretrain on one data set for another without leaking lesions: `skinedge train --leave-out RUN` / `--init-from RUN`.

    samples = left_out(samples, open_run(cfg.leave_out, "--leave-out"))   # pretraining: drop RUN's val/test lesions
    source = open_source(cfg)                         # RunError unless RUN is a finished run of the same arch
    pinned = pinned_groups(samples, source)           # this run's lesions that RUN trained or validated on
    splits = split_samples(samples, 0.15, 0.15, 42, pinned=pinned)   # ...stay in training
    copy_backbone(model, source)                      # every layer but the head, before the head phase

`skinedge train --float-from RUN` runs QAT alone (after --settle-epochs, if any) on RUN's best float model, split
and settings (float_run, adopt_float): QAT recipes compared on one float model, without training it again.

The typical use is HAM10000 before the 9-class ISIC set, which reuses HAM10000 images. A model that has trained on
a lesion must not be validated or tested on it, nor should early stopping have been tuned on it. The clean recipe
is three runs: an ISIC run fixes the ISIC split; a HAM10000 run with `--leave-out` that ISIC run never sees its
validation or test lesions; an ISIC run with `--init-from` the HAM10000 run then keeps the very same split. Without
the `--leave-out` step, `--init-from` still keeps every lesion (or image) the source trained or validated on in
training, and draws validation and test from the rest, which can leave some classes with few test images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from skinedge.convert.rundir import FLOAT_WEIGHTS, RunDir, RunDirError, Sample
from skinedge.device.atomic import copy_file

from . import data as D
from .config import FLOAT_FROM_CHOICES, TrainConfig

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """A source run that cannot be started from; the message names it and why."""


def open_run(path: str, option: str, require: Sequence[str] = ()) -> RunDir:
    try:
        return RunDir.open(path, require=require)
    except RunDirError as exc:
        raise WarmStartError(f"{option}: {exc}") from None


def left_out(samples: Sequence[Sample], run: RunDir) -> list[Sample]:
    """`samples` without the lesions (and images) that `run` validates or tests on, for a run meant to pretrain a
    model for that run's data."""
    held = D.seen_groups(samples, run.splits["val"] + run.splits["test"])
    kept = [s for s in samples if s.group not in held]
    log.info("left out %d images of %d lesions/groups that %s validates or tests on", len(samples) - len(kept),
             len(held), run.path)
    return kept


def open_source(cfg: TrainConfig) -> RunDir:
    """The run `cfg.init_from` names, checked to hold float weights this run's model can take."""
    source = open_run(cfg.init_from, "--init-from", require=(FLOAT_WEIGHTS,))
    arch, alpha = source.config["arch"], float(source.config["alpha"])
    if (arch, alpha) != (cfg.arch, cfg.alpha):
        raise WarmStartError(f"--init-from {cfg.init_from}: a {arch} (alpha {alpha}) run; this run is {cfg.arch} "
                             f"(alpha {cfg.alpha}): pass the same --arch and --alpha")
    return source


def pinned_groups(samples: Sequence[Sample], source: RunDir) -> set[str]:
    """This run's groups that the source run trained or validated on (to be pinned to training)."""
    pinned = D.seen_groups(samples, D.training_samples(source.splits) + source.splits["val"])
    log.info("%s: %d of this run's %d lesions/groups were trained or validated on there; they stay in training",
             source.path, len(pinned), len({s.group for s in samples}))
    return pinned


def copy_backbone(model, source: RunDir) -> None:
    """Load the source run's float weights into every layer of `model` but the classification head.

    Layers are matched by name (the model is built by the same code, so MobileNetV2 names its layers alike); the
    head is left freshly initialised because the class lists differ. Convolution weights do not depend on the input
    size, so the source may have trained at another --img-size."""
    from skinedge.convert.model import backbone_layers, load_float_model

    cfg = source.config
    donor = load_float_model(cfg["arch"], len(source.classes), model.input_shape[1], float(cfg["alpha"]),
                             str(source.path / FLOAT_WEIGHTS))
    copied = 0
    for layer in backbone_layers(model):
        weights = donor.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
            copied += 1
    log.info("initialised %d backbone layers from %s", copied, source.path / FLOAT_WEIGHTS)


ADOPTED_FLOAT = "checkpoints/float_from.weights.h5"  # where a --float-from run keeps its copy of the float model


def float_run(cfg: TrainConfig) -> tuple[TrainConfig, RunDir]:
    """The config of a run that starts QAT from `cfg.float_from`: that run's settings (data, split, architecture,
    input size, seed, learning rate, ...) with this run's out dir and QAT options, and the source run itself."""
    source = open_run(cfg.float_from, "--float-from", require=(FLOAT_WEIGHTS, "state.json"))
    theirs = Path(source.config["data"])
    try:
        same = os.path.samefile(theirs, cfg.data)
    except OSError:
        same = False
    if not same:
        raise WarmStartError(f"--float-from {cfg.float_from}: it trained on {theirs}, not {cfg.data}; pass its data "
                             "folder")
    stored = TrainConfig.from_dict(source.config)
    ours = {k: getattr(cfg, k) for k in FLOAT_FROM_CHOICES}
    if ours["seed"] is None:  # no seed of its own for QAT: the float run's
        ours["seed"] = stored.seed
    merged = dataclasses.replace(
        stored, out=cfg.out, float_from=cfg.float_from, **ours,
        # the source's decoded images serve as they are: same files, same size
        cache_dir=stored.cache_dir or str(source.path / "cache"), extra={},
        # resolved as train stores it; runs made before --split-seed split with --seed
        split_seed=stored.resolved_split_seed(),
    )
    log.info("QAT from the float model of %s (its split and settings; the float phases are not run again)",
             source.path)
    return merged, source


def adopt_float(run: Path, source: Path, state: dict[str, Any]) -> None:
    """Record `source`'s float phases as done in this run's `state`: its best float weights copied into the run
    (ADOPTED_FLOAT), its float phases' histories too (the curves and the model card count their epochs)."""
    try:
        theirs = json.loads((source / "state.json").read_text(encoding="utf-8"))
        phases = {p: e for p, e in theirs["phases"].items() if p != "qat" and e.get("done")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WarmStartError(f"--float-from: {source / 'state.json'} is unreadable ({exc})") from None
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "history").mkdir(exist_ok=True)
    copy_file(source / FLOAT_WEIGHTS, run / ADOPTED_FLOAT)
    for phase, entry in phases.items():
        state["phases"][phase] = {"done": True, "best": entry.get("best", 0.0), "from": str(source)}
        history = source / "history" / f"{phase}.csv"
        if history.is_file():
            copy_file(history, run / "history" / f"{phase}.csv")
    state["float_best"] = ADOPTED_FLOAT
