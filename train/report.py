"""The comparison report people read: report.html (one self-contained file), report.md and the PNGs behind both.

    inputs = ReportInputs(where="…test split (43 images)", classes=classes, y=y, metrics=metrics,
                          probs={"float": p_float, "int8": p_int8}, images=x_uint8, paths=paths,
                          flag=FlagRule("mel", 0.2))
    write_report(Path("reports/ham"), inputs)     # PNGs, report.html, report.md

Pure over already computed results (labels, probabilities per variant, metrics as in metrics.json, preprocessed
uint8 images): nothing here runs a model. report.html embeds every picture as a base64 data URI and references
nothing outside itself (no script, no CDN, no font), so it opens offline from a USB stick. Every text that can come
from the data (class names from folder names, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from skinedge.convert.metrics import melanoma_index
from skinedge.device.bundle import FlagRule
from skinedge.device.constants import NOT_A_DIAGNOSIS

from . import plots

BINS = 10  # equal-width confidence bins of the reliability diagram and the ECE
GALLERY_SIZE = 12  # thumbnails per gallery
THUMB_MAX = 128  # thumbnail side in pixels (JPEG, embedded)
PHASE_ORDER = ("head", "finetune", "settle", "qat")


@dataclass
class ReportInputs:
    where: str  # the images evaluated, in words
    classes: Sequence[str]
    y: np.ndarray  # N true class indices
    probs: Mapping[str, np.ndarray]  # variant -> N x classes, in report order (float first)
    metrics: Mapping[str, Mapping[str, Any]]  # variant -> metrics as written to metrics.json
    dataset: str = ""  # data folder
    images: Optional[np.ndarray] = None  # N x H x W x 3 uint8, the preprocessed model inputs (thumbnails)
    paths: Sequence[str] = ()  # N image files
    flag: Optional[FlagRule] = None  # the bundle's melanoma flag rule
    histories: Mapping[str, Mapping[str, Sequence[float]]] = field(default_factory=dict)  # phase -> column -> values
    class_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # split -> class -> images


def reliability(y: np.ndarray, probs: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per equal-width bin of top-1 confidence: (mean confidence, accuracy, count), and the expected calibration
    error (the count-weighted mean |accuracy - confidence|)."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y))
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    safe = np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=bins) / safe
    acc = np.bincount(idx, weights=correct, minlength=bins) / safe
    ece = float(np.sum(count * np.abs(acc - mean_conf)) / max(len(conf), 1))
    return mean_conf, acc, count, ece


def main_pair(names: Sequence[str]) -> tuple[Optional[str], Optional[str]]:
    """(reference, quantized): float against the bundle's int8 (else the PTQ baseline, else QAT)."""
    ref = "float" if "float" in names else None
    quant = next((n for n in ("int8", "ptq_int8", "qat") if n in names), None)
    return ref, quant or (names[0] if names and names[0] != ref else None)


def _pct(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def summary(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The verdict: what quantization costs against the float model, as numbers and as one sentence."""
    ref, quant = main_pair(list(metrics))
    out: dict[str, Any] = {"reference": ref, "quantized": quant}
    if ref and quant:
        a, b = metrics[ref]["balanced_accuracy"], metrics[quant]["balanced_accuracy"]
        drop = 100 * (a - b)
        agree = metrics[quant].get("agreement")
        how = (f"costs {drop:.1f} balanced-accuracy points" if drop >= 0.05 else
               f"gains {-drop:.1f} balanced-accuracy points" if drop <= -0.05 else "matches the balanced accuracy")
        text = (f"{quant} {how} vs {ref} ({_pct(a)} → {_pct(b)}); top-1 agreement with {ref} {_pct(agree)}.")
        others = [f"{n} {100 * (metrics[n]['balanced_accuracy'] - a):+.1f}" for n in metrics if n not in (ref, quant)]
        if others:
            text += " Other variants vs float, balanced-accuracy points: " + ", ".join(others) + "."
        out.update(balanced_accuracy_drop_points=round(drop, 2), top1_agreement=agree)
    else:
        name = quant or next(iter(metrics), None)
        m = metrics[name] if name else {}
        text = (f"{name}: balanced accuracy {_pct(m.get('balanced_accuracy'))}, accuracy {_pct(m.get('accuracy'))}; "
                "no float model to compare with (give --run).")
    out["verdict"] = text
    return out


_COLUMNS = (("accuracy %", lambda m: m["accuracy"], True), ("balanced acc %", lambda m: m["balanced_accuracy"], True),
            ("95 % interval", lambda m: m.get("balanced_accuracy_ci"), "interval"),
            ("macro F1", lambda m: m["macro_f1"], False), ("ROC-AUC", lambda m: m.get("roc_auc_macro"), False),
            ("mel sens %", lambda m: (m.get("melanoma") or {}).get("sensitivity"), True),
            ("mel spec %", lambda m: (m.get("melanoma") or {}).get("specificity"), True),
            ("agreement w/ float %", lambda m: m.get("agreement"), True), ("ECE", lambda m: m.get("ece"), False),
            ("size MB", lambda m: m["size_bytes"] / 1e6, None), ("latency ms", lambda m: m["latency_ms"], None))


def _cells(m: Mapping[str, Any]) -> list[str]:
    out = []
    for _, get, pct in _COLUMNS:
        v = get(m)
        if pct == "interval":  # [low, high] of a rate, from compare's lesion bootstrap
            out.append("–" if not v or None in v else f"{100 * v[0]:.1f}–{100 * v[1]:.1f}")
            continue
        out.append("–" if v is None else f"{100 * v:.1f}" if pct else f"{v:.3f}" if pct is False else f"{v:.2f}")
    return out


def markdown_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    rows = ["| variant | " + " | ".join(c[0] for c in _COLUMNS) + " |", "|" + "---|" * (len(_COLUMNS) + 1)]
    rows += [f"| {name} | " + " | ".join(_cells(m)) + " |" for name, m in metrics.items()]
    return "\n".join(rows)


def _flag_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, m in metrics.items():
        f = (m.get("melanoma") or {}).get("flag")
        if f:
            rows.append((name, f"{f['threshold']:.4f}", _pct(f["sensitivity"]), _pct(f["specificity"])))
    return rows


def _flag_words(flag: Optional[FlagRule]) -> str:
    return flag.describe().removeprefix("flag when ") if flag else "P(melanoma) >= the bundle's threshold"


def _write_figures(out: Path, inp: ReportInputs) -> dict[str, list[tuple[str, str]]]:
    """Section -> [(PNG file name, alt text)], written to `out`."""
    names = list(inp.probs)
    ref, quant = main_pair(names)
    pair = [n for n in (ref, quant) if n]
    figs: dict[str, list[tuple[str, str]]] = {}
    for n in names:
        plots.plot_confusion(inp.metrics[n]["confusion_matrix"], inp.classes, f"{n} (n={len(inp.y)})",
                             out / f"confusion_{n}.png")
    figs["confusion"] = [(f"confusion_{n}.png", f"normalised confusion matrix, {n}") for n in pair + [
        n for n in names if n not in pair]]
    mel = melanoma_index(inp.classes)
    plots.plot_roc(inp.y, {n: inp.probs[n] for n in pair}, inp.classes, out / "roc.png", mel, inp.flag)
    figs["roc"] = [("roc.png", "one-vs-rest ROC curves")]
    support = [int(np.sum(inp.y == i)) for i in range(len(inp.classes))]
    recalls = {n: [inp.metrics[n]["per_class"][c]["recall"] if support[i] else None for i, c in enumerate(inp.classes)]
               for n in pair}
    plots.plot_recall_bars(recalls, inp.classes, out / "recall.png", support)
    figs["recall"] = [("recall.png", "per-class recall")]
    plots.plot_reliability({n: reliability(inp.y, inp.probs[n]) for n in names}, out / "reliability.png")
    figs["calibration"] = [("reliability.png", "reliability diagram")]
    if inp.histories:
        order = sorted(inp.histories, key=lambda p: (PHASE_ORDER.index(p) if p in PHASE_ORDER else 99, p))
        plots.plot_history({p: inp.histories[p] for p in order}, out / "history.png")
        figs["training"] = [("history.png", "training curves")]
    if inp.class_counts:
        plots.plot_class_distribution(inp.class_counts, inp.classes, out / "class_distribution.png")
        figs["data"] = [("class_distribution.png", "class distribution")]
    return figs


def _thumb(img: np.ndarray) -> str:
    pic = Image.fromarray(np.asarray(img, np.uint8))
    pic.thumbnail((THUMB_MAX, THUMB_MAX))
    buf = io.BytesIO()
    pic.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(inp: ReportInputs, i: int, shown: Sequence[str]) -> str:
    e, truth = html.escape, int(inp.y[i])
    lines = [f"<b>true</b> {e(inp.classes[truth])}"]
    for n in shown:
        p = inp.probs[n][i]
        k = int(p.argmax())
        ok = "right" if k == truth else "wrong"
        lines.append(f'<span class="{ok}">{e(n)}: {e(inp.classes[k])} {p[k]:.2f}</span>'
                     + ("" if k == truth else f" <small>(true {p[truth]:.2f})</small>"))
    path = str(inp.paths[i]) if i < len(inp.paths) else f"image {i}"
    img = (f'<img src="{_thumb(inp.images[i])}" alt="{e(inp.classes[truth])}" width="120" height="120">'
           if inp.images is not None else "")
    return (f'<figure class="card">{img}<figcaption>{"<br>".join(lines)}<br>'
            f'<span class="path" title="{e(path)}">{e(Path(path).name)}</span></figcaption></figure>')


def _gallery(inp: ReportInputs) -> str:
    ref, quant = main_pair(list(inp.probs))
    parts = []
    if ref and quant:
        p, q = inp.probs[ref], inp.probs[quant]
        pr = p.argmax(1)
        idx = np.flatnonzero(pr != q.argmax(1))
        idx = idx[np.argsort(-np.abs(p[idx, pr[idx]] - q[idx, pr[idx]]), kind="stable")][:GALLERY_SIZE]
        n = int(np.sum(pr != q.argmax(1)))
        parts.append(f"<h3>Where {html.escape(ref)} and {html.escape(quant)} disagree</h3><p>{n} of {len(inp.y)} "
                     f"images (showing {len(idx)}, largest change in the {html.escape(ref)} model's top class "
                     "first).</p>")
        parts.append('<div class="cards">' + "".join(_card(inp, int(i), (ref, quant)) for i in idx) + "</div>")
    name = quant or ref
    if name:
        q = inp.probs[name]
        wrong = np.flatnonzero(q.argmax(1) != inp.y)
        wrong = wrong[np.argsort(-q[wrong].max(1), kind="stable")][:GALLERY_SIZE]
        parts.append(f"<h3>Most confident mistakes ({html.escape(name)})</h3><p>{len(wrong)} shown, highest "
                     "top-1 probability first.</p>")
        shown = [n for n in (ref, quant) if n]
        parts.append('<div class="cards">' + "".join(_card(inp, int(i), shown) for i in wrong) + "</div>")
    return "\n".join(parts)


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fff;margin:0}
main{max-width:1180px;margin:0 auto;padding:16px 24px}h1{margin:.2em 0}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.notice{background:#fff4e5;border-left:5px solid #f0a020;padding:8px 12px}
.verdict{font-size:1.35em;font-weight:600;padding:12px 16px;border-radius:6px;background:#eef5ff;
 border-left:6px solid #1f77b4}
.verdict.good{background:#eaf7ea;border-color:#2e8b57}.verdict.warn{background:#fff8e1;border-color:#f0a020}
.verdict.bad{background:#fdecea;border-color:#d62728}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{background:#f3f3f3}tr.main td{font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs img{max-width:100%;height:auto;border:1px solid #eee}.figs.two img{max-width:calc(50% - 8px)}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{margin:0;width:150px;font-size:12px;border:1px solid #ddd;border-radius:4px;padding:6px}
.card img{display:block;margin:0 auto 4px}.right{color:#2e7d32}.wrong{color:#c62828}
.path{color:#666;word-break:break-all}nav a{margin-right:12px}small{color:#555}
"""


def _tone(s: Mapping[str, Any]) -> str:
    """Colour of the verdict: green when int8 loses at most a point and agrees with float on 95 % of images, red
    when it loses more than 3 points or agrees on fewer than 90 % (a big gain with low agreement is no good sign)."""
    drop, agree = s.get("balanced_accuracy_drop_points"), s.get("top1_agreement")
    if drop is None:
        return ""
    if drop > 3 or (agree is not None and agree < 0.9):
        return "bad"
    return "good" if drop <= 1 and (agree is None or agree >= 0.95) else "warn"


def _img(out: Path, name: str, alt: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_html(inp: ReportInputs, out: Path, figs: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    """report.html as a string; the PNGs named in `figs` are read from `out` and embedded."""
    e, names = html.escape, list(inp.probs)
    ref, quant = main_pair(names)
    s = summary(inp.metrics)
    tone = _tone(s)
    head = "".join(f"<th>{e(c[0])}</th>" for c in _COLUMNS)
    rows = "".join(f'<tr class="{"main" if n in (ref, quant) else ""}"><td>{e(n)}</td>'
                   + "".join(f"<td>{c}</td>" for c in _cells(m)) + "</tr>" for n, m in inp.metrics.items())
    desc = "".join(f"<li><b>{e(n)}</b>: {e(str(m.get('description', '')))}</li>" for n, m in inp.metrics.items())
    flags = _flag_rows(inp.metrics)
    flag_html = (f"<p>Melanoma flag ({e(_flag_words(inp.flag))}, the threshold chosen on validation images):</p><table>"
                 "<thead><tr><th>variant</th><th>threshold</th><th>sensitivity</th><th>specificity</th></tr></thead>"
                 + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in flags) + "</table>"
                 ) if flags else ""

    def section(key: str, title: str, intro: str, body: str = "", two: bool = False, only=None) -> str:
        imgs = "".join(_img(out, f, alt) for f, alt in (figs.get(key, ()) if only is None else only))
        if not imgs and not body:
            return ""
        fig_div = f'<div class="figs{" two" if two else ""}">{imgs}</div>' if imgs else ""
        return f'<section id="{key}"><h2>{title}</h2><p>{intro}</p>{fig_div}{body}</section>'

    conf = list(figs.get("confusion", []))
    more = "".join(_img(out, f, alt) for f, alt in conf[2:])
    sections = [
        f'<section id="metrics"><h2>Metrics</h2><table><thead><tr><th>variant</th>{head}</tr></thead><tbody>{rows}'
        f"</tbody></table><ul>{desc}</ul><p><small>Latency: median single-image inference on the machine that made "
        "this report (preprocessing excluded). Size: float32 parameters for Keras models, file size for .tflite. "
        "ECE: expected calibration error over 10 confidence bins.</small></p></section>",
        section("confusion", "Confusion matrices", "Rows: true class, normalised to 1 (counts in brackets).",
                f'<details><summary>other variants</summary><div class="figs two">{more}</div></details>' if more
                else "", two=True, only=conf[:2]) if conf else "",
        section("roc", "ROC curves", "One-vs-rest, per class; melanoma drawn thick, the bundle's flag threshold "
                "marked as its operating point.", flag_html),
        section("recall", "Per-class recall", "Sensitivity of each class, float against int8 when both were "
                "evaluated (n: images of the class)."),
        section("calibration", "Calibration", "Accuracy against top-1 confidence; on the diagonal the model's "
                "probabilities mean what they say."),
        f'<section id="gallery"><h2>Gallery</h2><p>Preprocessed model inputs; green: right, red: wrong.</p>'
        f"{_gallery(inp)}</section>",
        section("training", "Training curves", "Loss and balanced accuracy per epoch; phases laid end to end "
                "(dashed: training, solid: validation)."),
        section("data", "Class distribution", "Images per class in each split of the run (or of the images "
                "evaluated)."),
    ]
    facts = (f"Dataset <b>{e(inp.dataset or '–')}</b> · <b>{len(inp.y)}</b> images · {len(inp.classes)} classes · "
             f"variants compared: <b>{e(', '.join(names))}</b><br><small>Images: {e(inp.where)}</small>")
    nav = "".join(f'<a href="#{k}">{t}</a>' for k, t in (("metrics", "Metrics"), ("confusion", "Confusion"),
                  ("roc", "ROC"), ("recall", "Recall"), ("calibration", "Calibration"), ("gallery", "Gallery"),
                  ("training", "Training"), ("data", "Data")) if k in ("metrics", "gallery") or figs.get(k))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>skinedge comparison: {e(inp.dataset or inp.where)}</title><style>{_CSS}</style></head>\n"
            f'<body><main><p class="notice">{e(NOT_A_DIAGNOSIS)}</p><header><h1>skinedge comparison</h1>'
            f'<p>{facts}</p><p class="verdict {tone}">{e(s["verdict"])}</p></header><nav>{nav}</nav>\n'
            + "\n".join(x for x in sections if x)
            + f'\n<footer><p class="notice">{e(NOT_A_DIAGNOSIS)}</p></footer></main></body></html>\n')


def render_markdown(inp: ReportInputs, figs: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    """report.md: the same table and verdict, the per-class recall table, the PNGs linked (for a code host)."""
    names = list(inp.probs)
    lines = ["# skinedge comparison", "", f"Images: {inp.where}.", "", f"**{summary(inp.metrics)['verdict']}**", "",
             "Variants: " + "; ".join(f"**{n}**: {m.get('description', '')}" for n, m in inp.metrics.items()) + ".",
             "", markdown_table(inp.metrics), "",
             "Latency: median single-image inference on this machine (Keras eager call / TFLite invoke, "
             "preprocessing excluded). Sizes: float32 parameters for Keras models, file size for .tflite. "
             "ECE: expected calibration error (10 bins). The full report with thumbnails: [report.html](report.html).",
             "", "## Per-class recall", "", "| class | support | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for c in inp.classes:
        pc = {n: inp.metrics[n]["per_class"][c] for n in names}
        recalls = " | ".join(f"{pc[n]['recall']:.3f}" for n in names)
        lines.append(f"| {c.replace('|', '&#124;')} | {pc[names[0]]['support']} | {recalls} |")
    flags = _flag_rows(inp.metrics)
    if flags:
        lines += ["", "## Melanoma flag", "", f"Rule: {_flag_words(inp.flag)}, the threshold chosen on validation "
                  "images.", "", "| variant | threshold | sensitivity | specificity |",
                  "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in flags]
    titles = {"confusion": "Confusion matrices", "roc": "ROC curves", "recall": "Per-class recall (chart)",
              "calibration": "Calibration", "training": "Training curves", "data": "Class distribution"}
    for key, title in titles.items():
        if figs.get(key):
            lines += ["", f"## {title}", ""] + [f"![{alt}]({f})" for f, alt in figs[key]]
    lines += ["", f"_{NOT_A_DIAGNOSIS}_", ""]
    return "\n".join(lines)


def write_report(out: Path, inp: ReportInputs) -> dict[str, Path]:
    """Write the PNGs, report.html and report.md into the folder `out` (which must exist); returns the paths."""
    figs = _write_figures(out, inp)
    (out / "report.html").write_text(render_html(inp, out, figs), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(inp, figs), encoding="utf-8")
    return {"html": out / "report.html", "md": out / "report.md",
            **{f: out / f for items in figs.values() for f, _ in items}}
