"""Shared, cheap fixtures. The device tests never import TensorFlow: the models under tests/fixtures/ are real
TFLite files made once by tests/fixtures/make_fixtures.py (run that with the workstation environment)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LABELS = ["akiec", "mel", "nv"]
# Solid colours the tiny fixture model was trained to tell apart (see make_fixtures.py): label -> RGB.
TEST_COLOURS = {"akiec": (220, 40, 40), "mel": (25, 20, 20), "nv": (235, 230, 225)}


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert (FIXTURES / "tiny_bundle" / "model.tflite").is_file(), "run tests/fixtures/make_fixtures.py first"
    return FIXTURES


@pytest.fixture(scope="session")
def bundle_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_bundle"


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny bundle, for tests that tamper with it."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def colour_frames() -> dict[str, np.ndarray]:
    """label -> an RGB uint8 frame (48 x 64, not the model's shape) of the colour the model maps to that label."""
    return {label: np.full((48, 64, 3), colour, np.uint8) for label, colour in TEST_COLOURS.items()}


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(name, array_or_image, **save_kwargs) -> path of the saved file under tmp_path."""

    def make(name: str, image, **save_kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image.save(path, **save_kwargs)
        return path

    return make


@pytest.fixture
def colour_files(make_image, colour_frames) -> dict[str, Path]:
    """label -> a PNG file of that label's colour."""
    return {label: make_image(f"{label}.png", frame) for label, frame in colour_frames.items()}


# -- workstation tests (marked `train`: they need skinedge[train]) ---------------------------------------------

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# resolved once, at start-up: tests change directory and start subprocesses, so a relative $SKINEDGE_SHARED
# (the Makefile passes ../shared) must not be resolved later
SHARED_ROOT = Path(os.environ.get("SKINEDGE_SHARED", SHARED)).resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared (or $SKINEDGE_SHARED). Missing data fails the test: it is not a reason to skip."""
    root = SHARED_ROOT
    path = root.joinpath(*parts)
    assert path.exists(), f"{path} is missing: the workstation tests read the shared data (set SKINEDGE_SHARED)"
    return path


WORKSTATION_TESTS = ("test_train", "test_convert", "test_compare", "test_pipeline")


def pytest_ignore_collect(collection_path, config):
    # where only the device stage is installed, the workstation test files are not even imported
    if os.environ.get("SKINEDGE_DEVICE_ONLY") and collection_path.name.startswith(WORKSTATION_TESTS):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    # test files of the workstation stages are marked `train`, so `pytest -m "not train"` runs without TensorFlow
    for item in items:
        if Path(str(item.fspath)).name.startswith(WORKSTATION_TESTS):
            item.add_marker(pytest.mark.train)


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr that starts with Error: and names
    what went wrong (click's usage errors add their Usage/Try lines before it)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("Usage:", "Try '"))]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
