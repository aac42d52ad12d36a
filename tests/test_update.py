"""Incremental update: a gallery follows its folder, equals a fresh extraction of it per path, resumes after a kill,
keeps indexes honest.

Every check compares the updated gallery with an independent computation: a fresh extraction of
the changed folder into another gallery, and indexes built afresh on it. Generated images,
random weights, 32-px input: none of this is a real model or real photos.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import build_index
from lookalike.data.synthetic import generate_collection
from lookalike.embed.extract import ExtractConfig, extract
from lookalike.errors import GalleryError, IndexStaleError
from lookalike.gallery import ID_MAP, open_gallery
from lookalike.search import database_vectors, load_method, make_method
from lookalike.testing import make_bad_images

from .conftest import kill_after_shards, run_main

# Backend and precision given: `auto` would calibrate (seconds) in every extraction; the test of an update with the
# gallery's own backend names its own.
SETTINGS = {
    "model": "resnet18",
    "weights": "random",
    "image_size": 32,
    "batch_size": 8,
    "chunk_size": 16,
    "backend": "torch",
    "precision": "fp32",
}


def _config(data: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(data=str(data), out=str(out), **{**SETTINGS, **kw})


def _fresh(data: Path, out: Path, like) -> ExtractConfig:
    """A fresh extraction told to embed as `like` did: `auto` measures afresh, and might pick another backend."""
    chosen = like.manifest.model.inference
    return _config(data, out, backend=chosen.backend, precision=chosen.precision, threads=chosen.threads)


def _images(data: Path) -> list[Path]:
    return sorted(data.glob("train/*/images/*.JPEG"))


def assert_same_rows_per_path(updated, fresh) -> None:
    """Per path: the same metadata (label, split, hash, stat) and the same embedding as a fresh extraction."""
    ours, theirs = updated.metadata.to_pylist(), fresh.metadata.to_pylist()
    assert sorted(r["path"] for r in ours) == sorted(r["path"] for r in theirs)
    by_path = {r["path"]: (i, r) for i, r in enumerate(theirs)}
    for i, row in enumerate(ours):
        j, other = by_path[row["path"]]
        assert {k: v for k, v in row.items() if k != "id"} == {k: v for k, v in other.items() if k != "id"}, row["path"]
        np.testing.assert_allclose(
            updated.embeddings[i],
            fresh.embeddings[j],
            rtol=0,
            atol=1e-6,
            err_msg=f"{row['path']}: {updated.manifest.model.inference} vs {fresh.manifest.model.inference}",
        )
    assert [s["path"] for s in updated.manifest.skipped] == [s["path"] for s in fresh.manifest.skipped]


def change_folder(data: Path, donor: Path) -> dict[str, list[Path]]:
    """Add three images, remove two, replace one's content, touch one (new mtime, same bytes)."""
    classes = sorted((data / "train").iterdir())
    donors = _images(donor)
    added = []
    for i, src in enumerate(donors[:3]):
        added.append(classes[i % len(classes)] / "images" / f"added_{i}.JPEG")
        shutil.copyfile(src, added[-1])
    images = sorted((classes[1] / "images").glob("*.JPEG"))
    removed, changed, touched = images[1:3], images[3], images[4]
    for path in removed:
        path.unlink()
    shutil.copyfile(donors[5], changed)
    later = time.time_ns() + 10**9
    os.utime(touched, ns=(later, later))
    return {"added": added, "removed": removed, "changed": [changed], "touched": [touched]}


@pytest.fixture()
def collection(tmp_path) -> tuple[Path, Path]:
    data = generate_collection(tmp_path / "data", n_classes=3, train_per_class=8, val_per_class=2)
    donor = generate_collection(tmp_path / "donor", n_classes=3, train_per_class=3, val_per_class=0, seed=5)
    return data, donor


@pytest.mark.slow
def test_update_embeds_only_what_changed_and_equals_a_fresh_extraction(collection, tmp_path):
    data, donor = collection
    out = tmp_path / "g"
    before = extract(_config(data, out), progress=False)
    old_paths, old_ids = before.paths, {p: i for i, p in enumerate(before.paths)}
    changes = change_folder(data, donor)

    updated = extract(_config(data, out), progress=False)
    fresh = extract(_fresh(data, tmp_path / "fresh", updated), progress=False)

    assert_same_rows_per_path(updated, fresh)
    assert updated.paths == fresh.paths  # documented: rows come in a fresh extraction's order
    info = updated.manifest.update
    assert (info.added, info.changed, info.removed, info.reused) == (3, 1, 2, before.count - 3)
    assert info.hashed == 2  # the touched and the changed file: their stat differed, their hash was compared
    assert updated.manifest.timings["images"] == 4  # only the added and the changed images were embedded
    # ids: every kept row maps to the row of the same path; removed and re-embedded rows map to −1
    id_map = np.load(out / ID_MAP)
    gone = {str(p) for p in changes["removed"] + changes["changed"]}
    for path, old in old_ids.items():
        assert (id_map[old] == -1) if path in gone else (updated.paths[id_map[old]] == path)
    assert len(id_map) == len(old_paths)
    assert not (out / ".partial").exists()


def _shard_files(gallery) -> dict[str, tuple[int, bytes]]:
    """Each file of the gallery's shards: its inode (a kept file is the same file) and its bytes."""
    names = [name for s in gallery.shards for name in (s.embeddings, s.metadata)]
    return {name: (os.stat(gallery.path / name).st_ino, (gallery.path / name).read_bytes()) for name in names}


@pytest.mark.slow
def test_an_update_writes_only_the_shards_it_touches(collection, tmp_path):
    data, donor = collection
    out, rows = tmp_path / "g", 4
    before = extract(_config(data, out, shard_size=rows), progress=False)
    assert len(before.shards) == -(-before.count // rows) > 3
    files = _shard_files(before)

    # one image in the middle gets new content: only the shard holding it is written again
    middle = Path(before.paths[rows + 1])
    shutil.copyfile(_images(donor)[0], middle)
    changed = extract(_config(data, out, shard_size=rows), progress=False)
    info = changed.manifest.update
    assert (info.shards_written, info.shards_kept) == (1, len(before.shards) - 1)
    now = _shard_files(changed)
    assert [s.embeddings in files for s in changed.shards] == [i != 1 for i in range(len(before.shards))]
    for name, (inode, content) in now.items():
        if name in files:  # linked, not rewritten: the very same file
            assert (inode, content) == files[name]

    # one image added right after a row of the second shard: that shard is written again (5 rows: 4 + 1) and the
    # shards after it keep their embeddings files, with their metadata written anew because their ids moved
    files = now
    after = Path(changed.paths[rows + 2])
    added = after.with_name(after.stem + "a" + after.suffix)
    shutil.copyfile(_images(donor)[1], added)
    grown = extract(_config(data, out, shard_size=rows), progress=False)
    position = grown.paths.index(str(added))
    assert position // rows == 1  # among the second shard's rows
    fresh = extract(_fresh(data, tmp_path / "fresh", grown), progress=False)
    assert_same_rows_per_path(grown, fresh)
    assert grown.paths == fresh.paths
    # the fingerprint covers the kept shards' rows too: sha256 of every row and of every (path, label, split) line
    lines = "".join(f"{p}\t{label}\t{split}\n" for p, label, split in zip(grown.paths, grown.labels, grown.splits))
    vectors = hashlib.sha256(np.ascontiguousarray(np.asarray(grown.embeddings)).tobytes()).hexdigest()
    assert grown.fingerprint == f"{vectors[:16]}-{hashlib.sha256(lines.encode()).hexdigest()[:16]}"
    np.testing.assert_array_equal(grown.metadata.column("id").to_numpy(), np.arange(grown.count))
    assert (grown.manifest.update.shards_written, grown.manifest.update.shards_kept) == (2, len(before.shards) - 1)
    written = [(s.first_id, s.rows) for s in grown.shards if s.embeddings not in files]
    assert written == [(rows, rows), (2 * rows, 1)]  # the touched shard's rows and the added one, in shards of 4
    later = [s for s in grown.shards if s.first_id > 2 * rows]
    assert later and all(files[s.embeddings][0] == os.stat(out / s.embeddings).st_ino for s in later)
    assert all(s.metadata not in files for s in later)
    leftovers = {p.name for p in out.glob("*-*.*")} - {n for s in grown.shards for n in (s.embeddings, s.metadata)}
    assert not leftovers  # the files of the shards written again are gone


def test_an_unchanged_folder_is_left_alone_and_no_update_refuses_a_changed_one(collection, tmp_path):
    data, donor = collection
    out = tmp_path / "g"
    first = extract(_config(data, out), progress=False)
    os.utime(_images(data)[0])  # touched, same content: hashed, reused
    again = extract(_config(data, out), progress=False)
    assert again.fingerprint == first.fingerprint and again.manifest.update.reused == first.count
    third = extract(_config(data, out), progress=False)
    assert third.manifest.created == again.manifest.created  # nothing changed at all: nothing written

    change_folder(data, donor)
    with pytest.raises(GalleryError, match="--no-update"):
        extract(_config(data, out, update=False), progress=False)
    other = ExtractConfig(**{**_config(data, out).__dict__, "model": "mobilenet", "update": True})
    with pytest.raises(GalleryError, match=r"cannot update .*model='resnet18' \(now 'mobilenet'\)"):
        extract(other, progress=False)
    assert open_gallery(out).fingerprint == first.fingerprint  # refused: untouched


@pytest.mark.slow
def test_saved_indexes_follow_the_update_or_are_refused_as_stale(collection, tmp_path):
    data, donor = collection
    out = tmp_path / "g"
    gallery = extract(_config(data, out), progress=False)
    for method, options in (
        ("flat", {}),
        ("ivf", {"nlist": 2}),
        ("hnsw", {}),
        ("hnswlib", {}),
        ("brute", {}),
        ("PCA8,Flat", {}),
    ):
        build_index(gallery, method, **options)
    change_folder(data, donor)
    updated = extract(_config(data, out), progress=False)
    outcomes = updated.manifest.update.indexes
    assert outcomes["flat"].startswith("updated in place") and outcomes["ivf"].startswith("updated in place")
    assert (
        outcomes["hnsw"].startswith("rebuilt")
        and outcomes["hnswlib"].startswith("rebuilt")
        and outcomes["PCA8_Flat"].startswith("stale")
    )

    database = np.arange(updated.count)  # `lookalike index` indexes every row, and an update keeps it so
    queries = np.array(updated.embeddings)
    exact = make_method("flat", len(database), updated.dim)
    exact.build(database_vectors(updated, database), database)
    truth_scores, truth = exact.search(queries, 5)
    for name, params in (("flat", None), ("ivf", {"nprobe": 2}), ("brute", None)):
        method = load_method(updated, name, database_ids=database)  # holds exactly the new database rows
        scores, found = method.search(queries, 5, params)
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
        assert (found == truth).mean() > 0.99, name  # ties aside, the same neighbours as a fresh exact index
    for name in ("hnsw", "hnswlib"):
        graph = load_method(updated, name, database_ids=database)
        assert sorted(graph.ids.tolist()) == database.tolist()

    with pytest.raises(IndexStaleError, match=r"stale: .*lookalike index --gallery .* --method 'PCA8,Flat'"):
        updated.search(0, k=3, method="PCA8_Flat")
    proc = run_main("search", "--gallery", out, "--image", updated.paths[0], "--method", "PCA8_Flat", check=False)
    assert proc.returncode == 2 and "is stale" in proc.stderr and "lookalike index" in proc.stderr
    from lookalike.serve.service import SearchService

    with pytest.raises(IndexStaleError, match="PCA8_Flat is stale"):
        SearchService.load(out)
    build_index(updated, "PCA8,Flat")  # rebuilding clears it
    assert updated.search(0, k=3, method="PCA8_Flat")


@pytest.mark.slow
def test_a_killed_update_resumes_to_the_gallery_of_an_uninterrupted_one(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=4, train_per_class=4, val_per_class=1)
    donor = generate_collection(tmp_path / "donor", n_classes=4, train_per_class=20, val_per_class=0, seed=3)
    args = [
        "extract",
        "--data",
        data,
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--image-size",
        "32",
        "--bs",
        "8",
        "--chunk-size",
        "16",
        "--decode-threads",
        "0",
        "--backend",
        "torch",
        "--precision",
        "fp32",
    ]
    run_main(*args, "--out", tmp_path / "whole")  # the real process is what gets killed; the rest runs in this one
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    classes = sorted((data / "train").iterdir())
    for i, src in enumerate(_images(donor)):
        shutil.copyfile(src, classes[i % 4] / "images" / f"new_{i:03d}.JPEG")
    min((classes[0] / "images").glob("s*.JPEG")).unlink()

    out = tmp_path / "resumed"
    kill_after_shards(args, out)
    # killed mid-update: the old gallery is whole
    assert open_gallery(out).count == open_gallery(tmp_path / "whole").count

    run_main(*args, "--out", out)
    run_main(*args, "--out", tmp_path / "whole")
    whole, resumed = open_gallery(tmp_path / "whole"), open_gallery(out)
    np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(whole.embeddings))
    assert pq.read_table(out / "metadata.parquet").equals(pq.read_table(tmp_path / "whole" / "metadata.parquet"))
    assert resumed.manifest.update.added == whole.manifest.update.added == 80  # 5 shards of 16
    assert resumed.fingerprint == whole.fingerprint


@pytest.mark.slow
def test_an_update_killed_while_moving_in_is_finished_by_the_next_run(collection, tmp_path, monkeypatch):
    data, donor = collection
    out, reference = tmp_path / "g", tmp_path / "reference"
    extract(_config(data, out), progress=False)
    build_index(open_gallery(out), "ivf", nlist=2)
    shutil.copytree(out, reference)
    change_folder(data, donor)

    from lookalike.gallery import store

    real_replace = os.replace

    def crash_on_metadata(src, dst):  # the process dies after the new embeddings moved in, before the metadata
        if Path(dst) == out / "metadata.parquet":
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash_on_metadata)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(data, out), progress=False)
    monkeypatch.setattr(store.os, "replace", real_replace)
    with pytest.raises(GalleryError, match="manifest.json is missing"):
        open_gallery(out)  # nobody reads a mix of old and new files

    finished = extract(_config(data, out), progress=False)
    uninterrupted = extract(_config(data, reference), progress=False)
    np.testing.assert_array_equal(np.asarray(finished.embeddings), np.asarray(uninterrupted.embeddings))
    assert finished.metadata.equals(uninterrupted.metadata) and finished.fingerprint == uninterrupted.fingerprint
    assert np.array_equal(np.load(out / ID_MAP), np.load(reference / ID_MAP))
    for name in ("ids.npy", "index.faiss"):
        assert (out / "indexes" / "ivf" / name).read_bytes() == (reference / "indexes" / "ivf" / name).read_bytes()
    assert not (out / ".partial").exists()


@pytest.mark.slow
def test_the_held_out_sample_of_a_collection_without_val_does_not_shift(tmp_path):
    source = generate_collection(tmp_path / "src", n_classes=3, train_per_class=30, val_per_class=0)
    folders = tmp_path / "folders"
    for class_dir in sorted((source / "train").iterdir()):
        shutil.copytree(class_dir / "images", folders / class_dir.name)
    out = tmp_path / "g"
    before = extract(_config(folders, out), progress=False)
    queries = {before.paths[i] for i in before.partition().query_ids}
    build_index(before, "flat", database="heldout")  # the study's database follows the held-out sample
    build_index(before, "ivf", nlist=2)  # every row: follows the collection
    donor = generate_collection(tmp_path / "donor", n_classes=3, train_per_class=10, val_per_class=0, seed=9)
    for i, src in enumerate(_images(donor)):
        shutil.copyfile(src, folders / sorted(os.listdir(folders))[i % 3] / f"new_{i}.JPEG")
    removed = sorted((folders / min(os.listdir(folders))).glob("*.JPEG"))[:5]
    for path in removed:
        path.unlink()

    after = extract(_config(folders, out), progress=False)
    now = {after.paths[i] for i in after.partition().query_ids}
    kept = set(after.paths) - {str(p) for p in folders.glob("*/new_*.JPEG")}
    assert {p for p in queries if p in kept} == {p for p in now if p in kept}  # no kept row changed sides
    assert after.manifest.update.held_out.startswith("stable")
    assert load_method(after, "flat", database_ids=after.partition().database_ids).ntotal == len(
        after.partition().database_ids
    )
    every = load_method(after, "ivf", database_ids=np.arange(after.count))
    assert sorted(every.ids.tolist()) == list(range(after.count))


@pytest.mark.slow
@pytest.mark.parametrize("backend,precision", [("openvino", "bf16"), ("torch", "bf16")])
def test_an_update_embeds_new_files_with_the_gallerys_own_backend_and_precision(
    collection, tmp_path, backend, precision
):
    data, donor = collection
    out = tmp_path / "g"
    extract(_config(data, out, backend=backend, precision=precision), progress=False)
    change_folder(data, donor)
    updated = extract(_config(data, out, backend=backend, precision=precision), progress=False)
    assert (updated.manifest.model.inference.backend, updated.manifest.model.inference.precision) == (
        backend,
        precision,
    )
    fresh = extract(_config(data, tmp_path / "fresh", backend=backend, precision=precision), progress=False)
    assert_same_rows_per_path(updated, fresh)  # the new rows too: the other backend would differ by ~1e-3


@pytest.mark.slow
def test_unreadable_files_are_retried_only_when_they_change(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=6, val_per_class=2)
    images = min((data / "train").iterdir()) / "images"
    bad = make_bad_images(images)
    out = tmp_path / "g"
    first = extract(_config(data, out), progress=False)
    assert len(first.manifest.skipped) == len(bad)
    again = extract(_config(data, out), progress=False)
    assert again.manifest.created == first.manifest.created  # the same bad files: nothing to do
    shutil.copyfile(min(images.glob("s*.JPEG")), bad[0])  # a bad file repaired
    updated = extract(_config(data, out), progress=False)
    fresh = extract(_fresh(data, tmp_path / "fresh", updated), progress=False)
    assert_same_rows_per_path(updated, fresh)
    assert updated.manifest.update.added == 1 and updated.manifest.timings["images"] == 1
    assert json.loads((out / "manifest.json").read_text())["skipped"]["count"] == len(bad) - 1
