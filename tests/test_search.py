"""Search methods through their one interface: exactness, the l2/ip identity, round trips, mismatches."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import IndexMismatchError, LookalikeError
from lookalike.gallery import open_gallery
from lookalike.search import BruteForce, FaissIndex, get_method, load_method, make_method, save_method

from .conftest import manifest_json


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32))
    base = unit(np.repeat(centres, 100, axis=0) + 0.6 * rng.standard_normal((2000, 32)))
    queries = unit(centres[rng.integers(0, 20, 50)] + 0.6 * rng.standard_normal((50, 32)))
    ids = np.arange(10_000, 12_000)  # gallery ids need not be positions
    return base, queries, ids


def built(name, base, ids, metric="ip", **kw):
    method = make_method(name, len(base), base.shape[1], metric, **kw)
    method.build(base, ids)
    return method


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_brute_and_flat_return_the_same_top_k(data, backend):
    base, queries, ids = data
    bs, bi = built("brute", base, ids, backend=backend).search(queries, 10)
    fs, fi = built("flat", base, ids).search(queries, 10)
    np.testing.assert_array_equal(bi, fi)
    np.testing.assert_allclose(bs, fs, atol=1e-5)
    assert bi.min() >= 10_000
    assert np.all(np.diff(bs, axis=1) <= 1e-6)  # best first


def test_brute_matches_a_full_sort_with_tiny_blocks(data):
    base, queries, ids = data
    method = BruteForce("brute", "ip", backend="numpy", score_block_bytes=4 * len(base) * 3)  # 3 queries per block
    method.build(base, ids)
    _, found = method.search(queries, 7)
    expected = ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :7]]
    np.testing.assert_array_equal(found, expected)


def test_ivf_with_nprobe_equal_to_nlist_is_exact(data):
    base, queries, ids = data
    _, exact = built("flat", base, ids).search(queries, 10)
    ivf = built("ivf", base, ids)
    nlist = ivf.params()["nlist"]
    assert nlist == round(np.sqrt(len(base)))
    _, found = ivf.search(queries, 10, {"nprobe": nlist})
    np.testing.assert_array_equal(found, exact)
    assert ivf.params()["nprobe"] != nlist  # per-call params do not stick


@pytest.mark.parametrize("name", ["brute", "flat", "ivf"])
def test_l2_scores_are_two_minus_two_cosine_with_the_same_ranking(data, name):
    base, queries, ids = data
    params = {"nprobe": 45} if name == "ivf" else None
    ip_scores, ip_ids = built(name, base, ids, "ip").search(queries, 10, params)
    l2_scores, l2_ids = built(name, base, ids, "l2").search(queries, 10, params)
    np.testing.assert_array_equal(ip_ids, l2_ids)
    np.testing.assert_allclose(l2_scores, 2 - 2 * ip_scores, atol=1e-4)
    direct = ((queries[:, None, :] - base[np.searchsorted(ids, l2_ids)]) ** 2).sum(-1)
    np.testing.assert_allclose(l2_scores, direct, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brute", "flat", "ivf", "hnsw", "hnsw-sq8", "hnsw16-fp16", "sq8", "IVF16,PQ8np"])
def test_save_load_round_trip(tmp_path, data, name):
    base, queries, ids = data
    method = built(name, base, ids)
    method.save(tmp_path / name)
    cls = BruteForce if name == "brute" else FaissIndex
    vectors = np.zeros((12_000, base.shape[1]), np.float32)
    vectors[ids] = base
    loaded = cls.load(tmp_path / name, vectors)
    for a, b in zip(method.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    assert loaded.params() == method.params()
    assert loaded.memory_bytes() == method.memory_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name, m", [("hnsw-sq8", 32), ("hnsw16-sq8", 16)])
def test_a_graph_over_8_bit_codes_finds_the_neighbours_in_a_quarter_of_the_bytes(data, name, m):
    base, queries, ids = data
    method = built(name, base, ids)
    assert method.params()["factory"] == f"HNSW{m}_SQ8"
    exact = ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :10]]
    for ef, floor in ((16, 0.7), (256, 0.95)):
        _, found = method.search(queries, 10, {"efSearch": ef})
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        assert recall >= floor, (ef, recall)
    _, one = method.search(queries[0], 10, {"efSearch": 256})  # one query: the single-thread path
    np.testing.assert_array_equal(one[0], found[0])
    # the same graph over floats holds 4 bytes per dimension where this holds 1: three quarters of the vectors' bytes
    # saved
    assert built(f"HNSW{m},Flat", base, ids).memory_bytes() - method.memory_bytes() >= 0.7 * base.nbytes


@pytest.mark.slow
def test_a_graph_over_16_bit_floats_is_built_carefully_and_finds_what_the_float_graph_finds(data, tmp_path):
    base, queries, ids = data
    method = built("hnsw16-fp16", base, ids)
    assert method.params()["factory"] == "HNSW16_SQfp16" and method.index.hnsw.efConstruction == 100
    exact = ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :10]]
    _, found = method.search(queries, 10, {"efSearch": 256})
    # fp16 costs ~1e-3 per score: no recall cap
    assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]) >= 0.97
    # half the bytes of the same graph over floats, two per dimension
    assert built("HNSW16,Flat", base, ids).memory_bytes() - method.memory_bytes() >= 0.45 * base.nbytes
    method.save(tmp_path / "g")  # a rebuild after an update keeps the build breadth
    vectors = np.zeros((12_000, base.shape[1]), np.float32)
    vectors[ids] = base
    assert FaissIndex.load(tmp_path / "g", vectors).fresh().ef_construction == 100


def test_memory_is_measured_from_the_real_index(data):
    base, _, ids = data
    raw = base.nbytes
    assert built("flat", base, ids).memory_bytes() >= raw
    assert built("sq8", base, ids).memory_bytes() < raw / 3
    assert built("brute", base, ids).memory_bytes() == raw + ids.nbytes


def test_bad_parameters_are_clear_errors(data):
    base, queries, ids = data
    ivf = built("ivf", base, ids)
    with pytest.raises(LookalikeError, match="nprobe=0 is out of range"):
        ivf.search(queries, 5, {"nprobe": 0})
    with pytest.raises(LookalikeError, match="no search parameter 'efSearch'"):
        ivf.set_params(efSearch=3)
    with pytest.raises(LookalikeError, match="unknown method"):
        make_method("kdtree", 10, 4)
    with pytest.raises(LookalikeError, match="queries are 16-d"):
        built("flat", base, ids).search(queries[:, :16], 5)


def test_saved_index_of_another_gallery_is_refused(tiny_gallery, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_gallery, copy)
    gallery = open_gallery(copy)
    save_method(gallery, get_method(gallery, "flat")[0])
    assert isinstance(load_method(gallery, "flat"), FaissIndex)
    manifest = manifest_json(gallery) | {"fingerprint": "another"}
    (copy / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(IndexMismatchError, match="rebuild it with `lookalike index"):
        load_method(open_gallery(copy), "flat")


def test_saved_index_over_other_database_rows_is_refused_or_rebuilt(tmp_path):
    """No val split: `bench --queries 10` holds out another sample than `index` did; the saved index holds some of those
    queries."""
    import json

    from lookalike.data.vectors import make_clustered_embeddings
    from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
    from lookalike.study.bench import run_bench

    x, labels = make_clustered_embeddings(300, 32, n_clusters=6, rank=4, seed=0)
    gallery = write_array_gallery(
        tmp_path / "g",
        x,
        labels,
        ["train"] * 300,
        segments=[Segment("generated", 0, 300, True, "test rows")],
        model=generated_model_block(32, 0),
    )
    default = gallery.partition()
    method = make_method("flat", len(default.database_ids), 32)
    method.build(x[default.database_ids], default.database_ids)
    folder = save_method(gallery, method)
    assert json.loads((folder / "method.json").read_text())["database_digest"]
    assert load_method(gallery, "flat", database_ids=default.database_ids).ntotal == len(default.database_ids)
    other = gallery.partition(max_queries=10)
    # held-out rows are chosen by path hash, so a smaller sample is nested in the default one: the saved
    # index then misses database rows of `other` (and another seed would put some of its queries in it)
    assert np.isin(default.query_ids, other.database_ids).any()
    assert np.isin(gallery.partition(seed=1).query_ids, default.database_ids).any()
    with pytest.raises(IndexMismatchError, match="rebuild it with `lookalike index"):
        load_method(gallery, "flat", database_ids=other.database_ids)
    rebuilt, built_now = get_method(gallery, "flat", database_ids=other.database_ids)
    assert built_now and set(rebuilt.ids.tolist()) == set(other.database_ids.tolist())
    # bench with the other sample: exact search against an independent full sort over the right rows, no query finds
    # itself
    result = run_bench(gallery, methods=("flat",), k=5, max_queries=10)
    queries = x[other.query_ids]
    truth = other.database_ids[np.argsort(-(queries @ x[other.database_ids].T), axis=1, kind="stable")[:, :5]]
    _, found = rebuilt.search(queries, 5)
    assert not np.isin(found, other.query_ids).any()
    assert np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth)]) == pytest.approx(1.0)
    assert result.methods[0].built_now and result.methods[0].recall == pytest.approx(1.0)
    # a saved method that cannot be rebuilt by name (tune's) is refused with the message
    method.name = "tuned"
    save_method(gallery, method)
    with pytest.raises(IndexMismatchError, match="rebuild"):
        get_method(gallery, "tuned", database_ids=other.database_ids)
