"""The typed Manifest reads every manifest written so far, and states what is not real."""

from __future__ import annotations

import json
import shutil

import pytest

from lookalike.errors import GalleryError
from lookalike.gallery import Manifest, open_gallery

from .conftest import manifest_json

# A schema-1 manifest as lookalike 0.1.0 wrote it before the Manifest class existed (no is_real, dict everywhere).
SCHEMA_1 = {
    "schema_version": 1,
    "created": "2026-11-20T10:00:00+00:00",
    "model": {
        "model": "resnet18",
        "arch": "resnet18",
        "family": "torchvision",
        "dim": 512,
        "weights": {
            "kind": "pretrained",
            "source": "torchvision ResNet18_Weights.IMAGENET1K_V1",
            "sha256": "f37072fd",
            "seed": None,
        },
        "preprocess": {
            "image_size": 224,
            "resize_size": 256,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
        },
        "precision": {"precision": "bf16", "bf16_vs_fp32_cosine_min": 0.9999},
        "device": "cpu",
    },
    "data": {
        "kind": "tiny-imagenet",
        "root": "/data/tiny-imagenet-200",
        "count": 3,
        "synthetic": False,
        "generator": None,
        "splits": {"train": 2, "val": 1},
    },
    "count": 3,
    "fingerprint": "0123456789abcdef-fedcba9876543210",
    "skipped": {"count": 1, "files": [{"path": "/data/x.jpg", "reason": "corrupt"}]},
    "timings": {"ms_per_image": 12.5},
    "extract": {"identity": {"model": "resnet18"}, "records_digest": "abc"},
    "environment": {"versions": {"lookalike": "0.1.0"}},
}


def test_a_schema_1_manifest_reads_into_the_typed_object():
    m = Manifest.from_dict(json.loads(json.dumps(SCHEMA_1)))
    assert m.schema_version == 1 and m.model.name == "resnet18" and m.model.dim == 512 and m.model.image_size == 224
    assert m.weights.kind == "pretrained" and m.is_real  # trained weights on real images, as recorded
    assert m.model.precision_name == "bf16" and m.skipped == ({"path": "/data/x.jpg", "reason": "corrupt"},)
    assert m.data.splits == {"train": 2, "val": 1} and m.data.extra["count"] == 3
    written = m.to_dict()
    assert written["schema_version"] == 3 and written["is_real"] is True
    # the migration: a gallery from before shards is one shard, its one embeddings.npy and metadata.parquet
    assert written["shards"] == [
        {"embeddings": "embeddings.npy", "metadata": "metadata.parquet", "rows": 3, "first_id": 0, "digest": None}
    ]
    again = Manifest.from_dict(written)
    assert again.to_dict() == written  # schema 3 round-trips


@pytest.mark.parametrize(
    "weights, synthetic, real, words",
    [
        ("random", False, False, "RANDOM weights"),
        ("none", True, False, "NO MODEL"),
        ("file", True, False, "GENERATED"),
        ("pretrained", False, True, "pretrained weights"),
    ],
)
def test_describe_and_warnings_never_pass_off_random_or_generated(weights, synthetic, real, words):
    raw = json.loads(json.dumps(SCHEMA_1))
    raw["model"]["weights"]["kind"] = weights
    raw["data"]["synthetic"] = synthetic
    m = Manifest.from_dict(raw)
    assert m.is_real is real and words in m.describe()
    assert bool(m.warnings()) is not real


def test_an_old_gallery_on_disk_still_opens(tiny_gallery, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tiny_gallery, copy)
    raw = manifest_json(open_gallery(copy))
    raw["schema_version"] = 1
    del raw["is_real"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    old = open_gallery(copy)
    assert old.manifest.schema_version == 1 and old.count == 120 and not old.is_real
    assert old.search(int(old.partition().query_ids[0]), k=3)  # searchable as before


@pytest.mark.parametrize(
    "change, message", [({"schema_version": 9}, "schema version 9"), ({"count": "many"}, "malformed")]
)
def test_unreadable_manifests_say_what_to_do(tiny_gallery, tmp_path, change, message):
    copy = tmp_path / "bad"
    shutil.copytree(tiny_gallery, copy)
    raw = manifest_json(open_gallery(copy)) | change
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(GalleryError, match=message):
        open_gallery(copy)
