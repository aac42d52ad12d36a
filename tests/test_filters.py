"""Filtered search (issue 24): which rows a `where` keeps, and every method family searching only them."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest

import lookalike
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
from lookalike.search.filters import FilterError, Where

from .conftest import run_main

N, D = 2000, 32


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """2,000 unit rows in 20 labels, a val split of every tenth row, paths in two folders."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [f"c{i % 20}" for i in range(N)]
    splits = ["val" if i % 10 == 0 else "train" for i in range(N)]
    paths = [
        f"/photos/{'beach' if i % 3 == 0 else 'city'}/img{i:05d}.{'png' if i % 7 == 0 else 'jpg'}" for i in range(N)
    ]
    path = tmp_path_factory.mktemp("filters") / "g"
    write_array_gallery(
        path,
        x,
        labels=labels,
        splits=splits,
        paths=paths,
        segments=[Segment("generated", 0, N, True, "test")],
        model=generated_model_block(D, 0),
    )
    return lookalike.open_gallery(path), x, np.array(labels), np.array(splits), paths


def expected_rows(labels, splits, paths, label=None, split=None, glob=None) -> np.ndarray:
    """The filter computed independently: plain Python over the columns."""
    keep = [
        (label is None or labels[i] in label)
        and (split is None or splits[i] == split)
        and (glob is None or fnmatch.fnmatchcase(paths[i], glob))
        for i in range(len(paths))
    ]
    return np.flatnonzero(keep)


def test_where_keeps_exactly_the_matching_rows(labelled):
    gallery, _, labels, splits, paths = labelled
    where = Where.parse({"label": ["c3", "c4"], "split": "train", "path": "*/beach/*.jpg"})
    np.testing.assert_array_equal(
        where.rows(gallery), expected_rows(labels, splits, paths, {"c3", "c4"}, "train", "*/beach/*.jpg")
    )
    assert Where.from_cli(["label=c3,c4", "split=train", "path=*/beach/*.jpg"]) == where
    np.testing.assert_array_equal(Where.parse({"ids": [5, 3, 99999]}).rows(gallery), [3, 5])


@pytest.mark.parametrize(
    "where, message",
    [
        ({"colour": "red"}, "no condition 'colour'"),
        ({"label": 3}, "string or a list of strings"),
        ({"mtime": (5, 1)}, "the start is after the end"),
        ({"mtime": ("yesterday", None)}, "ISO date"),
        ({"ids": "1,2"}, "list of gallery ids"),
        ({"label": "no-such-label"}, "no image of this gallery matches"),
        ({"mtime": (0, None)}, "records no file times"),
    ],
)
def test_a_bad_or_empty_filter_is_one_sentence(labelled, where, message):
    gallery = labelled[0]
    with pytest.raises(FilterError, match=message):
        gallery.search(0, k=3, where=where)


@pytest.mark.parametrize("method", ["brute", "flat", "exact-lowp"])
def test_exact_methods_give_the_true_top_k_among_the_matching_rows(labelled, method):
    gallery, x, labels, splits, paths = labelled
    rows = expected_rows(labels, splits, paths, {"c7", "c8"})  # a tenth of the rows
    q = x[1] + 0.3 * x[2]
    q /= np.linalg.norm(q)
    hits = gallery.search(q, k=10, method=method, where={"label": ["c7", "c8"]})
    scores = x[rows] @ q
    order = np.argsort(-scores, kind="stable")[:10]
    assert [h.id for h in hits] == rows[order].tolist()
    np.testing.assert_allclose([h.score for h in hits], scores[order], rtol=1e-5)


@pytest.mark.parametrize("method", ["brute", "exact-lowp"])
def test_a_filtered_exact_search_answers_from_the_rows_the_method_holds_now(method):
    """The filtered rows are gathered once and kept for the next query with the same filter; a rebuild or an
    update of the method must not be answered from that copy."""
    from lookalike.search import make_method

    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((500, 16)).astype(np.float32) for _ in range(2))
    for x in (first, second):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows, q = np.arange(0, 500, 5), first[:3]
    searched = make_method(method, 500, 16)
    for x in (first, first, second):  # twice the same (the copy reused), then other vectors under the same ids
        if x is not first or searched.ntotal == 0:
            searched.build(x)
        scores, ids = searched.search_within(q, 5, rows)
        truth = np.argsort(-(q @ x[rows].T), axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(ids, rows[truth])
    keep = np.ones(500, dtype=bool)
    keep[:250] = False  # an update drops the first half and appends 250 new rows
    if searched.apply_update(keep, first[:250]):
        searched.ids = np.concatenate([np.arange(250, 500), np.arange(500, 750)])
        held = np.concatenate([second[250:], first[:250]])
        scores, ids = searched.search_within(q, 5, np.arange(250, 750, 5))
        truth = np.argsort(-(q @ held[::5].T), axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(ids, np.arange(250, 750, 5)[truth])


@pytest.mark.parametrize(
    "method, params, keeps_k",
    [
        ("ivf", {"nprobe": 4}, False),  # 4 of 45 lists hold few of the 100 matching rows: fewer results, said by recall
        ("hnsw", {}, False),
        ("ivfpq-mmap", {}, False),
        ("hnswlib", {}, True),  # its filter callback, or the fallback: k results whenever k rows match
        ("usearch-f16", {}, True),  # the documented fallback keeps k
    ],
)
def test_approximate_methods_return_only_matching_rows_and_say_their_recall_under_the_filter(
    labelled, method, params, keeps_k
):
    gallery, x, labels, splits, paths = labelled
    where = {"label": "c5", "split": "train"}
    rows = set(expected_rows(labels, splits, paths, {"c5"}, "train").tolist())
    for query in (11, 500, 1999):
        hits = gallery.search(query, k=10, method=method, where=where, **params)
        assert hits and {h.id for h in hits} <= rows and (len(hits) == 10 or not keeps_k), method
    comparison = gallery.compare(500, k=10, method=method, where=where, **params)
    exact = sorted(rows, key=lambda i: -float(x[i] @ x[500]))[:10]
    assert [h.id for h in comparison.exact_hits] == exact  # the recall is against the exact top 10 under the filter
    assert comparison.recall == len({h.id for h in comparison.hits} & set(exact)) / 10


def test_ivf_probing_every_list_under_a_filter_is_exact(labelled):
    gallery, x, labels, splits, paths = labelled
    rows = expected_rows(labels, splits, paths, glob="*.png")
    hits = gallery.search(42, k=10, method="ivf", nprobe=round(N**0.5), where={"path": "*.png"})  # every list
    assert [h.id for h in hits] == rows[np.argsort(-(x[rows] @ x[42]), kind="stable")[:10]].tolist()


def test_the_cli_filters_by_label(tiny_gallery):
    gallery = lookalike.open_gallery(tiny_gallery)
    label = gallery.labels[40]
    query = gallery.paths[0]
    proc = run_main("search", "--gallery", tiny_gallery, "--image", query, "--where", f"label={label}", "-k", "5")
    ranked = [line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    shown = [next(token for token in line.split() if token.startswith("/")) for line in ranked]
    assert len(shown) == 5 and all(gallery.labels[gallery.paths.index(path)] == label for path in shown)
    assert f"where label in ['{label}']" in proc.stdout
