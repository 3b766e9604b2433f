"""Model cards: a bundle's README.md, written from what the pipeline recorded (no figure is typed by hand).

    skinedge card models/ham10000 --report reports/ham10000 --run runs/ham10000
    write_card("models/ham10000", "reports/ham10000", "runs/ham10000")   # the same, from Python

The card gathers: model.json (classes, input, quantization, verification, flag rule, data and split, the training
config with the command as typed), the run's summary.json (training time, hardware) and the report's metrics.json
(`skinedge compare` on the run's held-out test split: every variant, per class, melanoma operating point). The
convert and compare commands are rebuilt from the options they recorded. The card is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from skinedge.convert.metrics import proportion_ci
from skinedge.convert.rundir import read_histories
from skinedge.device.atomic import replaced_file
from skinedge.device.bundle import META_FILE
from skinedge.device.constants import TTA_VIEWS

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
VARIANT_NAMES = {"float": "float Keras", "qat": "QAT Keras (fake-quant)", "int8": "int8 TFLite (shipped)",
                 "ptq_int8": "PTQ int8 baseline"}
LIMITATIONS = (
    "Trained and tested on dermoscopy images only (HAM10000: 200x150 downscaled copies from two sites in Austria "
    "and Australia; the ISIC 9-class set: 180x180 copies from the ISIC Archive). Phone or Pi-camera photographs "
    "without a dermatoscope are a different image source; expect lower accuracy on them.",
    "The training images come mostly from fair-skinned patients; performance on darker skin types is unknown.",
    "Class balance in the test split follows the data set (HAM10000 is two-thirds nevi); rare classes have few "
    "test images, so their per-class figures are uncertain by several points.",
    "Not a diagnosis and not a medical device: a research and triage aid. Any lesion of concern must be examined "
    "by a qualified clinician.",
)


class CardError(Exception):
    """A bundle, report or run that cannot make a card (one line naming the file)."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: not a JSON object")
    return data


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def prior_commands(cfg: dict[str, Any], depth: int = 0) -> list[str]:
    """The training commands of the runs this one builds on, in the order to run them: the run whose validation and
    test lesions it left out (--leave-out), the run it started from (--init-from) and the run whose float model its
    QAT started from (--float-from), each after its own. Read from their config.json files; one that cannot be read
    becomes a comment saying so rather than failing."""
    out: list[str] = []
    for key in ("leave_out", "init_from", "float_from"):
        src = cfg.get(key)
        if not src or depth > 3:  # a deeper chain is not a recipe anyone wrote
            continue
        try:
            prior = json.loads((Path(src) / "config.json").read_text(encoding="utf-8"))
            command = str(prior["extra"]["command"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: the command of the run this one builds on is unreadable (%s)", src, exc)
            out.append(f"# first: the run {src} (its config.json is unreadable here)")
            continue
        out += [c for c in prior_commands(prior, depth + 1) if c not in out] + [command]
    return out


def commands(meta: dict[str, Any], bundle: str, report: str, run: str, prior: Sequence[str] = ()) -> list[str]:
    """The commands that made the bundle: training as typed (after `prior`, the commands of the runs it builds on),
    the rest rebuilt from their recorded options."""
    cfg = meta.get("training", {}).get("config", {})
    train = cfg.get("extra", {}).get("command") or f"skinedge train {cfg.get('data')} --out {run}"
    head, _, rest = train.partition(" train ")
    if rest and head.endswith("/skinedge"):  # runs made before commands were recorded as `skinedge ...`
        train = f"skinedge train {rest}"
    ver, flag = meta.get("verification", {}), meta.get("flag") or {}
    convert = f"skinedge convert {run} --out {bundle}"
    if ver.get("min_agreement") not in (None, 0.98):
        convert += f" --min-agreement {ver['min_agreement']}"
    calib = meta.get("quantization", {}).get("calibration_images")
    if calib not in (None, 200):
        convert += f" --calibration-images {calib}"
    chosen = str(flag.get("chosen_for", ""))
    if chosen.startswith("sensitivity >= ") and not chosen.startswith("sensitivity >= 0.9 "):
        convert += f" --flag-sensitivity {chosen.split()[2]}"
    if flag and flag.get("prior", "none") == "none":  # bundles from before --flag-prior read the raw P as well
        convert += " --flag-prior none"
    tta = meta.get("input", {}).get("tta", "none")
    if tta != "none":
        convert += f" --tta {tta}"
    return [*prior, train, convert,
            f"skinedge compare --run {run} --bundle {bundle} --out {report}",
            f"skinedge card {bundle} --report {report} --run {run}"]


def epochs_run(run: Path) -> dict[str, int]:
    """Epochs each phase actually ran (rows of history/<phase>.csv): early stopping ends phases before their budget.
    A phase whose history cannot be read is left out, and the card gives its planned epochs."""
    return {phase: max(map(len, h.values()), default=0) for phase, h in read_histories(run).items()}


def _epochs(cfg: dict[str, Any], ran: dict[str, int], phase: str, key: str) -> str:
    planned = cfg.get(key)
    if phase in ran and isinstance(planned, int) and ran[phase] < planned:
        return f"{ran[phase]} of {planned} epochs, stopped early"
    return f"{planned} epochs"


def _weight_averaging(cfg: dict[str, Any], summary: Optional[dict[str, Any]]) -> str:
    """The schedule's note on weight averaging: how many epochs, and whether the average won on validation; or the
    moving average (--ema) that fine-tuning was scored and checkpointed on."""
    if cfg.get("ema"):
        return (f"; fine-tuning validated and checkpointed a moving average of its weights (EMA, decay {cfg['ema']:g} "
                "per step)")
    if not cfg.get("swa_epochs"):
        return ""
    done = ((summary or {}).get("phases", {}).get("finetune") or {}).get("swa")
    if not done:
        return f"; weights of the last {cfg['swa_epochs']} fine-tuning epochs averaged (SWA), none compared"
    return (f"; weights of the last {done['epochs']} fine-tuning epochs averaged (SWA): validation balanced accuracy "
            f"{done.get('val_balanced_accuracy', 0):.3f} against {done.get('best_single_epoch', 0):.3f} for the best "
            f"single epoch, so the {'average' if done.get('kept') else 'best single epoch'} was kept")


def render(meta: dict[str, Any], metrics: dict[str, Any], summary: Optional[dict[str, Any]],
           cmds: list[str], hardware: Optional[str] = None, train_time: Optional[str] = None,
           ran: Optional[dict[str, int]] = None) -> str:
    """The model card as Markdown. `ran`: epochs each phase ran (`epochs_run`), when the run dir is at hand."""
    name, classes = meta.get("name", "model"), meta.get("labels", [])
    inp, arch, q = meta.get("input", {}), meta.get("architecture", {}), meta.get("quantization", {})
    cfg = meta.get("training", {}).get("config", {})
    variants = metrics.get("variants", {})
    flag = meta.get("flag")
    seconds = (summary or {}).get("train_seconds")
    hw = hardware or (summary or {}).get("hardware") or "not recorded by this run"
    ran = ran or {}
    parts = [f"# {name}: {len(classes)}-class skin-lesion classifier (int8 TFLite)",
             f"> {meta.get('disclaimer', '')}",
             f"Intended use: {meta.get('intended_use', '')}",
             "```bash\nskinedge device classify " + f"models/{name} lesion.jpg --json" + "\n```",
             "## How it was made",
             "```bash\n" + "\n".join(cmds) + "\n```",
             "Paths are those of the machine that made the model (there `../shared` was the data folder).",
             _table(["", ""], [
                 ["architecture", f"{arch.get('arch')} (alpha {arch.get('alpha')}), "
                                  + (f"backbone from the run {cfg['init_from']}" if cfg.get("init_from")
                                     else f"ImageNet init: {cfg.get('weights')}")],
                 ["input", f"{inp.get('height')}x{inp.get('width')} RGB {inp.get('dtype')}, raw pixels 0-255, "
                           f"{inp.get('resize')} then {inp.get('interpolation')} resize (skinedge.device.preprocess)"
                           + (f"; test-time augmentation {inp['tta']}: probabilities averaged over "
                              f"{len(TTA_VIEWS.get(inp['tta'], ()))} views of each image, as many inferences"
                              if inp.get("tta", "none") != "none" else "")],
                 ["schedule", f"head {_epochs(cfg, ran, 'head', 'head_epochs')} (lr {cfg.get('lr')}), fine-tuning "
                              f"{_epochs(cfg, ran, 'finetune', 'epochs')} (lr/10"
                              + (f" after a {cfg['warmup_epochs']:g}-epoch warm-up" if cfg.get("warmup_epochs") else "")
                              + ", top "
                              f"{1 - cfg.get('finetune_from', 0.6):.0%} of the backbone), "
                              + (f"settling {_epochs(cfg, ran, 'settle', 'settle_epochs')} on unmixed images "
                                 "(lr/100), " if cfg.get("settle_epochs") else "")
                              + "QAT "
                              f"{_epochs(cfg, ran, 'qat', 'qat_epochs')} (lr/100"
                              + (f", targets {cfg['qat_distill']:g} float model + {1 - cfg['qat_distill']:g} labels"
                                 if cfg.get("qat_distill") else "")
                              + (f", from the float model of {cfg['float_from']}" if cfg.get("float_from") else "")
                              + f"); batch {cfg.get('batch_size')}, "
                              f"early stopping patience {cfg.get('patience')}, class imbalance: {cfg.get('balance')}, "
                              f"label smoothing {cfg.get('label_smoothing')}, "
                              + (f"mixup {cfg['mixup']} (float phases), " if cfg.get("mixup") else "")
                              + ("strong augmentation (any angle, deeper crops, hue shift), "
                                 if cfg.get("augment_level") == "strong" else "")
                              + f"seed {cfg.get('seed')}"
                              + (f" (split seed {cfg['split_seed']})"
                                 if cfg.get("split_seed") not in (None, cfg.get("seed")) else "")
                              + _weight_averaging(cfg, summary)],
                 ["quantization", f"{q.get('method')}; {q.get('calibration_images')} calibration images; tools "
                                  + ", ".join(f"{k} {v}" for k, v in q.get("tools", {}).items())],
                 ["training time", train_time or _train_time(seconds, (summary or {}).get("float_train_seconds"))],
                 ["hardware", hw],
                 ["model file", f"{meta.get('model', {}).get('bytes', 0) / 1e6:.2f} MB, sha256 "
                                f"{meta.get('model', {}).get('sha256', '')}"],
             ]),
             "## Data and split",
             f"Source: `{meta.get('data', {}).get('source')}` ({meta.get('data', {}).get('layout')} layout). "
             f"{meta.get('data', {}).get('split', '')}; the test split is never used for training, early stopping "
             f"or choosing the flag threshold.{_extra_train(meta.get('data', {}))}",
             _table(["split", *classes, "total"], [
                 [split, *(counts.get(c, 0) for c in classes), sum(counts.values())]
                 for split, counts in meta.get("data", {}).get("split_counts", {}).items()])]

    parts += ["## Test-split results", f"Evaluated on {metrics.get('images')}."]
    order = [v for v in ("float", "qat", "int8", "ptq_int8") if v in variants]
    parts.append(_table(["variant", "balanced accuracy", "accuracy", "macro F1", "ROC-AUC (macro)",
                         "melanoma flag sens.", "melanoma flag spec.", "top-1 agreement with float", "size"], [
        [VARIANT_NAMES.get(v, v), _pct(variants[v].get("balanced_accuracy")) + _range(
            variants[v].get("balanced_accuracy_ci")), _pct(variants[v].get("accuracy")),
         f"{variants[v].get('macro_f1', 0):.3f}", _fmt(variants[v].get("roc_auc_macro")),
         _pct(((variants[v].get("melanoma") or {}).get("flag") or {}).get("sensitivity")),
         _pct(((variants[v].get("melanoma") or {}).get("flag") or {}).get("specificity")),
         _pct(variants[v].get("agreement")), f"{variants[v].get('size_bytes', 0) / 1e6:.2f} MB"]
        for v in order]))
    if any(v.get("balanced_accuracy_ci") for v in variants.values()):
        boot = metrics.get("bootstrap", {})
        drawn = ("the test images (an image's byte-identical copies drawn together)" if boot.get("unit") == "image"
                 else "the test lesions (a lesion's images drawn together)")
        parts.append(f"Balanced accuracy in brackets: the {100 * boot.get('confidence', 0.95):.0f} % interval from "
                     f"{boot.get('resamples', 'bootstrap')} bootstrap draws of {drawn}.")
    differences = metrics.get("bootstrap", {}).get("differences", {})
    if "int8" in variants and "float" in variants:
        def gap(v: str, ref: str = "float", agreement: bool = True) -> str:
            drop = 100 * (variants[v]["balanced_accuracy"] - variants[ref]["balanced_accuracy"])
            ci = differences.get(f"{v} - {ref}")
            text = f"balanced accuracy {drop:+.1f} points" + (
                f" (95 % CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f})" if ci and None not in ci else "")
            return text + (f", top-1 agreement {_pct(variants[v].get('agreement'))}" if agreement else "")
        parts.append(f"int8 against float: {gap('int8')}."
                     + (f" PTQ baseline against float: {gap('ptq_int8')}. QAT's int8 model against the PTQ "
                        f"baseline: {gap('int8', 'ptq_int8', agreement=False)}." if "ptq_int8" in variants else ""))
    if "int8" in variants:
        rows = []
        for c in classes:
            row = [c]
            for v in ("float", "int8"):
                pc = variants.get(v, {}).get("per_class", {}).get(c, {})
                row += [_pct(pc.get("precision")), _pct(pc.get("recall"))]
            rows.append(row + [variants["int8"].get("per_class", {}).get(c, {}).get("support", "")])
        parts += ["Per class (precision / recall):",
                  _table(["class", "float precision", "float recall", "int8 precision", "int8 recall", "test images"],
                         rows)]
    if flag:
        int8 = variants.get("int8") or {}
        mel = int8.get("melanoma") or {}
        val = (meta.get("validation", {}).get("melanoma") or {}).get("flag") or {}
        val_counts = meta.get("data", {}).get("split_counts", {}).get("val", {})
        val_pos, val_n = val_counts.get(flag["label"]), sum(val_counts.values())
        val_neg = val_n - val_pos if val_pos is not None else None
        test_pos, test_n = int8.get("per_class", {}).get(flag["label"], {}).get("support"), int8.get("n")
        test_neg = test_n - test_pos if test_pos is not None and test_n else None
        test_flag = mel.get("flag") or {}
        parts += ["## Melanoma flag (operating point)",
                  f"`flag` is true when P({flag['label']}){_at_frequencies(flag, cfg.get('balance'))} >= "
                  f"{flag['threshold']} (chosen "
                  f"for {flag.get('chosen_for')}). On validation: sensitivity "
                  f"{_rate(val.get('sensitivity'), val_pos)}, specificity "
                  f"{_rate(val.get('specificity'), val_neg)}. "
                  f"On the test split (int8): sensitivity {_rate(test_flag.get('sensitivity'), test_pos)}, "
                  f"specificity {_rate(test_flag.get('specificity'), test_neg)}"
                  + (f"; ROC-AUC of the flag's score {_fmt(mel['flag']['roc_auc'])}, of the raw P({flag['label']}) "
                     f"{_fmt(mel.get('roc_auc'))}" if (mel.get("flag") or {}).get("roc_auc") else "") + "."]
    ver = meta.get("verification", {})
    parts += ["## Conversion check",
              f"int8 TFLite against the QAT Keras model on {ver.get('images')} validation images: top-1 agreement "
              f"{_pct(ver.get('top1_agreement_vs_qat_keras'))} (gate {ver.get('min_agreement')}), XNNPACK against "
              f"the reference kernels {_pct(ver.get('top1_agreement_xnnpack_vs_reference_kernels'))}."]
    parts += ["## Limitations", "\n".join(f"- {text}" for text in LIMITATIONS)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _range(ci: Optional[Sequence[Optional[float]]]) -> str:
    """ " (67.9–73.4)": an interval of rates in points, or "" when there is none."""
    if not ci or None in ci:
        return ""
    return f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _rate(rate: Optional[float], images: Optional[int]) -> str:
    """A sensitivity or specificity with its 95 % Wilson interval when the number of images behind it is known."""
    if rate is None or not images:
        return _pct(rate)
    lo, hi = proportion_ci(round(rate * images), images)
    return f"{_pct(rate)} (95 % CI {100 * lo:.1f}–{100 * hi:.1f} %, {images} images)"


def _at_frequencies(flag: dict[str, Any], balance: Optional[str]) -> str:
    """How the card words a flag read at class frequencies (FlagRule.class_frequencies), or "" for the raw P."""
    shares = flag.get("class_frequencies")
    if not shares:
        return ""
    given = ", ".join(f"{c} {_pct(v)}" for c, v in shares.items())
    if balance == "sqrt":
        return (f" weighted by the square roots of the training split's class counts ({given}; the model was "
                "trained with square-root class sampling, so its raw outputs answer as if each class were as common "
                "as the square root of its count, and the weights move them to the classes' frequencies: the flag "
                "asks how likely melanoma is among lesions as they occur)")
    return (f" at the training split's class frequencies ({given}; the model was trained class-balanced, so its "
            "raw outputs answer as if every class were equally common, and the flag asks how likely melanoma is "
            "among lesions as they occur)")


def _extra_train(data: dict[str, Any]) -> str:
    """The sentence on training-only images from another data set (`train --extra-train`), or nothing."""
    extra = data.get("extra_train")
    if not extra:
        return ""
    mapped = ", ".join(f"{theirs} as {ours}" for theirs, ours in extra.get("labels", {}).items())
    n = sum(data.get("split_counts", {}).get("extra", {}).values())
    return (f" The `extra` row: {n} images of `{extra.get('source')}` ({mapped or 'classes named like ours'}), "
            "in training only.")


def _train_time(seconds: Optional[float], float_seconds: Optional[float]) -> str:
    """This run's training time; for a --float-from run, with the float run's, which it builds on."""
    if not seconds:
        return "not recorded"
    if not float_seconds:
        return f"{seconds / 60:.0f} min"
    return (f"{(seconds + float_seconds) / 60:.0f} min: {float_seconds / 60:.0f} min for the float model, "
            f"{seconds / 60:.0f} min for QAT on it")


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def write_card(bundle: os.PathLike | str, report: os.PathLike | str, run: Optional[os.PathLike | str] = None,
               hardware: Optional[str] = None, train_time: Optional[str] = None) -> Path:
    """Write BUNDLE/README.md from the bundle, the compare report and (optionally) the run; returns its path."""
    bundle, report = Path(bundle), Path(report)
    meta = _read_json(bundle / META_FILE)
    metrics = _read_json(report / "metrics.json")
    if metrics.get("classes") != meta.get("labels"):
        raise CardError(f"{report / 'metrics.json'}: its classes are not the bundle's labels ({bundle / META_FILE})")
    run_path = Path(run) if run else Path(meta.get("training", {}).get("run_dir", ""))
    summary = _read_json(run_path / "summary.json") if run and (run_path / "summary.json").exists() else None
    if run and summary is None:
        raise CardError(f"{run_path / 'summary.json'}: not found (is the run finished?)")
    source = meta.get("training", {}).get("config", {}).get("float_from")
    if summary and source and (Path(source) / "summary.json").is_file():
        try:  # the float run's time belongs to this model's too
            summary["float_train_seconds"] = _read_json(Path(source) / "summary.json").get("train_seconds")
        except CardError as exc:
            log.warning("%s; the training time counts QAT only", exc)
    prior = prior_commands(meta.get("training", {}).get("config", {}))
    text = render(meta, metrics, summary, commands(meta, str(bundle), str(report), str(run_path), prior), hardware,
                  train_time, epochs_run(run_path) if run else None)
    out = bundle / CARD_FILE
    with replaced_file(out) as tmp:  # a reader never sees half a card
        tmp.write_text(text, encoding="utf-8")
    log.debug("model card written to %s", out)  # the command says so to the user
    return out
