"""The study's question (i), one query at a time: what does approximate search miss for *this* query?

The tables answer on average over held-out queries. A comparison answers for the query in front
of you: the chosen method and exact search run on the same vector over the same database rows,
and recall@k is `recall_per_query`, the very figure the study's tables average (`study.metrics`
imports it from here). The web page's "compare with exact", `POST /api/search` with compare=exact
and `lookalike search --compare` all come here through `Searcher.compare` (`Gallery.compare` is its
front door); it lives beside the searcher because every query form reaches it through the searcher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gallery import Gallery
from .base import SearchMethod
from .factory import make_method
from .hits import Hit, hits_of
from .storage import database_vectors

EXACT_METHOD = "brute"  # exact, as the ground truth of every table is (metrics.exact_top_k, streamed over the shards)


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """(Q,) |found[:k] ∩ truth[:k]| / |truth[:k]|, with −1 padding ignored on both sides.

    The denominator is the number of true neighbours (k unless the database holds fewer), so
    exact search scores 1.0 even on a database smaller than k.
    """
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    out = np.empty(len(truth), dtype=np.float64)
    for i, (f, t) in enumerate(zip(found, truth)):
        t = t[t >= 0]
        out[i] = len(np.intersect1d(f[f >= 0], t)) / len(t) if len(t) else 1.0
    return out


@dataclass(frozen=True)
class Comparison:
    """One query searched by `method` and by exact search over the same rows; times in ms for this one call each."""

    method: str
    exact_method: str
    k: int
    hits: tuple[Hit, ...]  # the method's results, best first
    exact_hits: tuple[Hit, ...]  # the true k nearest rows, best first
    recall: float  # |hits ∩ exact top-k| / |exact top-k| (k unless the database holds fewer rows)
    missed: tuple[int, ...]  # gallery ids of the exact top-k the method did not return, in exact rank order
    method_ms: float
    exact_ms: float

    @property
    def in_exact(self) -> tuple[bool, ...]:
        """For each of the method's hits: is it one of the exact top k?"""
        exact = {h.id for h in self.exact_hits}
        return tuple(h.id in exact for h in self.hits)

    @property
    def missed_hits(self) -> tuple[Hit, ...]:
        """The exact results the method missed, with their exact rank and score."""
        missed = set(self.missed)
        return tuple(h for h in self.exact_hits if h.id in missed)

    def summary(self) -> str:
        """One line: recall and both latencies, for the CLI."""
        return (
            f"recall@{self.k} {self.recall:.2f} against exact search ({self.exact_method}): {len(self.missed)} of the"
            f" {len(self.exact_hits)} true neighbours missed · {self.method} {self.method_ms:.2f} ms,"
            f" {self.exact_method} {self.exact_ms:.2f} ms"
        )


def compare_search(
    gallery: Gallery,
    method: SearchMethod,
    exact: SearchMethod,
    vector: np.ndarray,
    k: int,
    params: dict[str, Any] | None = None,
    rows: np.ndarray | None = None,
) -> Comparison:
    """Search `vector` with `method` (with this call's `params`) and with `exact`, and say what the method missed.

    `exact` must search the same rows with the same metric (see `exact_twin`); each search is
    timed on its own, so the two latencies are comparable. `rows` (a filter's gallery ids)
    restricts both: the recall is the method's under the filter.
    """
    t = time.perf_counter()
    if rows is None:
        scores, ids = method.search(vector, k, params or None)
    else:
        scores, ids = method.search_within(vector, k, rows, params or None)
    method_ms = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    exact_scores, exact_ids = exact.search(vector, k) if rows is None else exact.search_within(vector, k, rows)
    exact_ms = 1000 * (time.perf_counter() - t)
    found = set(ids[0][ids[0] >= 0].tolist())
    missed = tuple(int(i) for i in exact_ids[0] if i >= 0 and int(i) not in found)
    return Comparison(
        method=method.name,
        exact_method=exact.name,
        k=k,
        hits=tuple(hits_of(gallery, scores[0], ids[0])),
        exact_hits=tuple(hits_of(gallery, exact_scores[0], exact_ids[0])),
        recall=float(recall_per_query(ids, exact_ids, k)[0]),
        missed=missed,
        method_ms=method_ms,
        exact_ms=exact_ms,
    )


def same_rows(a: SearchMethod, b: SearchMethod) -> bool:
    """Whether two methods search the same gallery rows with the same metric."""
    return a.metric == b.metric and len(a.ids) == len(b.ids) and bool(np.array_equal(np.sort(a.ids), np.sort(b.ids)))


def exact_twin(gallery: Gallery, method: SearchMethod, exact: SearchMethod) -> SearchMethod:
    """`exact` when it searches `method`'s rows with its metric; else exact search built now over `method`'s rows.

    A saved index may hold other rows than the gallery's current database (e.g. `tune`'s); its
    missed neighbours must be counted among the rows it could have found.
    """
    if same_rows(method, exact):
        return exact
    twin = make_method(EXACT_METHOD, len(method.ids), gallery.dim, method.metric)
    twin.build(database_vectors(gallery, method.ids), method.ids)
    return twin
