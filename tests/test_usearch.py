"""usearch's HNSW behind SearchMethod: exact at a wide search, per-call efSearch, save/load, numpy-checked scores."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lookalike.gallery import open_gallery
from lookalike.search import get_method, load_method, make_method, save_method


@pytest.mark.parametrize("name", ["usearch-f16", "usearch-i8"])
def test_usearch_matches_numpy_at_a_wide_search(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:40] + 0.1 * rng.standard_normal((40, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    method = make_method(name, len(x), 32)
    method.build(x, np.arange(1000, 4000))  # ids other than row positions
    scores, ids = method.search(q, 10, {"efSearch": 512})
    want = np.argsort(-(q @ x.T), axis=1)[:, :10] + 1000
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= (0.99 if name == "usearch-f16" else 0.9)
    exact_scores = np.einsum("qd,qkd->qk", q, x[ids - 1000])  # the reported score is the inner product of that row
    np.testing.assert_allclose(scores, exact_scores, atol=0.02 if name == "usearch-i8" else 2e-3)
    narrow = method.search(q, 10, {"efSearch": 10})[1]
    assert method.params()["efSearch"] == 64  # the per-call value did not stick
    single = method.search(q[0], 10, {"efSearch": 512})[1]
    np.testing.assert_array_equal(single[0], ids[0])
    with pytest.raises(Exception, match="efSearch"):
        method.search(q, 10, {"nprobe": 4})
    assert narrow.shape == ids.shape


def test_usearch_saves_and_loads_in_a_gallery(tiny_gallery, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(tiny_gallery, copy)
    gallery = open_gallery(copy)
    built = get_method(gallery, "usearch-f16")[0]
    save_method(gallery, built)
    loaded = load_method(gallery, "usearch-f16")
    queries = np.asarray(gallery.embeddings)[gallery.partition().query_ids]
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], built.search(queries, 5)[1])
    assert loaded.memory_bytes() > 0 and loaded.params()["dtype"] == "f16"
