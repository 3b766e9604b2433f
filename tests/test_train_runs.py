"""`skinedge runs`: training runs side by side (skinedge.train.runs). Run dirs are written here file by file in the
formats training writes (TrainConfig.save, Keras' CSVLogger columns, state.json, summary.json); a real trained run
is listed in test_pipeline.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from click.testing import CliRunner

from conftest import assert_one_line_error
from skinedge.cli import main
from skinedge.train.config import TrainConfig
from skinedge.train.runs import differing_settings, resolved_config, split_letters, summarize

SPLIT = "split,path,label,group\ntrain,a.jpg,mel,L1\nval,b.jpg,nv,L2\ntest,c.jpg,nv,L3\n"
HEADER = "epoch,balanced_accuracy,loss,val_accuracy,val_balanced_accuracy,val_loss\n"


def write_run(run: Path, histories: dict[str, list[float]], summary: Optional[dict[str, Any]] = None,
              split: str = SPLIT, done: tuple[str, ...] = (), raw_config: Optional[dict[str, Any]] = None,
              **settings: Any) -> Path:
    """A run dir: config, split, one history CSV per phase (validation balanced accuracy per epoch), state."""
    (run / "history").mkdir(parents=True)
    if raw_config is None:
        TrainConfig(data="DATA", out=str(run), epochs=6, qat_epochs=2, **settings).save(run / "config.json")
    else:
        (run / "config.json").write_text(json.dumps(raw_config))
    (run / "split.csv").write_text(split)
    for phase, scores in histories.items():
        rows = "".join(f"{i},0.5,1.0,0.6,{s},1.1\n" for i, s in enumerate(scores))
        (run / "history" / f"{phase}.csv").write_text(HEADER + rows)
    phases = {p: {"done": p in done, "best": max(histories.get(p, [0]))} for p in histories}
    (run / "state.json").write_text(json.dumps({"phases": phases}))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def finished(run: Path, **settings: Any) -> Path:
    summary = {"validation": {"float": {"balanced_accuracy": 0.66}, "qat": {"balanced_accuracy": 0.64}},
               "train_seconds": 600.0}
    return write_run(run, {"head": [0.4, 0.45], "finetune": [0.5, 0.66, 0.6], "qat": [0.64, 0.62]}, summary,
                     done=("head", "finetune", "qat"), **settings)


def cli(*args: Any):
    return CliRunner().invoke(main, ["runs", *map(str, args)])


def test_a_finished_run_reports_its_kept_models_and_the_best_epoch(tmp_path):
    row = summarize(finished(tmp_path / "run"))
    assert row["status"] == "done"
    assert (row["float_val"], row["float_best_epoch"]) == (0.66, 2)  # epoch 2 of fine-tuning, 1-based
    assert (row["qat_val"], row["qat_best_epoch"]) == (0.64, 1)
    assert row["train_minutes"] == 10.0


def test_a_run_still_training_shows_its_phase_epochs_and_best_so_far(tmp_path):
    run = write_run(tmp_path / "run", {"head": [0.4, 0.45], "finetune": [0.5, 0.58, 0.55]}, done=("head",))
    row = summarize(run)
    assert row["status"] == "finetune 3/6"
    assert (row["float_val"], row["float_best_epoch"], row["qat_val"]) == (0.58, 2, None)
    assert row["train_minutes"] is None


def test_a_fine_tuning_not_yet_above_the_head_shows_the_heads_epoch(tmp_path):
    """The model training would keep so far is the head's: its score comes with its phase and epoch."""
    run = write_run(tmp_path / "run", {"head": [0.40, 0.44], "finetune": [0.23, 0.14]}, done=("head",))
    row = summarize(run)
    assert (row["float_val"], row["float_best_phase"], row["float_best_epoch"]) == (0.44, "head", 2)
    assert "| finetune 2/6 | A | 0.440 (head ep 2) |  |  |" in cli(run).stdout


def test_a_run_stopped_before_any_epoch_and_a_cnn_run_without_a_head(tmp_path):
    assert summarize(write_run(tmp_path / "a", {}))["status"] == "head 0/2"
    cnn = summarize(write_run(tmp_path / "b", {"finetune": [0.3]}, arch="cnn"))
    assert cnn["status"] == "finetune 1/6" and cnn["float_val"] == 0.3


def test_the_table_shows_only_the_settings_that_differ_and_shares_split_letters(tmp_path):
    runs = [finished(tmp_path / "s1", seed=1, split_seed=42), finished(tmp_path / "s2", seed=2, split_seed=42),
            write_run(tmp_path / "other", {"head": [0.3]}, split=SPLIT.replace("L3", "L4"), seed=3)]
    result = cli(*runs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| run | status | split | seed | split-seed | float val | QAT val | minutes |"
    assert lines[2] == f"| {runs[0]} | done | A | 1 | 42 | 0.660 (ep 2) | 0.640 (ep 1) | 10 |"
    assert lines[3].startswith(f"| {runs[1]} | done | A | 2 | 42 |")
    assert lines[4] == f"| {runs[2]} | head 1/2 | B | 3 | 3 | 0.300 (head ep 1) |  |  |"


def test_an_older_config_differs_only_where_it_trained_differently(tmp_path):
    """A config written before --warmup-epochs and --split-seed existed stands for their defaults."""
    new = TrainConfig(data="DATA", out="new", seed=5).to_dict()
    new["split_seed"] = 5  # stored resolved
    old = {k: v for k, v in new.items() if k not in ("warmup_epochs", "split_seed", "settle_epochs")}
    rows = [{"config": resolved_config(c)} for c in (old, {**new, "out": "elsewhere"})]
    assert differing_settings(rows) == []
    rows.append({"config": resolved_config({**old, "warmup_epochs": 1.0})})
    assert differing_settings(rows) == ["warmup_epochs"]


def test_split_letters_follow_the_split_files_bytes():
    rows = [{"split_sha256": d} for d in ("x", "y", "x", None)]
    assert split_letters(rows) == ["A", "B", "A", "-"]


def test_a_folder_of_runs_is_expanded_and_sorted_best_first(tmp_path):
    finished(tmp_path / "b_run")
    write_run(tmp_path / "a_run", {"head": [0.4], "finetune": [0.7]}, done=("head",))
    (tmp_path / "notes").mkdir()  # not a run dir: not listed from inside a folder
    names = [json.loads(line)["run"] for line in cli(tmp_path, "--json").stdout.splitlines()]
    assert names == [str(tmp_path / "a_run"), str(tmp_path / "b_run")]
    best_first = [json.loads(line) for line in cli(tmp_path, "--json", "--sort", "float").stdout.splitlines()]
    assert [r["float_val"] for r in best_first] == [0.7, 0.66]
    assert best_first[0]["config"]["seed"] == 42  # the whole resolved config comes with each row
    by_qat = [json.loads(line)["run"] for line in cli(tmp_path, "--json", "--sort", "qat").stdout.splitlines()]
    assert by_qat == [str(tmp_path / "b_run"), str(tmp_path / "a_run")]  # a run without QAT goes last


def test_bad_paths_are_named_one_line_each_and_the_rest_still_listed(tmp_path):
    good = finished(tmp_path / "good")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    result = cli(good, tmp_path / "missing", bundle)
    assert result.exit_code == 1
    assert str(good) in result.stdout
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'missing'}: no such folder",
                                          f"error: {bundle}: not a run dir (config.json is missing)"]


@pytest.mark.parametrize("damage, problem", [
    (lambda run: (run / "config.json").write_text("{"), "config.json: unreadable"),
    (lambda run: (run / "config.json").write_text("[1]"), "config.json: not a JSON object"),
    (lambda run: (run / "summary.json").write_bytes(b"\xff\xfe"), "summary.json: unreadable"),
    (lambda run: (run / "history" / "qat.csv").write_text(HEADER + "0,0.5,1,0.6,n/a,1\n"), "qat.csv: unreadable"),
])
def test_a_damaged_run_alone_is_one_line_naming_the_file(tmp_path, damage, problem):
    run = finished(tmp_path / "run")
    damage(run)
    assert_one_line_error(cli(run), 2, str(run), problem)


def test_a_run_in_progress_with_settings_of_the_wrong_type_is_one_line_naming_its_config(tmp_path):
    config = {**TrainConfig(data="DATA", out="o").to_dict(), "epochs": "many"}
    run = write_run(tmp_path / "run", {"head": [0.4]}, raw_config=config)
    assert_one_line_error(cli(run), 2, str(run / "config.json"), "epochs and learning rate must be numbers")


def test_no_readable_run_at_all_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(tmp_path / "empty"), 2, f"{tmp_path / 'empty'}: not a run dir")
    result = cli(tmp_path / "missing", tmp_path / "empty")  # each named; the last is the command's error
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'missing'}: no such folder",
                                          f"Error: {tmp_path / 'empty'}: not a run dir (config.json is missing)"]


def test_runs_needs_no_tensorflow(tmp_path):
    import subprocess

    run = finished(tmp_path / "run")
    code = ("import sys; from skinedge.cli import main; sys.argv = ['skinedge', 'runs', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| done |" in proc.stdout


def test_a_summary_of_another_shape_falls_back_to_the_histories(tmp_path):
    run = finished(tmp_path / "run")
    (run / "summary.json").write_text(json.dumps({"validation": {"float": 3, "qat": {"balanced_accuracy": "x"}},
                                                  "train_seconds": "soon"}))
    (run / "state.json").write_text(json.dumps({"phases": ["head"]}))
    row = summarize(run)
    assert (row["float_val"], row["qat_val"], row["train_minutes"]) == (0.66, 0.64, None)


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert_one_line_error(cli(tmp_path / "notes.txt"), 2, "notes.txt: not a folder")
