"""Issue #4, faults to survive on the workstation: a training run killed with SIGKILL mid-epoch resumes with the
same split and finishes; an interrupted conversion leaves no half-written bundle and the older bundle intact; a
full disk or a read-only output folder is reported in one line, before work starts where that can be known, and
earlier output stays intact; commands refuse to write over folders that are not their own output.

Workstation environment (TensorFlow). One real training run (cnn, 32 px, ~80 images of isic9) is killed and resumed
in a subprocess; the later tests reuse it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TEST_COLOURS, assert_one_line_error, shared_path

TRAIN_ARGS = ["--arch", "cnn", "--weights", "none", "--img-size", "32", "--limit", "80", "--epochs", "8",
              "--qat-epochs", "2", "--batch-size", "4", "--patience", "50", "--swa-epochs", "3", "--seed", "7",
              "--warmup-epochs", "1.5"]


def cli(*args, **kwargs):
    from skinedge.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def epochs_logged(history_csv: Path) -> int:
    """Data rows in a CSVLogger file so far (0 before its header is written)."""
    return max(len(history_csv.read_text().splitlines()) - 1, 0) if history_csv.exists() else 0


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- kill -9 mid-epoch, then --resume ---------------------------------------------------------------------------


def kill_mid_phase(args: list[str], run: Path, phase: str, log_path: Path, env: dict[str, str]) -> None:
    """Run `skinedge ARGS` and SIGKILL it in the middle of an epoch of `phase`, once that phase's first backup and
    its history row exist (on a busy machine the gap between the two can outlast any fixed sleep)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "skinedge", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        backup_index, deadline = run / "backup" / phase / "chief" / "checkpoint", time.time() + 240
        try:
            while not (backup_index.exists() and epochs_logged(run / "history" / f"{phase}.csv") >= 1):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, f"no {phase} backup within 240 s"
                time.sleep(0.05)
            time.sleep(0.3)  # into the next epoch
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> dict:
    """Start training in a subprocess, SIGKILL it in the middle of an epoch once the first backup checkpoint
    exists, then resume it (from another working directory, naming the run dir by its absolute path)."""
    root = tmp_path_factory.mktemp("faults")
    data = shared_path("data", "isic9", "Train")
    start_dir, other_dir = root / "started_here", root / "resumed_here"
    start_dir.mkdir()
    other_dir.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(root / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "skinedge", "train", str(data), "--out", "run", *TRAIN_ARGS],
                            cwd=start_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    run = start_dir / "run"
    backup_index = run / "backup" / "finetune" / "chief" / "checkpoint"
    deadline = time.time() + 240
    try:
        # The index is written after the checkpoint's data (a complete backup); the epoch's history row comes
        # after it, from a later callback, so wait for both: on a busy machine the gap can outlast any fixed sleep.
        while not (backup_index.exists() and epochs_logged(run / "history" / "finetune.csv") >= 1):
            assert proc.poll() is None, (root / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no backup checkpoint and history row within 240 s"
            time.sleep(0.05)
        time.sleep(0.4)  # into the next epoch (~1 s each)
        state_at_kill = json.loads((run / "state.json").read_text())
        history_at_kill = (run / "history" / "finetune.csv").read_text()
        split_before = (run / "split.csv").read_bytes()
        config_before = (run / "config.json").read_bytes()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    resumed = subprocess.run([sys.executable, "-m", "skinedge", "train", str(data), "--out", str(run.resolve()),
                              "--resume"], cwd=other_dir, capture_output=True, text=True, env=env, timeout=600)
    return {"run": run, "resumed": resumed, "state_at_kill": state_at_kill, "history_at_kill": history_at_kill,
            "split_before": split_before, "config_before": config_before, "root": root}


def test_the_kill_came_mid_phase(resumed_run):
    """The run was really interrupted: the fine-tuning phase had not finished and had logged few epochs."""
    assert "finetune" not in resumed_run["state_at_kill"]["phases"]
    logged = len(resumed_run["history_at_kill"].splitlines()) - 1
    assert 1 <= logged < 8


def test_resume_finishes_with_the_same_outputs(resumed_run):
    proc, run = resumed_run["resumed"], resumed_run["run"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "resuming" in proc.stderr
    for name in ("qat.weights.h5", "float.weights.h5", "float.keras", "metrics.json", "summary.json", "curves.png",
                 "labels.txt", "history/finetune.csv", "history/qat.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"float", "qat"} <= set(metrics)
    state = json.loads((run / "state.json").read_text())
    assert state["phases"]["finetune"]["done"] and state["phases"]["qat"]["done"]
    assert not any(Path(p["weights"]).is_absolute() for p in state["phases"].values())  # movable run dir
    assert not any((run / "backup").iterdir())  # phase backups are cleared once a phase is done


def test_resume_finishes_the_weight_average_and_keeps_the_better_model(resumed_run):
    """--swa-epochs 3 across the kill: the last three fine-tuning epochs were averaged, the average was scored on
    validation, and the phase kept whichever of it and the best single epoch scored higher."""
    run = resumed_run["run"]
    finetune = json.loads((run / "state.json").read_text())["phases"]["finetune"]
    swa = finetune["swa"]
    assert swa["epochs"] == 3 and (run / "checkpoints" / "finetune.swa.npz").is_file()
    assert swa["kept"] == (swa["val_balanced_accuracy"] > swa["best_single_epoch"])
    assert finetune["best"] == max(swa["val_balanced_accuracy"], swa["best_single_epoch"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["phases"]["finetune"]["swa"] == swa  # what the model card reports


def test_resume_keeps_the_split_and_config(resumed_run):
    run = resumed_run["run"]
    assert (run / "split.csv").read_bytes() == resumed_run["split_before"]
    assert (run / "config.json").read_bytes() == resumed_run["config_before"]


def test_resume_continues_the_epochs_instead_of_restarting(resumed_run):
    lines = (resumed_run["run"] / "history" / "finetune.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,")
    epochs = [int(line.split(",")[0]) for line in lines[1:]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 7  # no epoch twice, the last one reached
    kept = resumed_run["history_at_kill"].splitlines()
    assert lines[: len(kept)] == kept  # the epochs before the kill are kept, not retrained


def test_distilled_qat_killed_mid_phase_resumes_and_saves_the_student(resumed_run, tmp_path):
    """QAT with a float teacher (--float-from the run above, --qat-distill 1), SIGKILLed once its first backup
    exists: --resume restores student, teacher and optimizer from the backup, finishes the phase's epochs without
    repeating one, and qat.weights.h5 holds the student alone (load_qat_model reads it)."""
    from skinedge.convert.model import load_qat_model

    data, run = shared_path("data", "isic9", "Train"), tmp_path / "distilled"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_mid_phase(["train", str(data), "--out", str(run), "--float-from", str(resumed_run["run"].resolve()),
                    "--qat-epochs", "6", "--qat-distill", "1"], run, "qat", tmp_path / "first.log", env)
    assert "qat" not in json.loads((run / "state.json").read_text())["phases"]
    resumed = subprocess.run([sys.executable, "-m", "skinedge", "train", str(data), "--out", str(run), "--resume"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [int(line.split(",")[0]) for line in (run / "history" / "qat.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(6))
    assert json.loads((run / "state.json").read_text())["phases"]["qat"]["done"]
    qat = load_qat_model("cnn", 9, 32, 1.0, str(run / "qat.weights.h5"))
    assert qat.output_shape[-1] == 9


def test_resume_of_a_finished_run_from_anywhere_with_old_style_state(resumed_run, tmp_path, monkeypatch):
    """Older runs stored weights paths as given on the command line (relative to where training started);
    resuming from another directory must still find them."""
    run = resumed_run["run"].resolve()
    state_path = run / "state.json"
    original = state_path.read_bytes()
    state = json.loads(original)
    for phase in state["phases"].values():
        phase["weights"] = "run/" + phase["weights"]  # relative to started_here/, as the old code wrote it
    state["float_best"] = "run/" + state["float_best"]
    state_path.write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    try:
        result = cli("train", shared_path("data", "isic9", "Train"), "--out", run, "--resume")
        assert result.exit_code == 0, result.output
        assert "run saved in" in result.stdout
    finally:
        state_path.write_bytes(original)


def test_resume_after_a_kill_before_the_split_was_saved(tmp_path):
    """Killed between config.json and split.csv: nothing was trained, so --resume prepares the run again."""
    from skinedge.train.config import TrainConfig

    data = shared_path("data", "isic9", "Train")
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data=str(data), out=str(run), arch="cnn", weights="none", img_size=32, limit=20, epochs=0,
                qat_epochs=0).save(run / "config.json")
    result = cli("train", data, "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    # nothing to train (0 epochs) is still a finished run with its split and labels
    assert (run / "split.csv").is_file() and (run / "labels.txt").is_file() and (run / "state.json").is_file()


def test_resume_of_a_run_dir_with_a_damaged_split_is_refused_in_one_line(resumed_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(resumed_run["run"], run, ignore=shutil.ignore_patterns("cache", "*.h5", "*.keras"))
    (run / "split.csv").write_text("not,a,split\n")
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", run, "--resume")
    assert_one_line_error(result, 2, "split.csv", "cannot be resumed")


def test_train_without_resume_into_an_existing_run_is_refused(resumed_run):
    before = snapshot(resumed_run["run"] / "history")
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", resumed_run["run"], *TRAIN_ARGS)
    assert_one_line_error(result, 2, "already holds a run", "--resume")
    assert snapshot(resumed_run["run"] / "history") == before


def test_resume_without_a_run_is_refused(tmp_path):
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", tmp_path / "nothing", "--resume")
    assert_one_line_error(result, 2, "nothing to resume")
    assert not (tmp_path / "nothing").exists()


# -- disk full and read-only folders ----------------------------------------------------------------------------


def test_disk_full_while_training_writes_is_one_line_and_keeps_earlier_output(resumed_run, monkeypatch):
    """ENOSPC at a write during training (here the validation metrics of a resumed, finished run): exit 1, one
    line naming the file and saying what to do; every file written before is intact."""
    from skinedge.train import fit

    run = resumed_run["run"].resolve()
    before = snapshot(run)
    real = fit._write_text

    def disk_full(path, text):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(fit, "_write_text", disk_full)
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", run, "--resume")
    line = assert_one_line_error(result, 1, "metrics.json", "No space left on device", "--resume")
    assert str(run) in line
    after = snapshot(run)
    for name in ("metrics.json", "qat.weights.h5", "split.csv", "config.json", "labels.txt", "state.json"):
        assert after[name] == before[name], name
    assert not [name for name in after if name.endswith(".tmp") or Path(name).name.startswith(".tmp-")]


def test_disk_full_mid_copy_leaves_the_old_weights_whole(resumed_run, monkeypatch):
    """A copy into place that fails half way (disk full) leaves the previous file, not half of the new one."""
    import shutil

    from skinedge.device.atomic import copy_file

    run = resumed_run["run"].resolve()
    before = (run / "float.weights.h5").read_bytes()

    def half_copy(src, dst, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(shutil, "copyfile", half_copy)
    with pytest.raises(OSError, match="No space left"):
        copy_file(run / "checkpoints" / "finetune.weights.h5", run / "float.weights.h5")
    assert (run / "float.weights.h5").read_bytes() == before
    assert not (run / ".tmp-float.weights.h5").exists()  # the half-written temporary is gone too


@pytest.fixture
def refusing_writes(monkeypatch):
    """Make one folder behave as read-only for the write probe (root writes anywhere, so it is injected)."""
    blocked: list[Path] = []
    real_access, real_mkstemp = os.access, tempfile.mkstemp

    def access(path, mode, **kwargs):
        if any(Path(path).resolve() == b for b in blocked) and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(Path(dir).resolve() == b for b in blocked):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return lambda path: blocked.append(Path(path).resolve())


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if training starts."""
    from skinedge.train import fit

    def started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(fit, "train", started)


def test_read_only_out_parent_is_a_usage_error_before_training(tmp_path, refusing_writes, no_training):
    parent = tmp_path / "readonly"
    parent.mkdir()
    refusing_writes(parent)
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", parent / "run", *TRAIN_ARGS)
    assert_one_line_error(result, 2, "Invalid value for '--out'", str(parent), "not writable")
    assert list(parent.iterdir()) == []


def test_write_probe_failure_is_a_usage_error_before_training(tmp_path, monkeypatch, no_training):
    """os.access says yes (as it does for root on a read-only mount) but writing fails: the probe catches it."""
    real = tempfile.mkstemp

    def full(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == tmp_path.resolve():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full)
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", tmp_path / "run", *TRAIN_ARGS)
    assert_one_line_error(result, 2, "Invalid value for '--out'", "No space left on device")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_out_parent(tmp_path, no_training):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = cli("train", shared_path("data", "isic9", "Train"), "--out", parent / "run", *TRAIN_ARGS)
        assert_one_line_error(result, 2, "not writable")
    finally:
        parent.chmod(0o755)


def test_out_that_is_a_file_is_a_usage_error(tmp_path, no_training):
    (tmp_path / "out").write_text("x")
    result = cli("train", shared_path("data", "isic9", "Train"), "--out", tmp_path / "out", *TRAIN_ARGS)
    assert_one_line_error(result, 2, "'--out'")


def test_read_only_out_for_convert_and_compare(resumed_run, bundle_dir, tmp_path, refusing_writes):
    refusing_writes(tmp_path)
    result = cli("convert", resumed_run["run"], "--out", tmp_path / "bundle")
    assert_one_line_error(result, 2, "'--out'", "not writable")
    result = cli("compare", "--bundle", bundle_dir, "--run", resumed_run["run"], "--out", tmp_path / "report")
    assert_one_line_error(result, 2, "'--out'", "not writable")
    assert list(tmp_path.iterdir()) == []


# -- conversion interrupted: no half-written bundle, the older one intact -----------------------------------------


@pytest.mark.parametrize("fault", ["disk full", "interrupt"])
def test_interrupted_conversion_leaves_the_older_bundle_intact(resumed_run, bundle_dir, tmp_path, monkeypatch,
                                                              fault):
    """The exception is raised in the middle of writing the bundle (after model.tflite, at model.json)."""
    import shutil

    models = tmp_path / "models"
    out = models / "ham"
    shutil.copytree(bundle_dir, out)  # an older bundle at the destination
    (models / "other").mkdir()
    (models / "other" / "keep.txt").write_text("another bundle's file")
    before = snapshot(models)
    real = Path.write_text
    written = []

    def failing_write_text(self, text, *args, **kwargs):
        if self.name == "model.json" and self.parent != out:
            written.extend(sorted(p.name for p in self.parent.iterdir()))  # what the temporary folder held
            if fault == "disk full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            raise KeyboardInterrupt
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    result = cli("convert", resumed_run["run"], "--out", out, "--min-agreement", "0", "--calibration-images", "16")
    assert "model.tflite" in written  # the fault came in the middle of writing
    if fault == "disk full":
        assert_one_line_error(result, 1, "No space left on device", "no bundle was written", "unchanged")
    else:
        assert result.exit_code == 1 and "Traceback" not in result.output  # click: "Aborted!"
    assert snapshot(models) == before  # the older bundle byte for byte, its neighbour too
    assert sorted(p.name for p in models.iterdir()) == ["ham", "other"]  # no temporary or .old folders


def test_convert_refuses_to_replace_a_folder_that_is_not_a_bundle(resumed_run, tmp_path):
    models = tmp_path / "models"
    (models / "ham").mkdir(parents=True)
    (models / "ham" / "model.tflite").write_bytes(b"x")
    (models / "notes.txt").write_text("my notes")
    before = snapshot(models)
    result = cli("convert", resumed_run["run"], "--out", models)  # the parent folder by mistake
    assert_one_line_error(result, 2, "not a skinedge bundle", "refusing")
    assert snapshot(models) == before


# -- compare: a failed write keeps the earlier report; never writes over other folders ---------------------------


@pytest.fixture
def colour_data(tmp_path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in TEST_COLOURS.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 8, (30, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path / "data"


def test_compare_disk_full_keeps_the_earlier_report(bundle_dir, colour_data, tmp_path, monkeypatch):
    report = tmp_path / "report"
    first = cli("compare", colour_data, "--bundle", bundle_dir, "--out", report)
    assert first.exit_code == 0, first.output
    before = snapshot(report)
    real = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        if self.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    result = cli("compare", colour_data, "--bundle", bundle_dir, "--out", report)
    assert_one_line_error(result, 1, "No space left on device", "unchanged")
    assert snapshot(report) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "report"]


@pytest.mark.parametrize("target", ["run", "bundle", "data"])
def test_compare_refuses_to_replace_a_folder_that_is_not_a_report(resumed_run, bundle_copy, colour_data, target):
    out = {"run": resumed_run["run"], "bundle": bundle_copy, "data": colour_data}[target]
    before = snapshot(out)
    result = cli("compare", colour_data, "--bundle", bundle_copy, "--out", out)
    assert_one_line_error(result, 2, "not a skinedge report", "refusing")
    assert snapshot(out) == before


def test_a_killed_phase_with_ema_resumes_the_same_moving_average(tmp_path):
    """--ema across a SIGKILL mid-epoch: the resumed phase takes the average up where the last backup left it, so
    after all 6 epochs it has taken in exactly 6 epochs' steps (restarted, it would hold fewer; a replayed epoch
    counted twice, more), and no epoch is logged twice."""
    import re

    import numpy as np

    data, run = shared_path("data", "isic9", "Train"), tmp_path / "ema"
    args = [a for a in TRAIN_ARGS if a not in ("--swa-epochs", "3")]
    args[args.index("--epochs") + 1] = "6"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_mid_phase(["train", str(data), "--out", str(run), *args, "--qat-epochs", "0", "--ema", "0.9"], run,
                   "finetune", tmp_path / "first.log", env)
    assert "finetune" not in json.loads((run / "state.json").read_text())["phases"]
    resumed = subprocess.run([sys.executable, "-m", "skinedge", "train", str(data), "--out", str(run), "--resume"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing the moving average of the weights" in resumed.stderr
    steps_per_epoch = int(re.search(r"phase finetune: 6 epochs, .*?(\d+) steps/epoch, scoring a moving average",
                                    resumed.stderr).group(1))
    with np.load(run / "checkpoints" / "finetune.ema.npz") as saved:
        assert int(saved["steps"]) == 6 * steps_per_epoch
    epochs = [int(line.split(",")[0]) for line in (run / "history" / "finetune.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(6))
