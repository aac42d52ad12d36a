"""Sharded galleries (issue 21): the view every reader goes through, the writer that holds one shard, extraction and
updates in shards, galleries from before shards, and bad shards."""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike.errors import GalleryError
from lookalike.gallery import GalleryWriter, Rows, ShardedArray, open_gallery
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery

from .conftest import PINNED, run_main


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def array_gallery(path, x: np.ndarray, shard_rows: int):
    return write_array_gallery(
        path,
        x,
        labels=[str(i % 3) for i in range(len(x))],
        splits=["val" if i % 10 == 0 else "train" for i in range(len(x))],
        segments=[Segment("generated", 0, len(x), True, "test vectors")],
        model=generated_model_block(x.shape[1], 0),
        shard_rows=shard_rows,
    )


def test_the_view_reads_rows_by_id_slice_mask_and_block_as_numpy_does():
    x = unit_rows(50)
    cuts = [0, 7, 8, 30, 50]  # uneven shards, one of a single row
    view = ShardedArray([x[a:b] for a, b in zip(cuts, cuts[1:])], 16)
    rng = np.random.default_rng(1)
    ids = rng.integers(-50, 50, 200)  # any order, repeats and negatives
    assert view.shape == (50, 16) and len(view) == 50
    np.testing.assert_array_equal(view[ids], x[ids])
    np.testing.assert_array_equal(view.take(ids), x[ids])
    for key in (slice(5, 33), slice(None, None, 3), slice(40, 10, -2), 7, -1, x[:, 0] > 0, [3, 3, 49]):
        np.testing.assert_array_equal(view[key], x[key], err_msg=str(key))
    np.testing.assert_array_equal(view[ids, 2:5], x[ids, 2:5])
    np.testing.assert_array_equal(view[9, 3], x[9, 3])
    np.testing.assert_array_equal(np.asarray(view), x)
    blocks = list(view.blocks(block_rows=4))
    assert all(len(b) <= 4 for _, b in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x)
    assert [first for first, _ in blocks] == np.cumsum([0] + [len(b) for _, b in blocks])[:-1].tolist()
    with pytest.raises(IndexError, match="out of range"):
        view[[0, 50]]


def test_a_sharded_gallery_lists_its_shards_and_equals_the_one_file_gallery(tmp_path):
    x = unit_rows(30)
    one = array_gallery(tmp_path / "one", x, shard_rows=1000)
    many = array_gallery(tmp_path / "many", x, shard_rows=7)
    manifest = json.loads((many.path / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [7, 7, 7, 7, 2]
    assert [s["first_id"] for s in manifest["shards"]] == [0, 7, 14, 21, 28]
    for shard in manifest["shards"]:  # each file is a plain float32 .npy, its digest the sha256 of its rows
        rows = np.load(many.path / shard["embeddings"])
        np.testing.assert_array_equal(rows, x[shard["first_id"] : shard["first_id"] + shard["rows"]])
        assert shard["digest"] == hashlib.sha256(rows.tobytes()).hexdigest()
    assert sorted(p.name for p in one.path.iterdir() if p.suffix in (".npy", ".parquet")) == [
        "embeddings.npy",
        "metadata.parquet",
    ]
    assert one.fingerprint == many.fingerprint  # the content, not the layout
    np.testing.assert_array_equal(np.asarray(many.embeddings), x)
    assert many.metadata.column("id").to_pylist() == list(range(30))
    assert many.paths == one.paths and list(many.labels) == list(one.labels)


@pytest.mark.parametrize("method", ["brute", "flat", "ivf"])
def test_sharded_and_one_file_galleries_give_the_same_search_results(tmp_path, method):
    x = unit_rows(400, d=32, seed=2)
    one = lookalike.open_gallery(array_gallery(tmp_path / "one", x, shard_rows=10_000).path)
    many = lookalike.open_gallery(array_gallery(tmp_path / "many", x, shard_rows=64).path)
    params = {"nprobe": 4} if method == "ivf" else {}
    for query in (0, 123, 399, x[5] + 0.1 * x[6]):
        a = one.search(query, k=10, method=method, **params)
        b = many.search(query, k=10, method=method, **params)
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)
    exact = np.argsort(-(x @ x[123]), kind="stable")[:10]  # independent: numpy over the whole array
    if method != "ivf":
        assert [h.id for h in many.search(123, k=10, method=method)] == exact.tolist()


def test_the_writer_holds_one_shard_not_the_gallery(tmp_path):
    """Rows streamed in blocks: the peak of what Python and numpy allocate stays below two shards (2 MiB each here),
    not the gallery (16 MiB)."""
    d, shard_rows, block = 256, 2048, 512
    writer = GalleryWriter(tmp_path / "g", d, shard_rows)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        for start in range(0, 16_384, block):
            rows = rng.standard_normal((block, d), dtype=np.float32)
            writer.add(
                rows, Rows([f"r{start + i}" for i in range(block)], [None] * block, [None] * block, ["train"] * block)
            )
        gallery = writer.finish(model=generated_model_block(d, 0), data=lookalike.gallery.DataInfo(kind="arrays"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gallery.count == 16_384 and len(gallery.shards) == 8
    assert peak < 2 * shard_rows * d * 4, f"peak {peak / 2**20:.1f} MiB"


def test_extraction_writes_shards_of_shard_size_and_an_update_keeps_the_rest(tiny_collection, tiny_gallery, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_collection, data)
    out = tmp_path / "g"
    args = ["--model", "resnet18", "--weights", "random", "--image-size", "32", "--bs", "16", *PINNED]
    run_main("extract", "--data", data, "--out", out, *args, "--shard-size", "32")
    sharded, reference = open_gallery(out), open_gallery(tiny_gallery)  # the same images, one file
    assert [s.rows for s in sharded.shards] == [32, 32, 32, 24]
    relative = [str(Path(p).relative_to(data)) for p in sharded.paths]
    assert relative == [str(Path(p).relative_to(tiny_collection)) for p in reference.paths]
    np.testing.assert_array_equal(np.asarray(sharded.embeddings), np.asarray(reference.embeddings))

    # an update: one file gone, one added; the other rows keep their vectors
    before = dict(zip(sharded.paths, np.asarray(sharded.embeddings)))
    gone = sorted(data.glob("train/*/images/*"))[0]
    gone.unlink()
    added = gone.parent / "added.JPEG"
    shutil.copy(sorted(data.glob("train/*/images/*"))[-1], added)
    run_main("extract", "--data", data, "--out", out, *args, "--shard-size", "32")
    updated = open_gallery(out)
    assert updated.count == sharded.count and str(gone) not in updated.paths and str(added) in updated.paths
    assert [s.rows for s in updated.shards] == [32, 32, 32, 24]
    for path, row in zip(updated.paths, np.asarray(updated.embeddings)):
        if path != str(added):
            np.testing.assert_array_equal(row, before[path])
    assert sorted(p.name for p in out.glob("embeddings*.npy")) == sorted(s.embeddings for s in updated.shards)


def test_a_gallery_from_before_shards_opens_as_one_shard(tmp_path):
    x = unit_rows(20)
    gallery = array_gallery(tmp_path / "g", x, shard_rows=1000)
    raw = json.loads((gallery.path / "manifest.json").read_text())
    raw["schema_version"] = 2
    del raw["shards"]
    (gallery.path / "manifest.json").write_text(json.dumps(raw))
    old = open_gallery(gallery.path)
    assert len(old.shards) == 1 and old.shards[0].digest is None
    np.testing.assert_array_equal(np.asarray(old.embeddings), x)
    old.verify()  # nothing to compare: passes


def test_a_missing_truncated_or_altered_shard_is_one_clear_error(tmp_path):
    x = unit_rows(30)
    path = array_gallery(tmp_path / "g", x, shard_rows=10).path
    third = path / "embeddings-00002.npy"
    original = third.read_bytes()

    third.unlink()
    with pytest.raises(GalleryError, match="missing embeddings-00002.npy.*--overwrite"):
        open_gallery(path)

    np.save(third, x[20:25])  # truncated: 5 of its 10 rows
    with pytest.raises(GalleryError, match=r"embeddings-00002\.npy as rows 20–29.*\(5, 16\)"):
        open_gallery(path)

    altered = np.load(path / "embeddings-00001.npy")
    altered[3, 0] += 0.5
    third.write_bytes(original)
    np.save(path / "embeddings-00001.npy", altered)
    gallery = open_gallery(path)  # the shapes are right: opening stays cheap
    with pytest.raises(GalleryError, match=r"shard embeddings-00001\.npy \(rows 10–19\) was altered"):
        gallery.verify()


# --- ivfpq-ondisk: built out of core, part by part, resumable ---


@pytest.fixture
def sharded_gallery(tmp_path, monkeypatch):
    """3,000 rows in shards of 700, and parts of 1,000 rows: parts that cross shard boundaries."""
    from lookalike.search import ondisk

    monkeypatch.setattr(ondisk, "PART_ROWS", 1000)
    x = unit_rows(3000, d=32, seed=3)
    return array_gallery(tmp_path / "g", x, shard_rows=700), x


def ids_and_scores(gallery, queries, method, **params):
    hits = [gallery.search(q, k=10, method=method, **params) for q in queries]
    return [[h.id for h in row] for row in hits], np.array([[h.score for h in row] for row in hits])


def test_the_ondisk_index_equals_the_in_memory_one_and_reranks_exactly(sharded_gallery):
    gallery, x = sharded_gallery
    built = lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)
    assert built.parts_added == 3 and built.build_stats.train_size > 0
    lookalike.build_index(gallery, "ivfpq-mmap", nlist=8)  # the same factory and training, built in memory
    folder = gallery.path / "indexes" / "ivfpq-ondisk"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ids.npy",
        "index.faiss",
        "lists.ivfdata",
        "method.json",
        "parts",
    ]
    assert sorted(p.name for p in (folder / "parts").iterdir()) == [f"part-0000{i}.index" for i in range(3)]
    assert not (gallery.path / "indexes" / ".ivfpq-ondisk.build").exists()  # the parts were merged and removed
    g = lookalike.open_gallery(gallery.path)
    queries = x[:40] + 0.05 * unit_rows(40, d=32, seed=4)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)  # as the search normalises a query vector
    ondisk_ids, ondisk_scores = ids_and_scores(g, queries, "ivfpq-ondisk", nprobe=3)
    memory_ids, memory_scores = ids_and_scores(g, queries, "ivfpq-mmap", nprobe=3)
    assert ondisk_ids == memory_ids
    np.testing.assert_allclose(ondisk_scores, memory_scores, rtol=1e-6)
    # every list probed and enough candidates: the exact top 10 by numpy, scores exact too
    ids, scores = ids_and_scores(g, queries, "ivfpq-ondisk", nprobe=8, k_factor=64)
    exact = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact.tolist())]) >= 0.97
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, np.array(ids), axis=1), rtol=1e-5)


def test_a_killed_build_resumes_from_its_finished_parts_to_the_same_index(sharded_gallery, monkeypatch):
    from lookalike.search import ondisk

    gallery, x = sharded_gallery
    reference = lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)
    shutil.rmtree(gallery.path / "indexes")
    real_add, added = ondisk.add_part, []

    def dies_after_two(*args):
        if len(added) == 2:
            raise KeyboardInterrupt  # what a kill leaves: two parts written, the third not
        added.append(real_add(*args))

    monkeypatch.setattr(ondisk, "add_part", dies_after_two)
    monkeypatch.setattr(ondisk, "LOCAL_WORKERS", 1)  # parts in this process, where the test can stop one
    with pytest.raises(KeyboardInterrupt):
        lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)
    work = gallery.path / "indexes" / ".ivfpq-ondisk.build"
    assert sorted(p.name for p in work.glob("part-*")) == ["part-00000.index", "part-00001.index"]
    assert not (gallery.path / "indexes" / "ivfpq-ondisk").exists()  # nothing under the final name

    monkeypatch.setattr(ondisk, "add_part", real_add)
    resumed = lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)
    assert resumed.parts_added == 1
    queries = x[100:130]
    for a, b in zip(resumed.search(queries, 10)[1], reference.search(queries, 10)[1]):
        assert a.tolist() == b.tolist()


def test_a_part_from_another_gallery_is_refused_by_name(sharded_gallery, tmp_path, monkeypatch):
    from lookalike.search import ondisk

    gallery, _ = sharded_gallery
    other = array_gallery(tmp_path / "other", unit_rows(3000, d=32, seed=9), shard_rows=700)
    monkeypatch.setattr(ondisk, "LOCAL_WORKERS", 1)  # parts in this process, where the test can stop one
    real_add = ondisk.add_part

    def stops(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ondisk, "add_part", stops)
    for g in (gallery, other):  # both builds trained, neither has added a part
        with pytest.raises(KeyboardInterrupt):
            lookalike.build_index(g, "ivfpq-ondisk", nlist=8)
    monkeypatch.setattr(ondisk, "add_part", real_add)
    foreign = tmp_path / "foreign.index"
    real_add(str(other.path / "indexes" / ".ivfpq-ondisk.build" / "trained.index"), unit_rows(10, 32), 0, str(foreign))
    shutil.copy(foreign, gallery.path / "indexes" / ".ivfpq-ondisk.build" / "part-00001.index")
    with pytest.raises(lookalike.LookalikeError, match=r"part-00001\.index is not a part of this build.*delete"):
        lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)


def test_the_cli_builds_and_searches_an_ondisk_index(tiny_gallery, tmp_path, monkeypatch):
    from lookalike.search import ondisk

    monkeypatch.setattr(ondisk, "PART_ROWS", 50)  # 120 rows: three parts
    path = tmp_path / "g"
    shutil.copytree(tiny_gallery, path)
    run_main("index", "--gallery", path, "--method", "ivfpq-ondisk", "--nlist", "4")
    g = lookalike.open_gallery(path)
    query = g.paths[7]
    proc = run_main(
        "search", "--gallery", path, "--image", query, "--method", "ivfpq-ondisk", "--nprobe", "4", "-k", "3"
    )
    assert "ivfpq-ondisk" in proc.stdout
    first = next(line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit())
    assert f" {query} " in first  # the image finds itself first: every list probed, re-ranked exactly


def test_the_id_map_is_checked_and_digested_a_block_at_a_time(monkeypatch):
    """An index's ids (8 GB at 1B rows) are never copied whole to tell a run, or to hash them; the digest is the one
    saved indexes carry (the sorted ids' bytes)."""
    from lookalike.search import rerank, storage

    monkeypatch.setattr(rerank, "STEP_BLOCK", 1000)
    monkeypatch.setattr(storage, "DIGEST_BLOCK", 1000)
    run = np.arange(5, 5 + 4500, dtype=np.int64)
    swapped = run.copy()
    swapped[[1999, 2000]] = swapped[[2000, 1999]]  # across a block boundary
    assert rerank.is_run(run) and not rerank.is_run(swapped) and not rerank.is_run(run[::-1])
    assert rerank.is_run(run[:1]) and not rerank.is_run(run[:0])
    for ids in (run, swapped, run[::3], np.random.default_rng(0).permutation(4500), run[:0]):
        assert storage.database_digest(ids) == hashlib.sha256(np.sort(ids).tobytes()).hexdigest()[:32]
    monkeypatch.undo()
    ids, vectors = np.arange(8_000_000, dtype=np.int64), np.zeros((8_000_000, 1), np.float32)  # 64 MB of ids
    tracemalloc.start()
    try:
        storage.database_digest(ids), rerank.rows_view(vectors, ids)
        assert tracemalloc.get_traced_memory()[1] < ids.nbytes / 4  # a block of steps, not a copy of the ids
    finally:
        tracemalloc.stop()


def test_too_little_disk_is_refused_before_anything_is_written(tiny_collection, sharded_gallery, tmp_path, monkeypatch):
    import shutil as shutil_module

    from lookalike.errors import LookalikeError

    gallery, _ = sharded_gallery
    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: real(path)._replace(free=10_000))
    out = tmp_path / "extracted"
    with pytest.raises(LookalikeError, match=r"not enough free disk for extracting 120 images.*GiB are free"):
        lookalike.extract(tiny_collection, out, "resnet18", "random", image_size=32, backend="torch", precision="fp32")
    assert not out.exists() or not any(out.rglob("*.np*"))
    with pytest.raises(LookalikeError, match=r"not enough free disk for building ivfpq-ondisk over 3000 rows"):
        lookalike.build_index(gallery, "ivfpq-ondisk", nlist=8)
    assert not any((gallery.path / "indexes").rglob("part-*"))


RESIDENT_MEMORY = """
import sys, threading, time
import numpy as np
import lookalike
from lookalike.gallery import DataInfo, GalleryWriter, Rows
from lookalike.gallery.generated import generated_model_block
from lookalike.search import faiss_index, ondisk

ondisk.PART_ROWS, ondisk.LOCAL_WORKERS = 32768, 1
faiss_index.PQ_CODEBOOK_TRAINING = 10_000  # a sample that does not grow with the gallery: smaller than at 10M
out, rows, dim, block = sys.argv[1], 393216, 256, 8192

def anon_bytes():  # resident anonymous memory: what the heap holds, not the mapped files' pages
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]) * 1024

base, peak = anon_bytes(), [0]
def sample():
    while True:
        peak[0] = max(peak[0], anon_bytes() - base)
        time.sleep(0.01)  # often enough: filling even a quarter of the gallery takes this machine over a second
threading.Thread(target=sample, daemon=True).start()

writer = GalleryWriter(out, dim, shard_rows=32768)
rng = np.random.default_rng(0)
for start in range(0, rows, block):
    x = rng.standard_normal((block, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = [f"r{i}" for i in range(start, start + block)]
    writer.add(x, Rows(names, [None] * block, [None] * block, ["train"] * block))
gallery = writer.finish(model=generated_model_block(dim, 0), data=DataInfo(kind="arrays"))
gallery.verify()
lookalike.build_index(gallery, "ivfpq-ondisk", nlist=16)
hits = lookalike.open_gallery(out).search(1234, k=5, method="ivfpq-ondisk", nprobe=16, k_factor=16)
assert hits[0].id == 1234, hits
time.sleep(0.05)
print("phases", peak[0])
whole = np.asarray(gallery.embeddings)  # the whole gallery at once (its shards concatenated): the sampler must see it
time.sleep(0.05)
print("whole", peak[0])
"""


@pytest.mark.slow
def test_writing_verifying_indexing_and_searching_never_hold_the_gallery(tmp_path):
    """A 384 MiB gallery in 12 shards is written, verified, indexed out of core and searched while a sampler reads the
    process's resident anonymous memory (the heap; the mapped shards' pages are file-backed and not counted): its
    peak stays far below the gallery's size, and holding the gallery whole shows up at once."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", RESIDENT_MEMORY, str(tmp_path / "g")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = dict(line.split() for line in proc.stdout.splitlines() if line.startswith(("phases", "whole")))
    gallery_bytes = 393216 * 256 * 4
    assert int(peaks["whole"]) >= gallery_bytes  # the sampler sees a whole gallery when there is one
    assert int(peaks["phases"]) < gallery_bytes // 2, f"peak {int(peaks['phases']) / 2**20:.0f} MiB"
