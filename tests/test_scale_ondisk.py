"""`lookalike scale` beyond RAM (issue 21, item 5): the pool written as shards, the out-of-core path, the memory
sampled per phase, cold latency, and the pieces behind them."""

from __future__ import annotations

import csv
import ctypes
import json
import mmap
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.gallery import ShardedArray, open_gallery
from lookalike.gallery.generated import (
    Segment,
    generated_model_block,
    write_array_gallery,
    write_array_gallery_blocks,
    write_generated_gallery,
)
from lookalike.search import make_method
from lookalike.search.rerank import evict_file
from lookalike.study import scale
from lookalike.study.resident import ResidentSampler, status_bytes
from lookalike.study.scale import size_path, split_methods

from .conftest import manifest_json

SHARD = 400  # rows per shard of the pool: a pool of 3,000 rows is 8 shards


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """2,500 GENERATED rows (32-d, 20 clusters), the last 100 the held-out queries: 2,400 database rows."""
    path = tmp_path_factory.mktemp("scale-ondisk") / "g"
    write_generated_gallery(path, 2500, 32, val=100, seed=0, n_clusters=20)
    return path


def _lookalike(*args) -> int:
    return main([str(a) for a in args])


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scale(gallery: Path, out: Path, *args, shard_rows: int = SHARD) -> int:
    return _lookalike(
        "scale",
        "--gallery",
        gallery,
        "--queries",
        "60",
        "--timing-queries",
        "5",
        "--shard-size",
        shard_rows,
        "--out",
        out,
        "--threads",
        "1",
        *args,
    )


# --- the pool, written block by block ---


def test_blocks_write_the_gallery_that_one_array_writes(tmp_path):
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    labels = np.array([f"c{i % 7}" for i in range(1000)], dtype=object)
    segments = [Segment("gallery", 0, 600, False, "real rows"), Segment("synthetic", 600, 1000, True, "drawn")]
    model = generated_model_block(8, 0)
    whole = write_array_gallery(tmp_path / "a", x, labels, segments=segments, model=model, shard_rows=300)
    cuts = [0, 1, 250, 601, 1000]  # uneven blocks, one across the segment boundary
    blocks = ((x[a:b], labels[a:b]) for a, b in zip(cuts, cuts[1:]))
    parts = write_array_gallery_blocks(tmp_path / "b", 8, blocks, segments=segments, model=model, shard_rows=300)
    assert parts.fingerprint == whole.fingerprint  # the same rows, paths, labels and splits
    assert [s.rows for s in parts.shards] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.asarray(parts.embeddings), x)
    assert parts.paths == whole.paths and parts.paths[600] == "synthetic:synthetic/600"
    assert manifest_json(parts)["data"]["segments"] == manifest_json(whole)["data"]["segments"]
    assert "400 SYNTHETIC rows" in parts.provenance()
    with pytest.raises(LookalikeError, match="the blocks hold 999 rows but the segments cover 1000"):
        write_array_gallery_blocks(
            tmp_path / "c", 8, [(x[:999], labels[:999])], segments=segments, model=model, overwrite=True
        )


def test_a_generated_gallery_written_in_blocks_begins_with_the_blocks_of_a_larger_one(tmp_path, monkeypatch):
    from lookalike.data.vectors import random_cluster_model
    from lookalike.gallery import generated

    monkeypatch.setattr(generated, "GENERATED_BLOCK_ROWS", 300)
    params = {"n_clusters": 20, "rank": 4}
    small = generated.write_generated_gallery_blocks(tmp_path / "s", 600, 16, seed=3, shard_rows=250, **params)
    large = generated.write_generated_gallery_blocks(tmp_path / "l", 1000, 16, seed=3, shard_rows=400, **params)
    assert [s.rows for s in small.shards] == [250, 250, 100] and large.count == 1000
    np.testing.assert_array_equal(np.asarray(small.embeddings), np.asarray(large.embeddings)[:600])  # 2 whole blocks
    assert small.labels.tolist() == large.labels[:600].tolist()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(large.embeddings), axis=1), 1.0, atol=1e-5)
    assert not large.is_real and "GENERATED" in large.provenance()
    assert set(large.labels) <= set(random_cluster_model(16, 3, **params).labels)


# --- which path a size takes, and what it measures there ---


def test_a_size_goes_out_of_core_when_its_rows_would_not_fit_or_when_forced():
    gib = 2**30
    assert size_path(1_000_000, 512, 16 * gib, forced=False)[0] is False  # 2 GB of rows, × 3 < 16 GiB
    out, why = size_path(10_000_000, 512, 16 * gib, forced=False)
    assert out and why == "its rows take 19.1 GiB, × 3 against 16.0 GiB available"
    assert size_path(1000, 8, 16 * gib, forced=True) == (True, "--out-of-core")
    assert split_methods(("brute", "flat", "ivf"), False) == (("brute", "flat", "ivf"), {})
    measured, skipped = split_methods(("brute", "flat", "ivf"), True)
    assert measured == ("ivfpq-ondisk",) and set(skipped) == {"brute", "flat", "ivf"}
    assert split_methods(("flat", "ivfpq-ondisk"), True)[0] == ("ivfpq-ondisk",)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """72,000 GENERATED rows (16-d, 50 clusters), the last 1,000 held out: a pool of 73,000 is larger than the sample
    ivfpq-ondisk trains on (65,536 rows or 256 per list), so no step may hold all of it."""
    path = tmp_path_factory.mktemp("scale-ondisk-large") / "g"
    write_generated_gallery(path, 72_000, 16, val=1000, seed=0, n_clusters=50, rank=6)
    return path


@pytest.mark.slow
def test_out_of_core_never_holds_the_pool_and_reports_memory_disk_and_cold_latency(large, tmp_path, monkeypatch):
    """--out-of-core on a pool of 8 shards: nothing asks numpy for more rows than one shard at once (the guarded
    `__array__`), the in-memory copy is never made, and the table has the out-of-core figures."""
    shard = 10_000
    real_array = ShardedArray.__array__

    def one_shard_at_most(self, dtype=None, copy=None):
        if len(self) > shard:
            raise AssertionError(f"np.asarray of {len(self)} rows, more than one shard")
        return real_array(self, dtype, copy)

    def in_memory(vectors, size):
        raise AssertionError(f"the in-memory path copied {size} rows")

    monkeypatch.setattr(ShardedArray, "__array__", one_shard_at_most)
    monkeypatch.setattr(scale, "rows_in_memory", in_memory)
    with pytest.raises(AssertionError, match="more than one shard"):  # the guard bites
        np.asarray(open_gallery(large).embeddings.slice(0, shard + 1))
    with pytest.raises(AssertionError, match="the in-memory path"):  # … and so does the other, without the option
        _scale(large, tmp_path / "in-memory", "--sizes", "3k", "--methods", "flat")
    out, work = tmp_path / "scale", tmp_path / "work"
    args = ("--sizes", "5k,73k", "--out-of-core", "--work", work, "--keep-work")
    assert _scale(large, out, *args, shard_rows=shard) == 0
    monkeypatch.undo()
    rows = _csv(out / "scale.csv")
    assert [(r["size"], r["method"], r["out_of_core"]) for r in rows] == [
        ("5000", "ivfpq-ondisk", "True"),
        ("73000", "ivfpq-ondisk", "True"),
    ]
    for r in rows:
        assert int(r["disk_bytes"]) > 0 and int(r["index_bytes"]) == int(r["memory_bytes"]) + int(r["disk_bytes"])
        assert float(r["search_cold_single_ms"]) > 0 and float(r["build_seconds"]) > 0
        for phase in ("build", "search"):
            assert int(r[f"{phase}_peak_anon_bytes"]) > 0 and int(r[f"{phase}_peak_file_bytes"]) > 0
        assert 0 < float(r["recall_at_10"]) <= 1
        assert "GENERATED" in r["provenance"]
    result = json.loads((out / "scale.json").read_text())
    assert [s["out_of_core"] for s in result["sizes"]] == [True, True]
    assert set(result["sizes"][0]["skipped"]) == {"brute", "flat", "ivf"}
    assert result["sizes"][1]["exact_memory"]["anon_bytes"] > 0
    assert result["pool"]["rows"] == 73_000 and result["pool"]["shards"] == 8 and result["pool"]["kept"]
    markdown = (out / "scale.md").read_text()
    assert "| 73k ⚠ | out of core | ivfpq-ondisk |" in markdown and "single ms cold" in markdown
    assert "brute skipped (it holds every row in memory)" in markdown
    # the pool kept on disk: the gallery's database rows in seeded order, then SYNTHETIC rows, labelled as such
    gallery = open_gallery(large)
    pool = open_gallery(work / "pool")
    assert len(pool.shards) == 8 and not pool.is_real and "2000 SYNTHETIC rows" in pool.provenance()
    order = np.random.default_rng(0).permutation(gallery.partition(max_queries=60).database_ids)
    assert len(order) == 71_000
    np.testing.assert_array_equal(pool.embeddings[:71_000], gallery.embeddings[order])
    assert pool.labels[:71_000].tolist() == gallery.labels[order].tolist()
    synthetic = pool.embeddings[71_000:]
    np.testing.assert_allclose(np.linalg.norm(synthetic, axis=1), 1.0, atol=1e-5)
    assert set(pool.labels[71_000:]) <= set(gallery.labels)
    assert [s["synthetic"] for s in manifest_json(pool)["data"]["segments"]] == [True, True]  # generated, then drawn


@pytest.mark.slow
def test_a_size_too_big_for_memory_takes_the_out_of_core_path_and_the_work_folder_goes(
    generated, tmp_path, monkeypatch
):
    d = open_gallery(generated).dim
    # memory for 1,500 rows × 3: the 1k size fits, the 3k size does not
    monkeypatch.setattr(scale, "available_memory_bytes", lambda: 1500 * d * 4 * scale.IN_MEMORY_FACTOR)
    out = tmp_path / "scale"
    assert _scale(generated, out, "--sizes", "1k,3k", "--methods", "flat") == 0
    rows = _csv(out / "scale.csv")
    assert [(r["size"], r["method"], r["out_of_core"]) for r in rows] == [
        ("1000", "flat", "False"),
        ("3000", "ivfpq-ondisk", "True"),
    ]
    assert rows[0]["search_cold_single_ms"] == "" and int(rows[0]["disk_bytes"]) == 0
    assert float(rows[0]["recall_at_10"]) == pytest.approx(1.0)  # flat is exact: the streamed truth agrees
    result = json.loads((out / "scale.json").read_text())
    assert result["sizes"][1]["skipped"] == {"flat": "holds every row in memory"}
    assert result["sizes"][1]["reason"] == "its rows take 0.4 MiB, × 3 against 0.5 MiB available"
    assert result["sizes"][0]["reason"] == "its rows take 0.1 MiB, × 3 against 0.5 MiB available"
    assert sorted(p.name for p in out.iterdir()) == ["scale.csv", "scale.json", "scale.md", "scale.png"]


def test_scale_refuses_to_start_without_the_disk_for_the_pool(generated, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(scale.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))  # 1 kB free
    out = tmp_path / "o"
    assert _scale(generated, out, "--sizes", "3k", "--out-of-core") == 2
    err = capsys.readouterr().err
    assert "scale needs about 0.7 MiB free" in err and "the pool of 3k rows as shards: 0.5 MiB" in err, err
    assert "0.0 MiB are free there" in err and "--work" in err
    assert not out.exists()  # nothing written, no folder left behind


# --- the pieces: memory sampling and cold caches ---


def test_the_sampler_sees_anonymous_and_file_backed_memory_apart(tmp_path):
    path = tmp_path / "rows.bin"
    path.write_bytes(os.urandom(64 * 2**20))
    before_anon, before_file = status_bytes()
    with ResidentSampler(interval=0.01) as anon_phase:
        # 128 MiB of fresh anonymous pages, each touched: a new mapping, so none of it can be heap pages this
        # long-lived process already holds (a numpy array may reuse those and raise RssAnon by less)
        block = mmap.mmap(-1, 128 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: RssAnon, not Shmem
        for page in range(0, len(block), mmap.PAGESIZE):
            block[page] = 1
        time.sleep(0.5)  # held long enough to be sampled, even on a loaded machine
        block.close()
    with ResidentSampler(interval=0.01) as file_phase:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            assert sum(mapped[i] for i in range(0, len(mapped), mmap.PAGESIZE)) >= 0  # touch every page
            time.sleep(0.5)
    assert anon_phase.peak.anon_bytes >= before_anon + 120 * 2**20
    assert file_phase.peak.file_bytes >= before_file + 60 * 2**20
    assert file_phase.peak.anon_bytes < before_anon + 60 * 2**20  # mapped file pages are not anonymous


@pytest.mark.slow
def test_the_sampler_counts_a_worker_process_apart():
    code = "import time; x = b'x' * (96 * 2**20); time.sleep(1.5)"  # 96 MiB, every page written
    with ResidentSampler(interval=0.05) as phase:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert phase.peak.workers_anon_bytes >= 90 * 2**20
    assert phase.peak.anon_bytes < status_bytes()[0] + 90 * 2**20


def test_a_fork_that_has_not_run_its_program_is_not_a_worker():
    """A forked child shares the parent's pages and /proc counts them as its own: not a worker's memory."""
    block = np.ones(96 * 2**20 // 8)  # 96 MiB the child would seem to hold
    with ResidentSampler(interval=0.02) as phase:
        pid = os.fork()
        if pid == 0:  # the child: no program to run, it just waits a while (as a subprocess before exec)
            time.sleep(0.4)
            os._exit(0)
        os.waitpid(pid, 0)
    del block
    assert phase.peak.workers_anon_bytes == 0


def _resident_pages(path: Path) -> int:
    """Pages of the file in the page cache: mincore over a mapping of our own."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    pages = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert libc.mincore(view.ctypes.data, size, pages) == 0, ctypes.get_errno()
        del view
    return sum(page & 1 for page in pages)


def test_a_cold_search_starts_with_the_lists_and_the_shards_out_of_the_page_cache(tmp_path):
    control = tmp_path / "control.bin"
    control.write_bytes(os.urandom(2**20))
    evict_file(control)
    if _resident_pages(control):
        pytest.skip("this filesystem keeps the pages fadvise asks it to drop")
    x = np.random.default_rng(1).standard_normal((20_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gallery = write_array_gallery(
        tmp_path / "g",
        x,
        segments=[Segment("generated", 0, len(x), True, "test rows")],
        model=generated_model_block(32, 0),
        shard_rows=5000,
    )
    method = make_method("ivfpq-ondisk", len(x), 32, nlist=16)
    method.workdir = tmp_path / "work"
    method.build(gallery.embeddings)
    method.search(x[:100], 10, {"nprobe": 16})
    files = [gallery.path / s.embeddings for s in gallery.shards] + [method._lists]
    assert len(files) == 5 and all(_resident_pages(f) > 0 for f in files)
    assert method.drop_page_cache()
    assert [_resident_pages(f) for f in files] == [0] * 5
    assert method.cold_single_ms(x[:3], 10) > 0
