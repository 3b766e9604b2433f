"""report.html from skinedge.train.report: built from synthetic but realistic results (no TensorFlow, seconds), read
as text and opened in a real headless browser (Debian's `chromium`; CI installs it, its absence is an error).

Named test_compare_* so it runs in the workstation environment (matplotlib, scikit-learn).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from skinedge.convert.metrics import bootstrap_balanced_accuracy, classification_metrics
from skinedge.device.bundle import FlagRule
from skinedge.device.constants import NOT_A_DIAGNOSIS
from skinedge.train import report as R

# Folder names become class names: markup, an ampersand and a matplotlib mathtext pair must all come out as text.
CLASSES = ["akiec", "bcc", "mel", "nv <b>&amp; co</b>", "vasc $x$"]
SECTIONS = ["Metrics", "Confusion matrices", "ROC curves", "Per-class recall", "Calibration", "Gallery",
            "Training curves", "Class distribution"]
THRESHOLD = 0.3


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _inputs(variants=("float", "qat", "ptq_int8", "int8"), n: int = 120, extras: bool = True) -> R.ReportInputs:
    rng = np.random.default_rng(0)
    k = len(CLASSES)
    y = rng.choice(k, size=n, p=[0.1, 0.15, 0.2, 0.45, 0.1])
    logits = 2.2 * np.eye(k)[y] + rng.normal(0, 1.0, (n, k))
    probs, metrics = {}, {}
    noise = {"float": 0.0, "qat": 0.2, "int8": 0.3, "ptq_int8": 0.6}
    for name in variants:
        p = _softmax(logits + rng.normal(0, noise[name], (n, k)))
        if "int8" in name:  # dequantized int8 softmax: 1/256 steps, rows sum to 1 only roughly
            p = np.round(p * 256) / 256
        probs[name] = p
    reference = probs["float"].argmax(1) if "float" in probs else None
    for name, p in probs.items():
        m = classification_metrics(y, p, CLASSES, flag=FlagRule("mel", THRESHOLD), reference_pred=reference)
        metrics[name] = {"description": f"{name} model <synthetic>", "size_bytes": 9_000_000 if "int8" not in name
                         else 2_500_000, "latency_ms": 3.5, **m, "ece": R.reliability(y, p)[3]}
    boot = bootstrap_balanced_accuracy(y, {name: p.argmax(1) for name, p in probs.items()},
                                       [f"lesion{i}" for i in range(n)], resamples=200)
    for name, interval in boot["balanced_accuracy"].items():
        metrics[name]["balanced_accuracy_ci"] = interval
    if not extras:
        return R.ReportInputs(where="synthetic images", classes=CLASSES, y=y, probs=probs, metrics=metrics)
    images = rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    images[:, 16:48, 16:48] = (np.array([120, 60, 40]) * (1 + y[:, None] / k)).astype(np.uint8)[:, None, None]
    histories = {phase: {"loss": list(np.linspace(2, 1, e)), "val_loss": list(np.linspace(2.1, 1.2, e)),
                         "balanced_accuracy": list(np.linspace(0.2, 0.6, e)),
                         "val_balanced_accuracy": list(np.linspace(0.2, 0.5, e))}
                 for phase, e in (("qat", 2), ("head", 3), ("finetune", 5))}
    counts = {s: {c: int(f * (i + 1) * 10) for i, c in enumerate(CLASSES)} for s, f in (("train", 7), ("val", 1.5),
                                                                                       ("test", 1.5))}
    return R.ReportInputs(where="the run's test split (synthetic)", classes=CLASSES, y=y, probs=probs,
                          metrics=metrics, dataset="/data/isic <9>", images=images,
                          paths=[f"/data/isic <9>/{CLASSES[c]}/ISIC_{i:07d}.jpg" for i, c in enumerate(y)],
                          flag=FlagRule("mel", THRESHOLD), histories=histories, class_counts=counts)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, R.ReportInputs]:
    out = tmp_path_factory.mktemp("report")
    inputs = _inputs()
    R.write_report(out, inputs)
    return out, inputs


def _chromium() -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `apt-get install -y chromium` (.ci/run installs it); the report test needs it"
    return exe


def _browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _page_errors(stderr: str) -> list[str]:
    """Console output and load failures of the page (the report has no script: any console line is a fault)."""
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line or re.search(r"Uncaught|ERR_[A-Z_]+|Failed to load", line)]


PROBE = ('<script>addEventListener("load",function(){var a=[].slice.call(document.images);document.body.setAttribute('
         '"data-decoded",a.filter(function(i){return i.complete&&i.naturalWidth>0}).length+"/"+a.length)})</script>')


def _decoded(page: Path, tmp: Path) -> tuple[int, int]:
    """(images decoded, images) once the page has loaded, read from a probe copy of the page."""
    probe = tmp / f"probe_{page.stem}.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = _browse(probe, tmp, "--dump-dom")
    match = re.search(r'data-decoded="(\d+)/(\d+)"', result.stdout)
    assert match, result.stderr[-2000:]
    return int(match[1]), int(match[2])


def test_report_holds_every_section_the_verdict_and_escapes_names(full_report):
    out, inputs = full_report
    text = (out / "report.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text, title
    s = R.summary(inputs.metrics)
    a, b = inputs.metrics["float"]["balanced_accuracy"], inputs.metrics["int8"]["balanced_accuracy"]
    assert s["reference"] == "float" and s["quantized"] == "int8"
    assert s["balanced_accuracy_drop_points"] == pytest.approx(100 * (a - b), abs=0.01)
    assert s["top1_agreement"] == inputs.metrics["int8"]["agreement"]
    points = f"{abs(100 * (a - b)):.1f} balanced-accuracy points vs float"
    assert points in s["verdict"] and f"top-1 agreement with float {100 * s['top1_agreement']:.1f} %" in s["verdict"]
    assert 'class="verdict' in text and html.escape(s["verdict"]) in text
    assert f"<b>{len(inputs.y)}</b> images" in text and "/data/isic &lt;9&gt;" in text
    assert html.escape(NOT_A_DIAGNOSIS) in text
    for name, m in inputs.metrics.items():  # one table row per variant, with the balanced accuracy's interval
        lo, hi = m["balanced_accuracy_ci"]
        assert f"<td>{name}</td>" in text and f"<td>{100 * lo:.1f}–{100 * hi:.1f}</td>" in text
    # class names and paths from folder names are text, never markup
    assert "<b>&amp; co</b>" not in text and html.escape(CLASSES[3]) in text and "&lt;synthetic&gt;" in text
    assert "Where float and int8 disagree</h3>" in text and "Most confident mistakes (int8)" in text
    # self-contained: every picture is a data URI, nothing is fetched, no script
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(srcs) > 10 and all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                                  for src in srcs)
    assert not re.search(r"https?://|<script|<link|@import|url\(", text, re.I)
    assert text.count('class="card"') >= 2


def test_markdown_keeps_the_table_and_links_the_written_pngs(full_report):
    out, inputs = full_report
    md = (out / "report.md").read_text(encoding="utf-8")
    assert R.markdown_table(inputs.metrics) in md and "| int8 |" in md and "| ECE |" in md
    assert R.summary(inputs.metrics)["verdict"] in md and NOT_A_DIAGNOSIS in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", md)
    assert {"roc.png", "recall.png", "reliability.png", "history.png", "class_distribution.png",
            "confusion_float.png", "confusion_int8.png"} <= set(links)
    for link in links:
        with Image.open(out / link) as im:
            assert im.width > 300 and im.height > 200, link


def test_report_renders_in_a_headless_browser(full_report, tmp_path: Path):
    out, _ = full_report
    shot = tmp_path / "report.png"
    result = _browse(out / "report.html", tmp_path, f"--screenshot={shot}", "--window-size=1200,3000",
                     "--hide-scrollbars")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert not _page_errors(result.stderr), _page_errors(result.stderr)
    with Image.open(shot) as im:
        grey = im.convert("L")
        assert grey.size == (1200, 3000)
        assert ImageStat.Stat(grey).stddev[0] > 25  # not a blank page
        hist = grey.histogram()
        assert sum(hist[:200]) / sum(hist) > 0.05  # text, tables and plots, not a white page with a title
    decoded, total = _decoded(out / "report.html", tmp_path)
    assert total > 10 and decoded == total


def test_the_browser_check_catches_a_broken_page(tmp_path: Path):
    """The checks above are not vacuous: a script error and an image that does not load are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><h1>x</h1><img src="missing.png"><img src="data:image/png;base64,'
                    'AAAA"><script>notDefined()</script></body></html>', encoding="utf-8")
    result = _browse(page, tmp_path, f"--screenshot={tmp_path / 'b.png'}")
    assert any("Uncaught" in line for line in _page_errors(result.stderr)), result.stderr[-2000:]
    assert _decoded(page, tmp_path) == (0, 2)


def test_bundle_only_report_has_no_float_verdict_and_still_renders(tmp_path: Path):
    inputs = _inputs(variants=("int8",), extras=False)
    R.write_report(tmp_path, inputs)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "no float model to compare with" in text and "<td>int8</td>" in text
    assert "<h2>Gallery</h2>" in text and "Most confident mistakes (int8)" in text
    assert "<h2>Training curves</h2>" not in text and not (tmp_path / "history.png").exists()
    assert R.summary(inputs.metrics)["reference"] is None
    decoded, total = _decoded(tmp_path / "report.html", tmp_path)
    assert total >= 4 and decoded == total  # confusion, ROC, recall, reliability; no thumbnails without images


def test_reliability_bins_and_expected_calibration_error():
    y = np.array([0, 0, 1, 1])
    certain = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert R.reliability(y, certain)[3] == pytest.approx(0.0)
    wrong = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    conf, acc, count, ece = R.reliability(y, wrong)
    assert ece == pytest.approx(0.9) and count.sum() == 4 and count[9] == 4 and acc[9] == 0
    half = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]])  # 0.6 confident, right half the time
    assert R.reliability(y, half)[3] == pytest.approx(0.1)


def test_verdict_colour_follows_the_loss_and_the_agreement():
    assert R._tone({"balanced_accuracy_drop_points": 0.5, "top1_agreement": 0.99}) == "good"
    assert R._tone({"balanced_accuracy_drop_points": 2.0, "top1_agreement": 0.97}) == "warn"
    assert R._tone({"balanced_accuracy_drop_points": 3.5, "top1_agreement": 0.99}) == "bad"
    assert R._tone({"balanced_accuracy_drop_points": -11.0, "top1_agreement": 0.47}) == "bad"  # a gain, but noise
    assert R._tone({"reference": None}) == ""
