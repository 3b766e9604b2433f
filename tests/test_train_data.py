"""Data discovery, lesion-grouped splits and the decode cache, on the real shared data and small made-up sets."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path


def _write_jpg(path: Path, colour=(120, 60, 40), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_ham_layout_split_is_grouped_by_lesion_and_stratified():
    from skinedge.train import data as D

    samples, classes, layout = D.list_samples(shared_path("data", "ham10000"))
    assert layout == "ham10000"
    assert classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    splits = D.split_samples(samples, 0.15, 0.15, seed=1)
    groups = {k: {s.group for s in v} for k, v in splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sum(len(v) for v in splits.values()) == len(samples)
    for name in ("val", "test"):  # every class on every side, in about the right share
        counts = D.class_counts(splits[name])
        assert set(counts) == set(classes)
        assert 0.10 < len(splits[name]) / len(samples) < 0.20
    again = D.split_samples(samples, 0.15, 0.15, seed=1)
    assert [s.path for s in again["test"]] == [s.path for s in splits["test"]]


def test_folder_layout_and_limit_keep_every_class():
    from skinedge.train import data as D

    samples, classes, layout = D.list_samples(shared_path("data", "isic9", "Train"))
    assert layout == "folders" and len(classes) == 9
    small = D.limit_samples(samples, 100, seed=0)
    assert 90 <= len(small) <= 115
    assert {s.label for s in small} == set(classes)


def test_ham_metadata_naming_missing_images_is_skipped_with_a_count(tmp_path, caplog):
    from skinedge.train import data as D

    root = tmp_path / "ham"
    rows = [("L1", "I1", "mel"), ("L1", "I2", "mel"), ("L2", "I3", "nv"), ("L3", "I4", "nv"), ("L4", "GONE", "nv")]
    with open(_write_jpg(root / "images" / "I1.jpg").parents[1] / D.HAM_METADATA, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type"])
        w.writerows([(*r, "histo") for r in rows])
    for image_id in ("I2", "I3", "I4"):
        _write_jpg(root / "images" / f"{image_id}.jpg")
    samples, classes, _ = D.list_samples(root)
    assert len(samples) == 4 and classes == ["mel", "nv"]
    assert {s.group for s in samples if s.label == "mel"} == {"L1"}
    assert "1 images named in the metadata are missing" in caplog.text


@pytest.mark.parametrize("setup, message", [
    (lambda r: r.mkdir(), "neither a HAM10000 folder"),
    (lambda r: _write_jpg(r / "only" / "a.jpg"), "only one class"),
    (lambda r: (r / "a").mkdir(parents=True) or (r / "b").mkdir(), "no images found"),
])
def test_unusable_data_folders_are_refused_with_the_reason(tmp_path, setup, message):
    from skinedge.train import data as D

    root = tmp_path / "data"
    setup(root)
    with pytest.raises(D.DataError, match=message):
        D.list_samples(root)


def test_load_images_skips_corrupt_files_and_caches(tmp_path, caplog):
    from skinedge.device.preprocess import load_and_preprocess
    from skinedge.train import data as D

    good = [_write_jpg(tmp_path / "a" / f"{i}.jpg", (10 * i, 50, 90)) for i in range(3)]
    bad = tmp_path / "a" / "bad.jpg"
    bad.write_text("<html>not a jpeg</html>")
    samples = [D.Sample(str(p), "a", p.stem) for p in good] + [D.Sample(str(bad), "a", "bad")]
    x, y, kept = D.load_images(samples, ["a"], (16, 16), cache_dir=tmp_path / "cache", workers=1)
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8 and list(y) == [0, 0, 0]
    assert [s.path for s in kept] == [str(p) for p in good]
    # training sees exactly the device's pixels
    np.testing.assert_array_equal(x[1], load_and_preprocess(good[1], (16, 16)))
    assert "bad.jpg" in caplog.text and "1 of 4 images could not be read" in caplog.text
    bad.unlink()  # second call is served from the cache, without touching the files
    x2, _, kept2 = D.load_images(samples, ["a"], (16, 16), cache_dir=tmp_path / "cache", workers=1)
    np.testing.assert_array_equal(x, x2)
    assert len(kept2) == 3


def test_split_round_trips_through_csv(tmp_path):
    from skinedge.train import data as D

    splits = {"train": [D.Sample("a.jpg", "x", "g1")], "val": [D.Sample("b,c.jpg", "y", "g2")], "test": []}
    D.save_split(tmp_path / "split.csv", splits)
    assert D.load_split(tmp_path / "split.csv") == splits


def test_byte_identical_copies_share_a_group_even_across_classes(tmp_path, caplog):
    from skinedge.train import data as D

    root = tmp_path / "data"
    for i in range(6):
        _write_jpg(root / "mel" / f"m{i}.jpg", colour=(10 * i, 50, 90))
        _write_jpg(root / "nv" / f"n{i}.jpg", colour=(200, 10 * i, 30))
    (root / "nv" / "copy_of_m0.jpg").write_bytes((root / "mel" / "m0.jpg").read_bytes())  # other class, other name
    (root / "mel" / "m0_again.jpg").write_bytes((root / "mel" / "m0.jpg").read_bytes())  # same class
    samples, _, _ = D.list_samples(root)
    group = {Path(s.path).name: s.group for s in samples}
    assert group["copy_of_m0.jpg"] == group["m0_again.jpg"] == group["m0.jpg"]
    assert len(set(group.values())) == 12  # every other image is its own group
    assert "3 images are byte-identical copies" in caplog.text and "mel / nv: 1" in caplog.text
    for seed in range(5):  # whatever the seed, the three copies land in one split
        splits = D.split_samples(samples, val_fraction=0.3, test_fraction=0.3, seed=seed)
        sides = {name for name, items in splits.items() for s in items if s.group == group["m0.jpg"]}
        assert len(sides) == 1


def test_lesion_ids_group_a_folder_set_by_lesion_and_copies_join_the_whole_lesion(tmp_path, caplog):
    from skinedge.train import data as D

    caplog.set_level(logging.INFO, logger="skinedge.train.data")
    root = tmp_path / "data"
    for i in range(8):
        _write_jpg(root / "mel" / f"m{i}.jpg", colour=(10 * i, 50, 90))
        _write_jpg(root / "nv" / f"n{i}.jpg", colour=(200, 10 * i, 30))
    (root / "nv" / "copy_of_m3.jpg").write_bytes((root / "mel" / "m3.jpg").read_bytes())
    table = tmp_path / "lesions.csv"
    # m1 and n2 show one lesion (two classes: the data set's own disagreement); m3 and m4 another, and m3 has a
    # byte-identical copy under another name that the table does not know: it must join m4 too
    table.write_text("lesion_id,image_id,dx\nL1,m1,mel\nL1,n2,nv\nL3,m3,mel\nL3,m4,mel\nL9,absent,nv\n")
    samples, _, _ = D.list_samples(root, lesion_ids=table)
    group = {Path(s.path).stem: s.group for s in samples}
    assert group["m1"] == group["n2"] == "L1"
    assert group["m3"] == group["m4"] == group["copy_of_m3"]
    assert group["m0"] == "m0"  # not in the table: its own group, as before
    assert "4 of 17 images grouped by lesion id" in caplog.text
    for seed in range(6):
        splits = D.split_samples(samples, val_fraction=0.25, test_fraction=0.25, seed=seed)
        for members in (("m1", "n2"), ("m3", "m4", "copy_of_m3")):
            sides = {name for name, items in splits.items() for s in items if Path(s.path).stem in members}
            assert len(sides) == 1, (seed, members, sides)
    # without the table the lesion's images are free to land on both sides
    plain, _, _ = D.list_samples(root)
    assert len({s.group for s in plain if Path(s.path).stem in ("m1", "n2")}) == 2


def test_isic9_split_with_ham10000_lesion_ids_is_lesion_disjoint():
    from skinedge.train import data as D

    meta = shared_path("data", "ham10000", "HAM10000_metadata.csv")
    with open(meta, newline="") as fh:
        lesion_of = {row["image_id"]: row["lesion_id"] for row in csv.DictReader(fh)}
    samples, _, _ = D.list_samples(shared_path("data", "isic9", "Train"), lesion_ids=meta)
    splits = D.split_samples(samples, 0.15, 0.15, seed=42)
    lesions = {name: {lesion_of[Path(s.path).stem] for s in items if Path(s.path).stem in lesion_of}
               for name, items in splits.items()}
    assert lesions["train"] and lesions["val"] and lesions["test"]
    assert not lesions["train"] & lesions["val"] and not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]


@pytest.mark.parametrize("text, message", [
    ("image_id,dx\nI1,mel\n", "missing column(s) lesion_id"),
    ("lesion_id,image_id\n,I1\nL2,\n", "no rows with both"),
    (b"lesion_id,image_id\nL\xe9,I1\n", "not UTF-8"),
])
def test_unusable_lesion_id_tables_are_refused(tmp_path, text, message):
    from skinedge.train import data as D

    table = tmp_path / "lesions.csv"
    table.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(D.DataError, match=re.escape(message)) as err:
        D.read_lesion_ids(table)
    assert str(table) in str(err.value)


def test_a_folder_run_without_lesion_ids_warns_that_images_are_split_one_by_one(tmp_path, caplog):
    from skinedge.train.config import TrainConfig
    from skinedge.train.fit import prepare_run

    root = tmp_path / "data"
    for i in range(6):
        _write_jpg(root / "mel" / f"m{i}.jpg", colour=(10 * i, 50, 90))
        _write_jpg(root / "nv" / f"n{i}.jpg", colour=(200, 10 * i, 30))
    table = tmp_path / "lesions.csv"
    table.write_text("image_id,lesion_id\nm1,L1\nn2,L1\n")
    for name, lesion_ids in (("plain", None), ("grouped", str(table))):
        caplog.clear()
        cfg = TrainConfig(data=str(root), out=str(tmp_path / name), arch="cnn", weights="none", img_size=32,
                          val_fraction=0.3, test_fraction=0.2, lesion_ids=lesion_ids)
        _, _, splits, _ = prepare_run(cfg, resume=False)
        assert ("pass --lesion-ids" in caplog.text) is (lesion_ids is None), name
    stored = TrainConfig.load(tmp_path / "grouped" / "config.json")
    assert stored.lesion_ids == str(table)  # --resume and the card see the table the split was made with


def test_pinned_lesions_stay_in_training_and_the_rest_fills_validation_and_test():
    from skinedge.train import data as D

    samples, _, _ = D.list_samples(shared_path("data", "ham10000"))
    lesions = sorted({s.group for s in samples})
    assert D.split_samples(samples, 0.15, 0.15, 3, pinned=()) == D.split_samples(samples, 0.15, 0.15, 3)
    pinned = set(lesions[::2])  # half of the lesions, as if a model this run starts from had trained on them
    splits = D.split_samples(samples, 0.15, 0.15, 3, pinned=pinned)
    groups = {name: {s.group for s in items} for name, items in splits.items()}
    assert pinned <= groups["train"] and not pinned & (groups["val"] | groups["test"])
    assert sum(len(v) for v in splits.values()) == len(samples)
    for name in ("val", "test"):  # still about 15 % of all lesions each, drawn from the unpinned half
        assert 0.12 < len(groups[name]) / len(lesions) < 0.18, (name, len(groups[name]))
    with pytest.raises(D.DataError, match="unseen by the model it starts from"):
        D.split_samples(samples, 0.15, 0.15, 3, pinned=set(lesions[: int(0.8 * len(lesions))]))
    # pinned lesions that the usual split trains on anyway leave it as it is (the --leave-out recipe)
    usual = D.split_samples(samples, 0.15, 0.15, 3)
    assert D.split_samples(samples, 0.15, 0.15, 3, pinned={s.group for s in usual["train"]}) == usual


def test_leave_out_drops_the_lesions_and_images_another_run_validates_or_tests_on(tmp_path):
    from skinedge.train import data as D
    from skinedge.train.config import TrainConfig
    from skinedge.train.fit import prepare_run

    meta = shared_path("data", "ham10000", "HAM10000_metadata.csv")
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    lesion_of = {r["image_id"]: r["lesion_id"] for r in rows}
    images_of: dict[str, list[str]] = {}
    for r in rows:
        images_of.setdefault(r["lesion_id"], []).append(r["image_id"])
    shared = [lesion for lesion, images in images_of.items() if len(images) > 1][:40]
    # an ISIC-like run: its val and test name HAM10000 images under ISIC ids, half of them grouped by lesion id
    isic = tmp_path / "isic"
    isic.mkdir()
    (isic / "config.json").write_text('{"arch": "mobilenetv2", "alpha": 1.0, "img_size": 64}')
    (isic / "labels.txt").write_text("melanoma\n")
    held = [D.Sample(f"isic/melanoma/{images_of[lesion][0]}.jpg", "melanoma", lesion if i % 2 else f"img{i}")
            for i, lesion in enumerate(shared)]
    D.save_split(isic / "split.csv", {"train": [], "val": held[:20], "test": held[20:]})
    cfg = TrainConfig(data=str(shared_path("data", "ham10000")), out=str(tmp_path / "ham"), leave_out=str(isic))
    _, _, splits, _ = prepare_run(cfg, resume=False)
    kept = [s for items in splits.values() for s in items]
    by_lesion = {lesion_of[Path(s.path).stem] for s in kept}
    by_image = {Path(s.path).stem for s in kept}
    # matched by lesion id or by the image's file name, every image of those lesions goes, and nothing else
    assert not set(shared) & by_lesion and not {images_of[lesion][0] for lesion in shared} & by_image
    everything, _, _ = D.list_samples(shared_path("data", "ham10000"))
    assert len(everything) - len(kept) == sum(1 for s in everything if s.group in set(shared))


def test_seen_groups_match_a_lesion_by_id_and_an_image_by_file_name():
    from skinedge.train import data as D

    ours = [D.Sample("isic/mel/ISIC_1.jpg", "melanoma", "HAM_A"), D.Sample("isic/mel/ISIC_2.jpg", "melanoma", "B"),
            D.Sample("isic/nv/ISIC_3.jpg", "nevus", "C"), D.Sample("isic/nv/ISIC_4.jpg", "nevus", "C")]
    seen = [D.Sample("ham/images/ISIC_9.jpg", "mel", "HAM_A"), D.Sample("ham/images/ISIC_4.jpg", "nv", "HAM_Z")]
    assert D.seen_groups(ours, seen) == {"HAM_A", "C"}  # C through its image ISIC_4; B was never seen


def test_a_run_started_from_one_with_extra_images_keeps_those_images_in_training():
    """A HAM10000 run that trained on ISIC images (--extra-train) has seen them: an ISIC run started from it must
    not validate or test on them."""
    from types import SimpleNamespace

    from skinedge.train import data as D
    from skinedge.train.warmstart import pinned_groups

    source = SimpleNamespace(path="runs/ham-more-mel", splits={
        "train": [D.Sample("ham/images/ISIC_9.jpg", "mel", "HAM_A")], "val": [], "test": [],
        D.EXTRA_SPLIT: [D.Sample("isic/melanoma/ISIC_2.jpg", "mel", "ISIC_2")]})
    ours = [D.Sample("isic/melanoma/ISIC_1.jpg", "melanoma", "HAM_A"),
            D.Sample("isic/melanoma/ISIC_2.jpg", "melanoma", "ISIC_2"), D.Sample("isic/nv/ISIC_3.jpg", "nevus", "C")]
    assert pinned_groups(ours, source) == {"HAM_A", "ISIC_2"}
    assert [s.path for s in D.training_samples(source.splits)] == ["ham/images/ISIC_9.jpg", "isic/melanoma/ISIC_2.jpg"]


def _extra_set(root: Path) -> Path:
    """A folder-per-class set: two melanomas (one also filed as seborrheic keratosis), a nevus with a copy, an
    image that repeats the main data's by name, and a folder nothing maps."""
    _write_jpg(root / "melanoma" / "m1.jpg", (200, 10, 10))
    _write_jpg(root / "melanoma" / "m2.jpg", (190, 20, 10))
    _write_jpg(root / "seborrheic keratosis" / "m2.jpg", (190, 20, 10))  # the same file under a second class
    _write_jpg(root / "nevus" / "n1.jpg", (10, 200, 10))
    _write_jpg(root / "nevus" / "n1-copy.jpg", (10, 200, 10))
    _write_jpg(root / "nevus" / "ISIC_0000001.jpg", (10, 10, 200))  # the main data's image, by name
    _write_jpg(root / "squamous cell carcinoma" / "s1.jpg", (90, 90, 90))
    return root


def test_extra_samples_map_folders_to_classes_and_drop_repeats_disputes_and_copies(tmp_path, caplog):
    from skinedge.train import data as D

    main = [D.Sample("ham/ISIC_0000001.jpg", "nv", "HAM_1"), D.Sample("ham/ISIC_0000002.jpg", "mel", "HAM_2")]
    root = _extra_set(tmp_path / "extra")
    with caplog.at_level(logging.INFO, logger="skinedge.train.data"):
        extra = D.extra_samples(root, {"melanoma": "mel", "nevus": "nv", "seborrheic keratosis": "bkl"},
                                ["bkl", "mel", "nv"], main)
    # m2 is filed as mel and as bkl: both copies go; n1 and its copy are one image; ISIC_0000001 is main data
    # (of two copies the first in file order stays: "n1-copy.jpg" sorts before "n1.jpg")
    assert [(Path(s.path).name, s.label) for s in extra] == [("m1.jpg", "mel"), ("n1-copy.jpg", "nv")]
    line = next(r.getMessage() for r in caplog.records if "training-only" in r.getMessage())
    # the same when the second folder is left out: the set's own labels still disagree about m2
    alone = D.extra_samples(root, {"melanoma": "mel"}, ["bkl", "mel", "nv"], main)
    assert [Path(s.path).name for s in alone] == ["m1.jpg"]
    assert "2 training-only images" in line and "1 of lesions or images the data holds" in line
    assert "2 whose copies are filed under another class" in line and "1 duplicate copies" in line
    assert line.endswith("classes left out: squamous cell carcinoma")
    # that line counts the copies; the data's own warning ("kept together in one split") does not apply to them
    assert "byte-identical" not in caplog.text and "filed under two or more classes" not in caplog.text
    # a folder already named like a class needs no mapping; a lesion id shared with the main data is a repeat
    _write_jpg(tmp_path / "named" / "mel" / "x.jpg")
    _write_jpg(tmp_path / "named" / "nv" / "HAM_2.jpg", (1, 2, 3))
    named = D.extra_samples(tmp_path / "named", {}, ["mel", "nv"], [D.Sample("a/b.jpg", "mel", "HAM_2")])
    assert [(Path(s.path).name, s.label) for s in named] == [("x.jpg", "mel")]


@pytest.mark.parametrize("mapping, message", [
    ({"melanoma": "melanoma"}, "--extra-label: melanoma not among the classes of the data (mel, nv)"),
    ({"naevus": "nv"}, "has no class 'naevus' (--extra-label); its classes: melanoma, nevus, seborrheic "
                       "keratosis, squamous cell carcinoma"),
])
def test_extra_samples_refuse_a_mapping_that_cannot_apply(tmp_path, mapping, message):
    from skinedge.train import data as D

    root = _extra_set(tmp_path / "extra")
    with pytest.raises(D.DataError, match=re.escape(message)):
        D.extra_samples(root, mapping, ["mel", "nv"], [])


def test_extra_samples_refuse_data_with_nothing_to_add(tmp_path):
    from skinedge.train import data as D

    _write_jpg(tmp_path / "extra" / "mel" / "ISIC_1.jpg")
    with pytest.raises(D.DataError, match="no images to add"):
        D.extra_samples(tmp_path / "extra", {}, ["mel", "nv"], [D.Sample("h/ISIC_1.jpg", "mel", "L1")])
    _write_jpg(tmp_path / "flat" / "a.jpg")
    with pytest.raises(D.DataError, match="neither a HAM10000 folder"):
        D.extra_samples(tmp_path / "flat", {}, ["mel", "nv"], [])


def test_extra_samples_from_a_ham10000_folder_drop_every_lesion_the_data_holds_an_image_of(tmp_path):
    """HAM10000 for the ISIC set: a lesion with one image in the ISIC data is dropped whole, even without lesion
    ids on the ISIC side (its other images would be the same lesion on the training side of a split)."""
    from skinedge.train import data as D

    ham = tmp_path / "ham"
    rows = [("L1", "ISIC_1", "mel"), ("L1", "ISIC_2", "mel"), ("L2", "ISIC_3", "nv"), ("L2", "ISIC_4", "nv"),
            ("L3", "ISIC_5", "df")]
    for _, image_id, _ in rows:
        _write_jpg(ham / "images" / f"{image_id}.jpg")
    (ham / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n" + "".join(f"{','.join(r)}\n" for r in rows))
    main = [D.Sample("isic/melanoma/ISIC_2.jpg", "melanoma", "ISIC_2")]  # no lesion ids: its own group
    extra = D.extra_samples(ham, {"mel": "melanoma", "nv": "nevus"}, ["melanoma", "nevus"], main)
    assert [(Path(s.path).stem, s.label, s.group) for s in extra] == [("ISIC_3", "nevus", "L2"),
                                                                      ("ISIC_4", "nevus", "L2")]


def test_isic_melanomas_for_ham10000_leave_out_every_ham10000_image():
    """The real pair: the ISIC set's HAM10000 images are dropped (they could be validation or test images), and
    the melanomas it files again as seborrheic keratosis too."""
    from skinedge.train import data as D

    main, classes, _ = D.list_samples(shared_path("data", "ham10000"))
    extra = D.extra_samples(shared_path("data", "isic9", "Train"),
                            {"melanoma": "mel", "nevus": "nv", "seborrheic keratosis": "bkl"}, classes, main)
    ham_ids = {Path(s.path).stem for s in main}
    assert not ham_ids & {Path(s.path).stem for s in extra}
    assert D.class_counts(extra) == {"bkl": 2, "mel": 362, "nv": 280}
    assert len({s.group for s in extra}) == len(extra)


def test_split_seed_fixes_the_split_and_the_limit_sample_whatever_the_seed(tmp_path):
    """--split-seed alone decides which lesions land where (and which images --limit keeps): runs with other
    --seed values train on the very same split; without it the split follows --seed, as before, stored resolved."""
    from skinedge.train.config import TrainConfig
    from skinedge.train.fit import prepare_run

    data = str(shared_path("data", "ham10000"))

    def split(name: str, **seeds: int) -> dict:
        cfg = TrainConfig(data=data, out=str(tmp_path / name), limit=300, **seeds)
        _, _, splits, _ = prepare_run(cfg, resume=False)
        assert TrainConfig.load(tmp_path / name / "config.json").split_seed == seeds.get("split_seed", seeds["seed"])
        return splits

    same = split("seed5", seed=5)
    assert split("seed1-split5", seed=1, split_seed=5) == same
    assert (tmp_path / "seed1-split5" / "split.csv").read_bytes() == (tmp_path / "seed5" / "split.csv").read_bytes()
    assert split("seed1", seed=1) != same  # the seed still moves the split of a run that sets no split seed


def test_float_from_keeps_the_split_seed_of_its_float_run_and_takes_its_own_qat_seed(tmp_path):
    from skinedge.train import data as D
    from skinedge.train.config import TrainConfig
    from skinedge.train.warmstart import float_run

    data = tmp_path / "data"
    data.mkdir()
    source = tmp_path / "float-run"
    source.mkdir()
    stored = TrainConfig(data=str(data), out=str(source), seed=9).to_dict()
    del stored["split_seed"]  # a config.json written before --split-seed
    (source / "config.json").write_text(json.dumps(stored))
    (source / "labels.txt").write_text("mel\nnv\n")
    D.save_split(source / "split.csv", {"train": [D.Sample("a.jpg", "mel", "a")], "val": [], "test": []})
    for name in ("float.weights.h5", "state.json"):
        (source / name).write_text("{}")
    # --seed beside --float-from seeds QAT alone (the split's seed stays the float run's); without it, the float run's
    for seed, expected in ((None, 9), (3, 3)):
        cfg, _ = float_run(TrainConfig(data=str(data), out=str(tmp_path / "qat"), float_from=str(source), seed=seed,
                                       qat_distill=1))
        assert (cfg.seed, cfg.split_seed, cfg.qat_distill) == (expected, 9, 1)
    with pytest.raises(ValueError, match="seed must be set"):  # a run of its own always has a seed: splits repeat
        TrainConfig(data=str(data), out=str(tmp_path / "r"), seed=None).validate()
