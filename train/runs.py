"""Training runs side by side: what each was trained with, how far it got, and what it scored on validation.

    skinedge runs runs/                          # every run dir in runs/, as a Markdown table
    skinedge runs runs/ham runs/ham_seed7 --sort qat --json

    rows = [summarize(p) for p in expand(["runs/"])]
    print(markdown(rows))

Made for comparing seeds and recipes before choosing what to convert: a row needs only the run dir's JSON and CSV
files (config.json, state.json, summary.json, history/*.csv, written by skinedge.train.fit), so it is instant, needs
no TensorFlow, and shows a run that is still training (or was stopped) at the epoch it reached.

Two runs compare image for image only on one split, so runs whose split.csv files are byte-identical share a split
letter (A, B, ...). Of the settings, the table shows those in which the listed runs differ, so a seed sweep shows
its seeds and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from skinedge.convert.rundir import CONFIG_FILE, SPLIT_FILE, read_history

from .config import MONITOR, TrainConfig, phase_plan, resolve_split_seed

FLOAT_PHASES = ("head", "finetune", "settle")  # phases that train the float model, in order
# config keys that never tell runs apart: where they were written, caches, and the command line itself
IGNORED_KEYS = ("out", "extra", "cache_dir", "workers")


class RunsError(ValueError):
    """A path that is not a run dir, or a run dir whose files cannot be read; the message names it."""


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def expand(paths: Sequence[os.PathLike | str]) -> list[Path]:
    """The run dirs to list: each path that is a run dir, and the run dirs directly inside each one that is not
    (sorted by name). A path that is neither is kept, for summarize() to report."""
    out: list[Path] = []
    for given in map(Path, paths):
        inside: list[Path] = []
        if given.is_dir() and not is_run_dir(given):
            try:
                inside = sorted(p for p in given.iterdir() if is_run_dir(p))
            except OSError:  # an unreadable folder: summarize() names it and why
                pass
        out.extend(inside or [given])
    return out


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunsError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise RunsError(f"{path}: not a JSON object")
    return data


def resolved_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the settings it predates filled in with their defaults (each new option's default keeps
    the old behaviour) and the split seed resolved, so an old run and a new one differ only where they trained
    differently."""
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else
                None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(TrainConfig)}
    config = {**defaults, **raw}
    config["split_seed"] = resolve_split_seed(config["seed"], config["split_seed"])
    return config


def _histories(run: Path) -> dict[str, list[float]]:
    """Each phase's validation balanced accuracy per epoch (an empty list for a phase that logged none)."""
    out = {}
    for phase in (*FLOAT_PHASES, "qat"):
        try:
            out[phase] = read_history(run / "history" / f"{phase}.csv").get(MONITOR, [])
        except (OSError, ValueError) as exc:  # ValueError covers a non-number cell and UnicodeDecodeError
            raise RunsError(f"{run / 'history' / f'{phase}.csv'}: unreadable ({exc})") from None
    return out


def _best(scores: Sequence[float]) -> tuple[Optional[float], Optional[int]]:
    """The best score and its epoch (1-based), as training's checkpoint keeps it (the first of equal scores)."""
    if not scores:
        return None, None
    epoch = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return scores[epoch], epoch + 1


def _kept(summary: Optional[dict[str, Any]], model: str, otherwise: Optional[float]) -> Optional[float]:
    """summary.json's validation balanced accuracy of a model ('float' or 'qat'), or `otherwise`."""
    scores = (summary or {}).get("validation")
    score = scores.get(model) if isinstance(scores, dict) else None
    value = score.get("balanced_accuracy") if isinstance(score, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else otherwise


def _status(config: dict[str, Any], state: dict[str, Any], histories: dict[str, list[float]]) -> str:
    """The phase a run without a summary is in (or was stopped in) and the epochs it has logged there."""
    phases = state.get("phases")
    done = {name for name, phase in (phases.items() if isinstance(phases, dict) else ()) if isinstance(phase, dict)
            and phase.get("done")}
    for phase, epochs, _ in phase_plan(TrainConfig.from_dict(config)):
        if phase not in done:
            return f"{phase} {len(histories[phase])}/{epochs}"
    return "writing outputs"  # every phase done, summary.json not yet written


def summarize(path: os.PathLike | str) -> dict[str, Any]:
    """One run's row: name, status, split digest, float and QAT validation balanced accuracy (with the float
    model's best epoch), training minutes and the resolved config."""
    run = Path(path)
    if not run.is_dir():
        raise RunsError(f"{run}: {'not a folder' if run.exists() else 'no such folder'}")
    raw = _read_json(run / CONFIG_FILE)
    if raw is None:
        raise RunsError(f"{run}: not a run dir ({CONFIG_FILE} is missing)")
    config = resolved_config(raw)
    state = _read_json(run / "state.json") or {}
    summary = _read_json(run / "summary.json")
    histories = _histories(run)
    # the float model's best epoch over its phases (the head's, while fine-tuning has not yet beaten it)
    bests = [(*_best(histories[phase]), phase) for phase in FLOAT_PHASES if histories[phase]]
    float_best, float_epoch, float_phase = max(bests, key=lambda b: b[0], default=(None, None, None))
    qat_best, qat_epoch = _best(histories["qat"])
    # a finished run's summary scores the models it kept (an averaged model, say); the histories score epochs
    float_val = _kept(summary, "float", float_best)
    qat_val = _kept(summary, "qat", qat_best)
    try:
        status = "done" if summary else _status(config, state, histories)
    except (TypeError, ValueError):  # phase_plan compares epochs with 0 and divides the learning rate
        raise RunsError(f"{run / CONFIG_FILE}: epochs and learning rate must be numbers") from None
    split = run / SPLIT_FILE
    seconds = (summary or {}).get("train_seconds")
    return {
        "run": str(run),
        "status": status,
        "split_sha256": hashlib.sha256(split.read_bytes()).hexdigest() if split.is_file() else None,
        "float_val": float_val,
        "float_best_epoch": float_epoch,  # with --float-from, the source run's (its history comes along)
        "float_best_phase": float_phase,  # head, finetune or settle
        "qat_val": qat_val,
        "qat_best_epoch": qat_epoch,
        "train_minutes": round(seconds / 60, 1) if isinstance(seconds, (int, float)) else None,
        "config": config,
    }


def differing_settings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every row (in config order), IGNORED_KEYS aside."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row["config"] if k not in keys and k not in IGNORED_KEYS)
    return [k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True) for r in rows}) > 1]


def split_letters(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A letter per row, shared by rows whose split.csv files are byte-identical ('-' where there is none)."""
    letters: dict[str, str] = {}
    out = []
    for row in rows:
        digest = row["split_sha256"]
        if digest is None:
            out.append("-")
            continue
        letters.setdefault(digest, chr(ord("A") + len(letters)) if len(letters) < 26 else f"S{len(letters) + 1}")
        out.append(letters[digest])
    return out


def sort_rows(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Best first by 'float' or 'qat' validation balanced accuracy; runs without that figure last."""
    field = f"{key}_val"
    return sorted(rows, key=lambda r: (r[field] is None, -(r[field] or 0.0)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _score(value: Optional[float], epoch: Optional[int], phase: Optional[str] = None) -> str:
    """0.704 (ep 21): a score and the epoch it came from; a float phase other than fine-tuning (head, settle) is
    named. QAT scores have no phase."""
    if value is None:
        return ""
    named = f"{phase} " if phase not in (None, "finetune") else ""
    return f"{value:.3f}" + (f" ({named}ep {epoch})" if epoch else "")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table: run, status, split, the settings that differ, validation balanced accuracy of
    float and QAT, training minutes."""
    settings = differing_settings(rows)
    header = ["run", "status", "split", *(k.replace("_", "-") for k in settings), "float val", "QAT val", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, letter in zip(rows, split_letters(rows)):
        cells = [row["run"], row["status"], letter, *(_cell(row["config"].get(k)) for k in settings),
                 _score(row["float_val"], row["float_best_epoch"], row["float_best_phase"]),
                 _score(row["qat_val"], row["qat_best_epoch"]),
                 _cell(row["train_minutes"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
