"""Soak test of the device runner: run `skinedge device run` for many frames and watch its memory and file handles.

    python -m skinedge.device.soak models/ham10000 photos/ --frames 10000
    python -m skinedge.device.soak tests/fixtures/tiny_bundle photos/ --frames 10000 --json

The runner is started as its own process (exactly what a user starts: a folder source with --loop, no saving, no
preview) and sampled from outside through /proc (Linux), so the measurement does not disturb it. The baseline is
taken once the run is warm (a tenth of the frames logged, at least 200): the interpreter, caches and the log file
are open by then, and anything that grows after it grows per frame.

Figures: rss_baseline_mb, rss_max_mb, rss_growth_mb (max after warm-up minus baseline; goal <= 5), fds_baseline,
fds_max, fd_growth (goal 0), frames, log_lines (complete JSON lines), seconds, fps, exit_code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import click

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def rss_mb(pid: int) -> Optional[float]:
    """Resident set size of a live process in MB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_KB / 1024
    except (OSError, IndexError, ValueError):
        return None


def open_fds(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def _fd_growth(baseline: int, samples: list[int]) -> int:
    """Handles open late in the run that were not open once warm. An image being read when a sample is taken
    shows as one more handle, and the last samples may catch the process closing its files, so compare the fewest
    open at the start with the fewest open between 80 % and 95 % of the run."""
    n = len(samples)
    late = samples[int(n * 0.8):max(int(n * 0.95), int(n * 0.8) + 1)]
    return min(late, default=baseline) - min([baseline, *samples[:5]])


def soak(model: str, images: str, frames: int = 10_000, log_dir: Optional[str] = None, threads: int = 1,
         sample_s: float = 0.2) -> dict[str, Any]:
    """Run the device runner over `frames` frames from the folder `images` (looped) and return the figures."""
    if not Path("/proc/self/statm").exists():
        raise click.ClickException("the soak test reads /proc: it needs Linux")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(log_dir or tmp)
        cmd = [sys.executable, "-m", "skinedge", "device", "run", model, "--source", f"folder:{images}", "--loop",
               "--frames", str(frames), "--no-save", "--no-preview", "--threads", str(threads),
               "--log-dir", str(logs)]
        warm_at = max(200, frames // 10)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        baseline: Optional[tuple[float, int]] = None
        rss_max, fds_max, fd_samples = 0.0, 0, []
        while proc.poll() is None:
            time.sleep(sample_s)
            rss, fds = rss_mb(proc.pid), open_fds(proc.pid)
            if rss is None or fds is None:
                break
            if baseline is None:
                if sum(_lines(p) for p in logs.glob("*.jsonl")) >= warm_at:
                    baseline = (rss, fds)
                continue
            rss_max, fds_max = max(rss_max, rss), max(fds_max, fds)
            fd_samples.append(fds)
        stderr = proc.communicate()[1]
        seconds = time.perf_counter() - t0
        records = []
        for path in sorted(logs.glob("*.jsonl")):
            records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if baseline is None:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        raise click.ClickException(f"the run ended before it was warm ({warm_at} frames): {last}")
    return {
        "frames": frames, "log_lines": len(records), "errors": sum("error" in r for r in records),
        "exit_code": proc.returncode, "seconds": round(seconds, 1), "fps": round(len(records) / seconds, 1),
        "rss_baseline_mb": round(baseline[0], 2), "rss_max_mb": round(max(rss_max, baseline[0]), 2),
        "rss_growth_mb": round(max(rss_max, baseline[0]) - baseline[0], 2),
        "fds_baseline": baseline[1], "fds_max": max(fds_max, baseline[1]),
        "fd_growth": _fd_growth(baseline[1], fd_samples),
        "warm_after_frames": warm_at,
    }


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=str))
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--frames", type=click.IntRange(min=500), default=10_000, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=str), help="Keep the run's log here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(model: str, images: str, frames: int, threads: int, log_dir: Optional[str], as_json: bool) -> None:
    """Soak-test `skinedge device run` on MODEL over a looped folder of IMAGES: RSS growth and file handles.

    \b
    Example:
      python -m skinedge.device.soak models/ham10000 photos/ --frames 10000
    """
    result = soak(model, images, frames, log_dir, threads)
    if as_json:
        click.echo(json.dumps(result))
        return
    for key, value in result.items():
        click.echo(f"{key:<18} {value}")


if __name__ == "__main__":
    main()
