"""webdataset tar shards as input: listed without unpacking, labelled by cls/txt/json, damaged members and tails
reported, local and Ray alike.

The shards are built here from a generated collection (images drawn by lookalike.data.synthetic,
not photos) with Python's tarfile; random weights, 32-px input. The reference for the embeddings
is an independent extraction of the very same image files listed in a text file.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lookalike.data.datasets import SYNTHETIC_MARKER, load_collection
from lookalike.data.synthetic import generate_collection
from lookalike.data.webdataset import expand_braces, read_member
from lookalike.embed.extract import ExtractConfig, extract
from lookalike.errors import DataError
from lookalike.gallery import EMBEDDINGS, METADATA

from .conftest import manifest_json, without_measurements

# Backend and precision given: runs compared with each other must not each measure their own winner.
SETTINGS = {
    "model": "resnet18",
    "weights": "random",
    "image_size": 32,
    "batch_size": 4,
    "chunk_size": 8,
    "backend": "openvino",
    "precision": "bf16",
}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """Three shards: cls labels; txt/json labels, a corrupt jpg and an image-less sample; one cut short inside its last
    image."""
    root = tmp_path_factory.mktemp("wds")
    data = generate_collection(root / "images", n_classes=3, train_per_class=6, val_per_class=0, image_size=32)
    images = sorted(data.glob("train/*/images/*.JPEG"))
    label = {p: p.parent.parent.name for p in images}
    folder = root / "shards"
    folder.mkdir()
    (folder / SYNTHETIC_MARKER).write_bytes((data / SYNTHETIC_MARKER).read_bytes())
    expected: dict[str, tuple[Path, str | None]] = {}  # gallery path → (image file, label)
    with tarfile.open(folder / "shard-00000.tar", "w") as tar:
        for i, path in enumerate(images[:7]):
            _add(tar, f"{i:06d}.jpg", path.read_bytes())
            _add(tar, f"{i:06d}.cls", label[path].encode())
            expected[f"{folder / 'shard-00000.tar'}#{i:06d}"] = (path, label[path])
    with tarfile.open(folder / "shard-00001.tar", "w") as tar:
        for i, path in enumerate(images[7:12], start=100):
            key = f"sub/{i:06d}"
            _add(tar, f"{key}.jpg", path.read_bytes())
            if i % 2:
                _add(tar, f"{key}.txt", label[path].encode())
            else:
                _add(tar, f"{key}.json", json.dumps({"label": label[path], "width": 32}).encode())
            expected[f"{folder / 'shard-00001.tar'}#{key}"] = (path, label[path])
        _add(tar, "sub/000200.jpg", b"\x00not a jpeg at all" * 20)  # corrupt: skipped and listed
        _add(tar, "sub/000201.txt", b"a caption without an image")  # no image member: not a sample
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i, path in enumerate(images[12:], start=300):
            _add(tar, f"{i:06d}.jpg", path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(whole.getvalue())) as written:
        last = written.getmembers()[-1]
    cut = last.offset_data + last.size // 2  # the shard ends half-way through its last image
    (folder / "shard-00002.tar").write_bytes(whole.getvalue()[:cut])
    for i, path in enumerate(images[12:-1], start=300):  # the last image lies across the cut: lost
        expected[f"{folder / 'shard-00002.tar'}#{i:06d}"] = (path, None)
    return {"folder": folder, "expected": expected, "root": root}


def test_shards_are_listed_in_every_form_with_labels_and_the_damage_reported(shards):
    folder, expected = shards["folder"], shards["expected"]
    by_folder = load_collection(folder)
    by_braces = load_collection(str(folder / "shard-{00000..00002}.tar"))
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert by_folder.records == by_braces.records and by_folder.kind == "webdataset"
    records = {r.path: r.label for r in by_folder.records}
    assert set(records) == set(expected) | {f"{folder / 'shard-00001.tar'}#sub/000200"}
    assert all(records[p] == lab for p, (_, lab) in expected.items())
    assert [p for p, _ in by_folder.problems] == [
        str(folder / "shard-00002.tar")
    ] and "truncated" in by_folder.problems[0][1]
    assert by_folder.synthetic is not None  # GENERATED images stay labelled as such
    for path, (image, _) in expected.items():
        assert read_member(path) == image.read_bytes()  # bytes come back from the tar, nothing unpacked
    with pytest.raises(DataError, match="do not exist"):
        load_collection(str(folder / "shard-{00000..00005}.tar"))


@pytest.fixture(scope="module")
def local_gallery(shards, tmp_path_factory):
    config = ExtractConfig(
        data=str(shards["folder"] / "shard-{00000..00002}.tar"),
        out=str(tmp_path_factory.mktemp("wds") / "local"),
        **SETTINGS,
    )
    return extract(config, progress=False)


@pytest.mark.slow
def test_a_webdataset_gallery_embeds_each_sample_as_its_image_file_would_be(shards, local_gallery, tmp_path):
    expected = shards["expected"]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{image}\t{label or ''}\n" for image, label in expected.values()))
    reference = extract(ExtractConfig(data=str(listing), out=str(tmp_path / "files"), **SETTINGS), progress=False)
    row_of_file = {p: i for i, p in enumerate(reference.paths)}
    assert sorted(local_gallery.paths) == sorted(expected)
    for i, path in enumerate(local_gallery.paths):
        image, label = expected[path]
        np.testing.assert_allclose(
            local_gallery.embeddings[i], reference.embeddings[row_of_file[str(image)]], rtol=0, atol=1e-6
        )
        assert local_gallery.labels[i] == label
    skipped = {s["path"]: s["reason"] for s in local_gallery.manifest.skipped}
    assert set(skipped) == {
        f"{shards['folder'] / 'shard-00001.tar'}#sub/000200",
        str(shards["folder"] / "shard-00002.tar"),
    }
    assert "GENERATED" in local_gallery.provenance() and local_gallery.manifest.data.kind == "webdataset"


def test_the_server_shows_a_sample_from_its_tar(shards, local_gallery):
    from lookalike.serve.service import SearchService

    service = SearchService.load(local_gallery.path)
    row = service.row(0)
    assert row["path"].startswith("shard-0000") and "#" in row["path"]  # relative to the shards' folder
    data, media = service.image_member(0)
    assert data == expected_bytes(shards, local_gallery.paths[0]) and media == "image/jpeg"
    assert service.thumbnail(0)[:2] == b"\xff\xd8"


def expected_bytes(shards, path: str) -> bytes:
    return shards["expected"][path][0].read_bytes()


@pytest.mark.slow
def test_a_new_shard_is_added_by_an_update(shards, local_gallery, tmp_path):
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(shards["folder"], folder)
    out = tmp_path / "g"
    first = extract(ExtractConfig(data=str(folder), out=str(out), **SETTINGS), progress=False)
    with tarfile.open(folder / "shard-00003.tar", "w") as tar:
        for i, (image, label) in enumerate(list(shards["expected"].values())[:3]):
            _add(tar, f"{i:06d}.jpg", image.read_bytes())
            _add(tar, f"{i:06d}.cls", str(label).encode())
    updated = extract(ExtractConfig(data=str(folder), out=str(out), **SETTINGS), progress=False)
    assert updated.manifest.update.added == 3 and updated.manifest.update.reused == first.count
    assert updated.manifest.timings["images"] == 3  # the corrupt member is unchanged: not tried again


@pytest.mark.slow
def test_the_ray_engine_reads_the_shards_into_the_same_gallery(ray_address, shards, local_gallery, tmp_path):
    from lookalike.distributed import extract_ray

    config = ExtractConfig(
        data=str(shards["folder"] / "shard-{00000..00002}.tar"), out=str(tmp_path / "ray"), **SETTINGS
    )
    gallery = extract_ray(config, actors=1, progress=False)
    for name in (EMBEDDINGS, METADATA):
        assert (gallery.path / name).read_bytes() == (local_gallery.path / name).read_bytes(), name
    assert without_measurements(manifest_json(gallery)) == without_measurements(manifest_json(local_gallery))
