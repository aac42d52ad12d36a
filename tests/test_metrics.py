"""The one metrics module against cases worked out by hand: recall, label precision, mAP, ground truth."""

from __future__ import annotations

import math
import shutil
import tracemalloc

import numpy as np
import pytest

from lookalike.gallery import open_gallery
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
from lookalike.study.metrics import (
    accuracy,
    average_precision_at_k,
    exact_neighbours,
    exact_top_k,
    ground_truth,
    precision_at_k,
    recall_at_k,
    recall_per_query,
    streamed_top_k,
)

GALLERY_LABELS = np.array(["a", "a", "b", "b", None], dtype=object)


def test_recall_counts_the_overlap_with_the_exact_top_k():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    truth = np.array([[1, 2, 9], [6, 5, 4]])  # order within the top k does not matter
    np.testing.assert_allclose(recall_per_query(found, truth, 3), [2 / 3, 1.0])
    assert recall_at_k(found, truth, 3) == pytest.approx(5 / 6)
    assert recall_at_k(found, truth, 1) == pytest.approx(0.5)  # only the first column of each


def test_recall_ignores_minus_one_padding_on_both_sides():
    # an approximate method that found only 2 of 3 results pads with -1; -1 never matches -1
    found = np.array([[7, 8, -1]])
    assert recall_at_k(found, np.array([[7, 8, 9]]), 3) == pytest.approx(2 / 3)
    # a database of 2 vectors: exact search itself returns 2 results, and finding both is recall 1
    assert recall_at_k(np.array([[8, 7, -1]]), np.array([[7, 8, -1]]), 3) == 1.0
    assert recall_at_k(np.array([[-1, -1, -1]]), np.array([[7, 8, -1]]), 3) == 0.0


def test_label_precision_at_k():
    found = np.array([[0, 1, 2], [2, -1, -1]])
    # query "a": results a, a, b → 2/3; query "b": results b, missing, missing → 1/3
    assert precision_at_k(found, np.array(["a", "b"], dtype=object), GALLERY_LABELS, 3) == pytest.approx(0.5)
    assert precision_at_k(found, np.array(["a", "b"], dtype=object), GALLERY_LABELS, 1) == pytest.approx(1.0)


def test_unlabelled_queries_are_left_out_of_label_metrics():
    found = np.array([[0, 1, 2], [4, 3, 2]])
    labels = np.array(["a", None], dtype=object)
    assert precision_at_k(found, labels, GALLERY_LABELS, 3) == pytest.approx(2 / 3)  # not (2/3 + 0) / 2
    assert average_precision_at_k(found, labels, GALLERY_LABELS, 3) == pytest.approx(1.0)
    none = np.array([None, None], dtype=object)
    assert math.isnan(precision_at_k(found, none, GALLERY_LABELS, 3))
    assert math.isnan(average_precision_at_k(found, none, GALLERY_LABELS, 3))
    # an unlabelled gallery image never counts as relevant, even for an unlabelled query
    assert precision_at_k(np.array([[4]]), np.array(["a"], dtype=object), GALLERY_LABELS, 1) == 0.0


def test_average_precision_at_k():
    labels = np.array(["a", "a", "b"], dtype=object)
    # query "a", results a, a, b: relevance [1, 1, 0] → (1/1 + 2/2) / 2 = 1
    # query "a", results b, a, a: relevance [0, 1, 1] → (1/2 + 2/3) / 2 = 7/12
    # query "b", results a, a, unlabelled: nothing relevant → 0
    found = np.array([[0, 1, 2], [2, 0, 1], [0, 1, 4]])
    assert average_precision_at_k(found, labels, GALLERY_LABELS, 3) == pytest.approx((1 + 7 / 12 + 0) / 3)
    # -1 padding is simply not relevant: relevance [1, 0, 0], and 2 "b" items exist → 1 / min(3, 2) = 1/2
    assert average_precision_at_k(
        np.array([[2, -1, -1]]), np.array(["b"], dtype=object), GALLERY_LABELS, 3
    ) == pytest.approx(0.5)


def test_average_precision_divides_by_the_relevant_items_in_the_database_not_the_hits_found():
    # ten "a" items exist; one hit at rank 1 of k = 5 finds 1 of the min(5, 10) = 5 findable → AP = 1/5, not 1
    database = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    found = np.array([[0, 10, 11, 12, 13]])
    assert average_precision_at_k(found, np.array(["a"], dtype=object), database, 5) == pytest.approx(1 / 5)
    # hits at ranks 2 and 4: (1/2 + 2/4) / 5 = 0.2
    found = np.array([[10, 0, 11, 1, 12]])
    assert average_precision_at_k(found, np.array(["a"], dtype=object), database, 5) == pytest.approx(0.2)
    # only 2 "c" items exist: both found at ranks 1 and 2 is a perfect score at k = 5
    database[[18, 19]] = "c"
    assert average_precision_at_k(
        np.array([[18, 19, 0, 1, 2]]), np.array(["c"], dtype=object), database, 5
    ) == pytest.approx(1.0)
    # the count is over the database rows only when they are given: rows 0–4 searched hold 5 "a", so ideal = min(5, 5)
    found = np.array([[0, 1, 2, 3, 4]])
    assert average_precision_at_k(found, np.array(["a"], dtype=object), database, 5, database[:5]) == pytest.approx(1.0)
    assert average_precision_at_k(
        np.array([[0, 10, 11, 12, 13]]), np.array(["a"], dtype=object), database, 5, database[[0, 10, 11, 12, 13]]
    ) == pytest.approx(1.0)


def test_accuracy_bundles_the_three_figures():
    found = np.array([[0, 1, 2]])
    acc = accuracy(found, np.array([[0, 1, 3]]), np.array(["a"], dtype=object), GALLERY_LABELS, 3)
    assert (acc.recall, acc.precision, acc.map) == pytest.approx((2 / 3, 2 / 3, 1.0))
    # with the searched rows given, mAP counts relevant items among them only: database {0, 2, 3, 4} holds one "a"
    found = np.array([[0, 2, 3]])
    assert accuracy(found, found, np.array(["a"], dtype=object), GALLERY_LABELS, 3).map == pytest.approx(1 / 2)
    assert accuracy(
        found, found, np.array(["a"], dtype=object), GALLERY_LABELS, 3, np.array([0, 2, 3, 4])
    ).map == pytest.approx(1.0)


def test_ground_truth_is_exact_cached_and_never_the_query_itself(tiny_gallery, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(tiny_gallery, copy)
    shutil.rmtree(copy / "cache", ignore_errors=True)  # other tests may have benched the shared gallery
    gallery = open_gallery(copy)
    partition = gallery.partition()
    truth = ground_truth(gallery, partition, 5)
    x = np.asarray(gallery.embeddings)
    scores = x[partition.query_ids] @ x[partition.database_ids].T
    expected = partition.database_ids[np.argsort(-scores, axis=1, kind="stable")[:, :5]]
    assert recall_at_k(truth, expected, 5) > 0.99  # ties may swap within float noise, nothing more
    assert not np.isin(truth, partition.query_ids).any()
    cached = list((copy / "cache").glob("groundtruth-*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros_like(truth))  # a second call reads the cache, not a recomputation
    assert (ground_truth(gallery, partition, 5) == 0).all()
    # other query vectors get their own cache entry
    other = exact_neighbours(gallery, partition.database_ids, x[partition.query_ids[:3]] * -1, 5)
    assert other.shape == (3, 5) and len(list((copy / "cache").glob("groundtruth-*.npy"))) == 2


# --- exact ground truth streamed over the shards ---


def _integer_gallery(path, n: int = 3000, d: int = 8, shard_rows: int = 700):
    """Small-integer rows: every score is an exact integer in float32 whatever the order of the sums, so the streamed
    result must equal a full sort exactly, and ties (many, by construction) must go to the lower id."""
    x = np.random.default_rng(5).integers(-2, 3, size=(n, d)).astype(np.float32)
    gallery = write_array_gallery(
        path,
        x,
        splits=["val" if i % 7 == 0 else "train" for i in range(n)],
        segments=[Segment("generated", 0, n, True, "integer test rows")],
        model=generated_model_block(d, 0),
        shard_rows=shard_rows,
    )
    return gallery, x


def _full_sort(x: np.ndarray, queries: np.ndarray, database_ids: np.ndarray, k: int, metric: str) -> np.ndarray:
    """The independent reference: every score of the database rows (ascending ids), one stable argsort."""
    rows = x[database_ids]
    keys = -(queries @ rows.T) if metric == "ip" else ((queries[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    top = database_ids[np.argsort(keys, axis=1, kind="stable")[:, :k]]
    return np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)  # fewer rows than k: −1, as exact search


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_streamed_ground_truth_equals_a_full_sort_with_ties_to_the_lower_id(tmp_path, metric):
    gallery, x = _integer_gallery(tmp_path / "g")
    assert len(gallery.shards) == 5
    queries = np.random.default_rng(6).integers(-2, 3, size=(40, x.shape[1])).astype(np.float32)
    heldout = np.sort(gallery.partition().database_ids)
    everything = np.arange(len(x))
    for database_ids in (heldout, everything):
        expected = _full_sort(x, queries, database_ids, 10, metric)
        mask = np.isin(everything, database_ids)
        # blocks of 250 rows: smaller than the 700-row shards, cut at every shard boundary, a short one at each end
        streamed = streamed_top_k(gallery.embeddings, queries, 10, metric, mask, block_rows=250)
        np.testing.assert_array_equal(streamed, expected)
        np.testing.assert_array_equal(exact_neighbours(gallery, database_ids, queries, 10, metric), expected)
    # ties are really there: the 10th and 11th best scores are equal for most queries
    keys = -(queries @ x.T) if metric == "ip" else ((queries[:, None, :] - x[None]) ** 2).sum(axis=2)
    ordered = np.sort(keys, axis=1)
    assert np.mean(ordered[:, 9] == ordered[:, 10]) > 0.5


def test_streamed_ground_truth_pads_a_small_database_and_maps_ids(tmp_path):
    gallery, x = _integer_gallery(tmp_path / "g")
    queries = x[:3] + 1
    few = np.array([5, 699, 700, 2999])  # four rows in three shards
    expected = _full_sort(x, queries, few, 6, "ip")
    assert (expected[:, 4:] == -1).all()
    np.testing.assert_array_equal(exact_neighbours(gallery, few, queries, 6), expected)
    # exact_top_k over rows given as an array, with ids for its positions
    np.testing.assert_array_equal(exact_top_k(x[few], queries, 6, "ip", few), expected)


def test_streamed_ground_truth_holds_one_block_not_the_gallery(tmp_path):
    """24,000 × 256 rows (23 MiB) in six shards: the whole search holds a small fraction of that (under 1 MiB), while
    gathering the database (what ground truth did before: a BruteForce over the database rows) holds half of it."""
    n, d = 24_000, 256
    x = np.random.default_rng(7).standard_normal((n, d)).astype(np.float32)
    gallery = write_array_gallery(
        tmp_path / "g",
        x,
        segments=[Segment("generated", 0, n, True, "test rows")],
        model=generated_model_block(d, 0),
        shard_rows=4_000,
    )
    del x
    queries = np.random.default_rng(8).standard_normal((20, d)).astype(np.float32)
    database = np.arange(1, n, 2)  # every other row: a mask, never a gathered copy
    tracemalloc.start()
    try:
        found = exact_neighbours(gallery, database, queries, 10)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        np.asarray(gallery.embeddings[database])  # what a gathered database costs, measured the same way
        gathered = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < gallery.embeddings.nbytes / 8, (peak, gallery.embeddings.nbytes)
    assert gathered > gallery.embeddings.nbytes / 2 > peak
    rows = np.asarray(gallery.embeddings[database])
    expected = database[np.argsort(-(queries @ rows.T), axis=1, kind="stable")[:, :10]]
    assert recall_at_k(found, expected, 10) > 0.999
