"""The synthetic generator: deterministic, tiny-ImageNet layout, and classes a simple method can tell apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike.data.datasets import load_collection
from lookalike.data.images import load_rgb
from lookalike.data.synthetic import MAX_CLASSES, class_style, generate_collection
from lookalike.errors import DataError
from lookalike.testing import make_bad_images

SMALL = dict(n_classes=3, train_per_class=4, val_per_class=2, test_count=2, image_size=32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = _files(generate_collection(tmp_path / "a", seed=3, **SMALL))
    b = _files(generate_collection(tmp_path / "b", seed=3, **SMALL))
    c = _files(generate_collection(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/s0000000/images/s0000000_0.JPEG"] != c["train/s0000000/images/s0000000_0.JPEG"]


def test_layout_marker_and_parse(tmp_path):
    root = generate_collection(tmp_path / "synth", seed=1, **SMALL)
    assert root == tmp_path / "synth"
    assert (root / "wnids.txt").read_text().split() == ["s0000000", "s0000001", "s0000002"]
    assert (root / "words.txt").read_text().splitlines()[1] == "s0000001\tgreen squares on sand checks"
    assert sorted(p.name for p in (root / "train" / "s0000002" / "images").iterdir()) == [
        f"s0000002_{i}.JPEG" for i in range(4)
    ]
    annotations = (root / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(annotations) == 6
    name, wnid, *box = annotations[0].split("\t")
    assert name == "val_0.JPEG" and wnid.startswith("s") and len(box) == 4
    x0, y0, x1, y1 = map(int, box)
    assert 0 <= x0 < x1 < 32 and 0 <= y0 < y1 < 32
    assert len(list((root / "test" / "images").iterdir())) == 2

    marker = json.loads((root / "SYNTHETIC.json").read_text())
    assert marker == {
        "generator": "lookalike.synthetic",
        "version": 1,
        "seed": 1,
        "n_classes": 3,
        "train_per_class": 4,
        "val_per_class": 2,
        "test_count": 2,
        "image_size": 32,
        "note": "generated data, not real photographs",
    }

    col = load_collection(root)
    assert col.synthetic == marker
    assert col.provenance()["splits"] == {"train": 12, "val": 6, "test": 2}
    val_labels = sorted(r.label for r in col.records if r.split == "val")
    assert val_labels == ["s0000000"] * 2 + ["s0000001"] * 2 + ["s0000002"] * 2
    image = load_rgb(col.records[0].path)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert not list(tmp_path.glob(".synth.partial-*"))  # the temp folder is gone


def test_rerun_is_safe(tmp_path):
    root = generate_collection(tmp_path / "s", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_collection(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing rewritten
    with pytest.raises(DataError, match="other parameters"):
        generate_collection(root, **{**SMALL, "n_classes": 4})

    other = tmp_path / "photos"
    (other / "mine.jpg").parent.mkdir()
    (other / "mine.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty and is not a synthetic collection"):
        generate_collection(other, **SMALL)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_collection(empty, **SMALL) / "SYNTHETIC.json").is_file()


def test_bad_parameters():
    with pytest.raises(DataError, match="n_classes"):
        generate_collection("/nonexistent-never-written", n_classes=0)
    with pytest.raises(DataError, match="image_size"):
        generate_collection("/nonexistent-never-written", image_size=8)
    with pytest.raises(DataError, match="at least one image"):
        generate_collection("/nonexistent-never-written", train_per_class=0, val_per_class=0)


def test_every_class_has_its_own_style():
    combos = {(s.shape, s.foreground, s.texture, s.background) for s in map(class_style, range(MAX_CLASSES))}
    assert len(combos) == MAX_CLASSES
    assert len({class_style(i).name for i in range(MAX_CLASSES)}) == MAX_CLASSES


def _colour_histogram(path: str) -> np.ndarray:
    """4x4x4 joint RGB histogram, normalised: a deliberately weak feature."""
    q = (np.asarray(load_rgb(path)) // 64).reshape(-1, 3).astype(np.int64)
    hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float64)
    return hist / hist.sum()


def test_classes_are_separable_by_colour_histogram(tmp_path):
    root = generate_collection(tmp_path / "s", n_classes=10, train_per_class=15, val_per_class=10, image_size=32)
    col = load_collection(root)
    train = [r for r in col.records if r.split == "train"]
    val = [r for r in col.records if r.split == "val"]
    labels = sorted({r.label for r in train})
    feats = {r.path: _colour_histogram(r.path) for r in train + val}
    centroids = np.stack([np.mean([feats[r.path] for r in train if r.label == c], axis=0) for c in labels])
    hits = 0
    for r in val:
        nearest = int(np.argmin(np.linalg.norm(centroids - feats[r.path], axis=1)))
        hits += labels[nearest] == r.label
    accuracy = hits / len(val)
    assert accuracy > 0.8, accuracy

    # Images of one class are alike but not identical.
    first = [np.asarray(load_rgb(r.path), np.float32) for r in train if r.label == labels[0]][:2]
    assert np.abs(first[0] - first[1]).mean() > 5


def test_make_bad_images(tmp_path):
    paths = make_bad_images(tmp_path / "bad")
    assert [p.name for p in paths] == ["corrupt.jpg", "truncated.jpg", "empty.png", "not_an_image.jpg"]
    assert all(p.is_file() for p in paths)
    assert paths[2].stat().st_size == 0
    assert paths[1].read_bytes()[:2] == b"\xff\xd8"  # a real JPEG start, cut short
