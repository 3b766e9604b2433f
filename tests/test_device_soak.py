"""Device soak: `skinedge device run` over 10,000 frames holds its memory steady and leaks no file handles.

Runs the real runner in its own process (about a minute) and prints the figures (`pytest -s` shows them)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_COLOURS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="samples the process through /proc")


def test_soak_10000_frames_memory_and_file_handles(bundle_dir, tmp_path, capsys):
    from skinedge.device.soak import soak

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(TEST_COLOURS.values()):  # camera-sized JPEGs, as a folder source would hold
        Image.fromarray(np.full((480, 640, 3), colour, np.uint8)).save(photos / f"{i}.jpg")
    result = soak(str(bundle_dir), str(photos), frames=10_000, log_dir=str(tmp_path / "logs"))
    with capsys.disabled():
        print("\nsoak:", json.dumps(result))
    assert result["exit_code"] == 0
    assert result["log_lines"] == 10_000 and result["errors"] == 0
    assert result["rss_growth_mb"] <= 5.0, result
    assert result["fd_growth"] <= 0, result
