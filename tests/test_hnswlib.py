"""hnswlib's HNSW behind SearchMethod: exact at a wide search, numpy-checked scores, per-call efSearch, missing results,
save/load, updates."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lookalike.gallery import open_gallery
from lookalike.search import (
    HnswlibHnsw,
    get_method,
    load_method,
    make_method,
    save_method,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((3000, 32)))
    q = unit(x[:40] + 0.1 * rng.standard_normal((40, 32)))
    return x, q


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("name, m, ef_construction", [("hnswlib", 32, 40), ("hnswlib-m16", 16, 100)])
def test_hnswlib_matches_numpy_at_a_wide_search(data, name, m, ef_construction, metric):
    x, q = data
    method = make_method(name, len(x), 32, metric)
    assert isinstance(method, HnswlibHnsw)
    method.build(x, np.arange(1000, 4000))  # ids other than row positions
    assert (
        method.params() == {"M": m, "efConstruction": ef_construction, "efSearch": 64}
        and method.ntotal == 3000
        and method.dim == 32
    )
    scores, ids = method.search(q, 10, {"efSearch": 512})
    want = np.argsort(-(q @ x.T), axis=1)[:, :10] + 1000  # l2 on unit vectors ranks as ip does
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.99
    rows = x[ids - 1000]
    if metric == "ip":  # the reported score is that row's inner product, best first
        np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, rows), atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()
    else:  # squared L2 distances, nearest first
        np.testing.assert_allclose(scores, ((q[:, None, :] - rows) ** 2).sum(-1), atol=1e-5)
        assert (np.diff(scores, axis=1) >= -1e-6).all()
    single = method.search(q[0], 10, {"efSearch": 512})  # one vector, 1-d
    np.testing.assert_array_equal(single[1][0], ids[0])
    assert single[1].dtype == np.int64 and single[0].dtype == np.float32


def test_per_call_efsearch_does_not_leak_and_is_checked(data):
    x, q = data
    method = make_method("hnswlib-m16", len(x), 32)
    method.build(x)
    before = method.search(q, 10)
    narrow = method.search(q, 10, {"efSearch": 1})[1]
    assert method.params()["efSearch"] == 64 and method.index.ef == 64  # the per-call value did not stick
    for a, b in zip(method.search(q, 10), before):
        np.testing.assert_array_equal(a, b)
    # ef 1 is a different (worse) search
    assert narrow.shape == before[1].shape and not np.array_equal(narrow, before[1])
    with pytest.raises(Exception, match="efSearch"):
        method.search(q, 10, {"nprobe": 4})
    with pytest.raises(Exception, match="out of range"):
        method.search(q, 10, {"efSearch": 0})
    with pytest.raises(Exception, match="k must be at least 1"):
        method.search(q, 0)
    with pytest.raises(Exception, match="queries are 16-d"):
        method.search(q[:, :16], 10)
    assert method.index.ef == 64
    method.set_params(efSearch=128)
    assert method.params()["efSearch"] == 128 and method.index.ef == 128

    # concurrent calls with and without a per-call efSearch each get their own setting
    wide, default = method.search(q, 10, {"efSearch": 512})[1], method.search(q, 10)[1]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda i: (i, method.search(q[i % 40], 10, {"efSearch": 512} if i % 2 else None)[1][0]), range(160)
            )
        )
    for i, found in answers:
        np.testing.assert_array_equal(found, (wide if i % 2 else default)[i % 40])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_k_larger_than_the_gallery_gives_minus_one(data, metric):
    x, q = data
    method = make_method("hnswlib", 5, 32, metric)
    method.build(x[:5], np.arange(10, 15))
    scores, ids = method.search(q[:3], 8)
    assert ids.shape == (3, 8) and (ids[:, 5:] == -1).all() and sorted(ids[0, :5]) == [10, 11, 12, 13, 14]
    assert np.isinf(scores[:, 5:]).all() and (scores[:, 5:] < 0).all() == (metric == "ip")
    empty = make_method("hnswlib", 0, 32, metric)
    empty.build(np.zeros((0, 32), np.float32))
    assert (empty.search(q[:2], 3)[1] == -1).all()


class Fragmented:
    """An hnswlib index that, like a fragmented graph, reaches only 3 rows: it raises as hnswlib does for more."""

    def __init__(self, index):
        self.index = index

    def knn_query(self, queries, k, num_threads=1):
        if k > 3:
            raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")
        return self.index.knn_query(queries, k, num_threads=num_threads)

    def __getattr__(self, name):
        return getattr(self.index, name)


def test_fewer_reachable_than_k_are_padded_not_raised(data):
    x, q = data
    method = make_method("hnswlib", len(x), 32)
    method.build(x)
    top3 = method.search(q[:4], 3)
    method.index = Fragmented(method.index)
    scores, ids = method.search(q[:4], 5)
    np.testing.assert_array_equal(ids[:, :3], top3[1])
    np.testing.assert_allclose(scores[:, :3], top3[0], atol=1e-6)
    assert (ids[:, 3:] == -1).all() and (scores[:, 3:] == -np.inf).all()


def test_hnswlib_follows_an_update_and_rebuilds_after_removals(data):
    x, _ = data
    method = make_method("hnswlib-m16", 2000, 32)
    method.build(x[:2000], np.arange(2000))
    keep = np.ones(2000, dtype=bool)
    assert method.apply_update(keep, x[2000:])  # additions join the graph in place
    method.ids = np.arange(3000)
    assert method.ntotal == 3000 and method.index.element_count == 3000
    found = method.search(x[2500:2510], 1, {"efSearch": 256})[1][:, 0]
    np.testing.assert_array_equal(found, np.arange(2500, 2510))  # each new row finds itself
    keep[5] = False
    assert not method.apply_update(keep, x[:0])  # a graph cannot forget a node: the caller rebuilds
    rebuilt = method.fresh()
    assert isinstance(rebuilt, HnswlibHnsw) and rebuilt.index is None and rebuilt.params() == method.params()


def test_hnswlib_saves_and_loads_in_a_gallery(tiny_gallery, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(tiny_gallery, copy)
    gallery = open_gallery(copy)
    for name in ("hnswlib", "hnswlib-m16"):
        built = get_method(gallery, name)[0]
        built.set_params(efSearch=32)
        save_method(gallery, built)
        loaded = load_method(gallery, name)
        assert (
            type(loaded) is HnswlibHnsw
            and loaded.params() == built.params()
            and loaded.memory_bytes() == built.memory_bytes() > 0
        )
        queries = np.asarray(gallery.embeddings)[gallery.partition().query_ids]
        for a, b in zip(loaded.search(queries, 5), built.search(queries, 5)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            loaded.search(queries, 5, {"efSearch": 200})[1], built.search(queries, 5, {"efSearch": 200})[1]
        )
