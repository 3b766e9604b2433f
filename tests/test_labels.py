"""skinedge.device.labels: reading, checking and writing labels files."""

from __future__ import annotations

import pytest

from skinedge.device.labels import LabelsError, check_label_count, format_labels, parse_labels, read_labels


def test_parse_labels_strips_and_skips_blank_lines():
    assert parse_labels("akiec\n\n  mel \r\nnv\n\n") == ["akiec", "mel", "nv"]


def test_parse_labels_keeps_order_and_inner_spaces():
    assert parse_labels("nv\nbasal cell carcinoma\nakiec") == ["nv", "basal cell carcinoma", "akiec"]


@pytest.mark.parametrize("text", ["", "\n\n", "   \n\t\n"])
def test_parse_labels_empty(text):
    with pytest.raises(LabelsError, match="src: no labels"):
        parse_labels(text, "src")


def test_parse_labels_duplicates_named():
    with pytest.raises(LabelsError, match="'mel' appears more than once"):
        parse_labels("akiec\nmel\nnv\nmel\n")


def test_read_labels_fixture(fixtures_dir):
    assert read_labels(fixtures_dir / "labels3.txt") == ["akiec", "mel", "nv"]


def test_read_labels_utf8_with_bom_and_crlf(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffnævus\r\nmélanome\r\n".encode("utf-8"))
    assert read_labels(path) == ["nævus", "mélanome"]


def test_read_labels_empty_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"")
    with pytest.raises(LabelsError) as info:
        read_labels(path)
    assert str(path) in str(info.value) and "no labels" in str(info.value)


def test_read_labels_not_utf8(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("névus\nmel\n".encode("latin-1"))
    with pytest.raises(LabelsError) as info:
        read_labels(path)
    assert str(path) in str(info.value) and "not UTF-8" in str(info.value)


def test_read_labels_duplicates(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="'a' appears more than once"):
        read_labels(path)


def test_read_labels_missing(tmp_path):
    with pytest.raises(LabelsError, match="labels file not found"):
        read_labels(tmp_path / "missing.txt")


def test_read_labels_directory(tmp_path):
    with pytest.raises(LabelsError, match="cannot read labels file"):
        read_labels(tmp_path)


def test_check_label_count():
    check_label_count(["a", "b", "c"], 3, "m")
    with pytest.raises(LabelsError, match="m: 2 labels for a model with 3 outputs"):
        check_label_count(["a", "b"], 3, "m")
    with pytest.raises(LabelsError, match="4 labels for a model with 3 outputs"):
        check_label_count(["a", "b", "c", "d"], 3, "m")


def test_format_labels_round_trip(tmp_path):
    labels = ["akiec", "bcc", "basal cell", "mélanome"]
    text = format_labels(labels)
    assert text == "akiec\nbcc\nbasal cell\nmélanome\n"
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8")
    assert read_labels(path) == labels


@pytest.mark.parametrize("bad", ["", " mel", "mel ", "a\nb", "a\rb"])
def test_format_labels_refuses_labels_that_would_not_read_back(bad):
    with pytest.raises(LabelsError):
        format_labels(["ok", bad])
