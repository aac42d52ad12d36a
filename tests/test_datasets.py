"""load_collection reads tiny-ImageNet-200, class-folder trees and list files, and explains failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lookalike.data.datasets import Collection, ImageRecord, load_collection
from lookalike.data.synthetic import generate_collection
from lookalike.errors import DataError

# load_collection never opens images, so stub bytes are enough (and keep the tests fast).
STUB = b"not decoded here"


def _touch(path: Path, data: bytes = STUB) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_tiny(root: Path, with_wnids: bool = True) -> Path:
    """A two-class tiny-ImageNet-200 tree with the real file names and annotation format."""
    wnids = ["n01443537", "n01629819"]
    if with_wnids:
        (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "words.txt").write_text(
        "n00001740\tentity\n"
        "n01443537\tgoldfish, Carassius auratus\n"
        "n01629819\tEuropean fire salamander, Salamandra salamandra\n"
    )
    for wnid in wnids:
        for i in range(3):
            _touch(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t10\t10\n")
    for i in range(4):
        _touch(root / "val" / "images" / f"val_{i}.JPEG")
    # val_3 has no annotation line: it must come back unlabelled, not crash.
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn01443537\t0\t32\t44\t62\n"
        "val_1.JPEG\tn01629819\t52\t55\t57\t59\n"
        "val_2.JPEG\tn01443537\t4\t0\t60\t55\n"
    )
    for i in range(2):
        _touch(root / "test" / "images" / f"test_{i}.JPEG")
    _touch(root / "train" / wnids[0] / "images" / ".hidden.JPEG")
    return root


def test_tiny_imagenet_layout(tmp_path):
    root = _make_tiny(tmp_path / "tiny-imagenet-200")
    col = load_collection(root)
    assert isinstance(col, Collection)
    assert col.kind == "tiny-imagenet"
    assert col.root == str(root)
    assert col.synthetic is None
    assert col.provenance() == {
        "kind": "tiny-imagenet",
        "root": str(root),
        "count": 12,
        "synthetic": False,
        "generator": None,
        "splits": {"train": 6, "val": 4, "test": 2},
    }
    first = col.records[0]
    assert first == ImageRecord(
        path=str(root / "train" / "n01443537" / "images" / "n01443537_0.JPEG"),
        label="n01443537",
        split="train",
        label_name="goldfish",
    )
    val = {Path(r.path).name: r for r in col.records if r.split == "val"}
    assert val["val_1.JPEG"].label == "n01629819"
    assert val["val_1.JPEG"].label_name == "European fire salamander"
    assert val["val_3.JPEG"].label is None and val["val_3.JPEG"].label_name is None
    assert all(r.label is None for r in col.records if r.split == "test")
    assert not any(".hidden" in r.path for r in col.records)


def test_records_are_sorted_by_split_then_path(tmp_path):
    col = load_collection(_make_tiny(tmp_path / "t"))
    order = {"train": 0, "val": 1, "test": 2, "gallery": 3}
    keys = [(order[r.split], r.path) for r in col.records]
    assert keys == sorted(keys)
    assert all(os.path.isabs(r.path) for r in col.records)


def test_parent_of_tiny_imagenet_and_missing_wnids(tmp_path):
    _make_tiny(tmp_path / "data" / "tiny-imagenet-200", with_wnids=False)
    col = load_collection(tmp_path / "data")
    assert col.kind == "tiny-imagenet"
    assert col.root == str(tmp_path / "data")
    assert len(col) == 12


def test_splits_filter(tmp_path):
    root = _make_tiny(tmp_path / "t")
    col = load_collection(root, splits=["train", "val"])
    assert {r.split for r in col.records} == {"train", "val"}
    assert len(load_collection(root, splits=["val"])) == 4
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_collection(root, splits=["dev"])
    with pytest.raises(DataError, match="gallery"):
        load_collection(root, splits=["gallery"])


def test_regrouped_val_folders_take_the_folder_label(tmp_path):
    root = tmp_path / "t"
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("n01443537\n")
    _touch(root / "val" / "n01443537" / "images" / "val_9.JPEG")
    (record,) = load_collection(root).records
    assert (record.split, record.label) == ("val", "n01443537")


def test_class_folders(tmp_path):
    _touch(tmp_path / "cats" / "a.jpg")
    _touch(tmp_path / "cats" / "deeper" / "b.PNG")
    _touch(tmp_path / "dogs" / "c.webp")
    _touch(tmp_path / "dogs" / "notes.txt")
    _touch(tmp_path / "dogs" / ".thumbs" / "d.jpg")
    _touch(tmp_path / ".cache" / "e.jpg")
    _touch(tmp_path / "loose.bmp")
    col = load_collection(tmp_path)
    assert col.kind == "class-folders"
    got = [(os.path.relpath(r.path, tmp_path), r.label, r.split) for r in col.records]
    assert got == [
        (os.path.join("cats", "a.jpg"), "cats", "gallery"),
        (os.path.join("cats", "deeper", "b.PNG"), "cats", "gallery"),
        (os.path.join("dogs", "c.webp"), "dogs", "gallery"),
        ("loose.bmp", None, "gallery"),
    ]
    assert col.provenance()["splits"] == {"gallery": 4}
    assert len(load_collection(tmp_path, splits=["gallery"])) == 4
    with pytest.raises(DataError, match="no images in split"):
        load_collection(tmp_path, splits=["train"])


def test_list_file_with_comments_relative_paths_and_labels(tmp_path):
    absolute = _touch(tmp_path / "elsewhere" / "z.jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "all_img_list.txt"
    listing.write_text(
        "# the study's --all_img_list\n"
        "\n"
        "imgs/a.jpg\n"
        "  ../imgs/b.jpg\tcat  \n"
        f"{absolute}\n"
        "imgs/a.jpg\n"  # duplicate: listed once
        "imgs/missing.jpg\n"  # does not exist: the extractor reports it, not the lister
    )
    col = load_collection(listing)
    assert col.kind == "list"
    assert col.root == str(listing)
    by_path = {r.path: r for r in col.records}
    assert set(by_path) == {
        str(lists / "imgs" / "a.jpg"),
        str(tmp_path / "imgs" / "b.jpg"),
        str(absolute),
        str(lists / "imgs" / "missing.jpg"),
    }
    assert by_path[str(tmp_path / "imgs" / "b.jpg")].label == "cat"
    assert by_path[str(absolute)].label is None
    assert {r.split for r in col.records} == {"gallery"}


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_collection(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no images found under .*empty: expected tiny-ImageNet layout"):
        load_collection(empty)
    _touch(tmp_path / "texts" / "a" / "readme.txt")
    with pytest.raises(DataError, match="no images found"):
        load_collection(tmp_path / "texts")
    blank = tmp_path / "blank.txt"
    blank.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="names no images"):
        load_collection(blank)
    photo = _touch(tmp_path / "photo.jpg")
    with pytest.raises(DataError, match="is an image, not a folder"):
        load_collection(photo)


def test_synthetic_marker_becomes_provenance(tmp_path):
    root = generate_collection(tmp_path / "synth", n_classes=2, train_per_class=2, val_per_class=1, image_size=16)
    col = load_collection(root)
    assert col.kind == "tiny-imagenet"
    assert col.synthetic == json.loads((root / "SYNTHETIC.json").read_text())
    prov = col.provenance()
    assert prov["synthetic"] is True
    assert prov["generator"]["generator"] == "lookalike.synthetic"
    assert prov["splits"] == {"train": 4, "val": 2}
    assert col.records[0].label_name == "red circles on grey stripes"
    json.dumps(prov)  # must be JSON-ready
