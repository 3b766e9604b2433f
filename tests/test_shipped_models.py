"""The bundles shipped under models/: complete, within size, labels as the issue fixes them, and usable by the
device runner with only `.[device]` installed (the device test environment has no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import shared_path
from skinedge.cli import main
from skinedge.device.bundle import sha256_file

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = {
    "ham10000": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
    "isic9": sorted(p.name for p in shared_path("data", "isic9", "Train").iterdir() if p.is_dir()),
}
BUNDLES = [name for name in SHIPPED if (MODELS / name / "model.json").is_file()]


def test_ham10000_is_shipped():
    assert "ham10000" in BUNDLES


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_is_complete_and_small(name):
    bundle = MODELS / name
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["labels"] == SHIPPED[name] == (bundle / "labels.txt").read_text().split("\n")[:len(SHIPPED[name])]
    assert sum(p.stat().st_size for p in bundle.iterdir()) <= 3.5e6
    assert meta["model"]["sha256"] == sha256_file(bundle / "model.tflite")
    assert meta["flag"]["label"] in ("mel", "melanoma") and 0 < meta["flag"]["threshold"] < 1
    card = (bundle / "README.md").read_text()
    assert "skinedge train" in card and "## Test-split results" in card and "not a diagnosis" in card


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_bundle_classifies_with_json_and_flag(name):
    images = sorted(shared_path("data", "ham10000", "images").glob("*.jpg"))[:3]
    result = CliRunner().invoke(main, ["device", "classify", str(MODELS / name), *map(str, images), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    for rec in lines:
        assert rec["label"] in SHIPPED[name] and isinstance(rec["flag"], bool) and 0 <= rec["score"] <= 1


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _row(lines: list[str], first: str, where: str) -> dict[str, str]:
    """The Markdown table row whose first cell is `first`, by its table's column headers."""
    at = next((i for i, line in enumerate(lines) if _cells(line)[0] == first and line.startswith("|")), None)
    assert at is not None, f"{where} has no table row {first!r}"
    header = next(lines[i - 1] for i in range(at, 0, -1) if lines[i].startswith("|---"))
    return dict(zip(_cells(header), _cells(lines[at])))


@pytest.mark.parametrize("name", BUNDLES)
def test_models_readme_agrees_with_the_shipped_bundle(name):
    """models/README.md gives each bundle's test figures as its card does, and its run tables mark the run the
    bundle was converted from, and only that run, as the shipped one: a bundle replaced without its notes fails."""
    meta = json.loads((MODELS / name / "model.json").read_text())
    card = (MODELS / name / "README.md").read_text().splitlines()
    readme = (MODELS / "README.md").read_text().splitlines()
    shipped = _row(card, "int8 TFLite (shipped)", f"{name}/README.md")
    row = _row(readme, f"`{name}/`", "models/README.md")
    balanced = shipped["balanced accuracy"].split(" (")[0]
    flag = f"{shipped['melanoma flag sens.']} / {shipped['melanoma flag spec.']}"
    assert row["test balanced accuracy, int8 (float)"].startswith(balanced + " ("), (row, balanced)
    assert row["melanoma flag on test, int8: sensitivity / specificity"] == flag, (row, flag)
    marked = [line for line in readme if f"shipped (`{name}/` now)" in line]
    assert len(marked) == 1 and f"`{Path(meta['training']['run_dir']).name}`" in marked[0]
