"""Accuracy metrics, used by every experiment so recall means the same thing everywhere.

Ground truth is exact search over the same database with the same metric, on held-out queries,
streamed block by block over the gallery's shards (`streamed_top_k`), so it stays exact for a
gallery larger than memory; it is computed once per (gallery, database, queries, k, metric) and
cached in <gallery>/cache/.

Conventions shared by every function here: `found` and `truth` are (Q, k) gallery ids, best
first, padded with −1 where a method returned fewer than k results; labels are strings or
None, and a query without a label is left out of the label metrics (it has no relevant
results to find), so those are NaN when no query is labelled.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import LookalikeError
from ..gallery import CACHE, Gallery, Partition, ShardedArray, atomic_save_npy
from ..gallery.shards import BLOCK_ROWS
from ..runtime import as_float32_c
from ..search.compare import recall_per_query  # defined beside the one-query comparison, which reports it too

SCORE_BLOCK_BYTES = 64 * 2**20  # one block of (queries × rows) float32 scores: exact search's working memory


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of recall_per_query: FAISS's "k-recall@k" (intersection recall)."""
    per_query = recall_per_query(found, truth, k)
    return float(per_query.mean()) if len(per_query) else float("nan")


def relevance(found: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """(Q, k) booleans: result j of query i has the query's label (missing results and unlabelled queries are not
    relevant)."""
    found = np.asarray(found)
    labels = np.asarray(gallery_labels, dtype=object)[np.clip(found, 0, None)]
    q = np.asarray(query_labels, dtype=object)[:, None]
    return (found >= 0) & (labels == q) & (q != None)  # noqa: E711 - elementwise on object arrays


def labelled(query_labels: np.ndarray) -> np.ndarray:
    """(Q,) booleans: the query has a label, so label metrics mean something for it."""
    return np.asarray([label is not None and label == label and label != "" for label in query_labels], dtype=bool)


def precision_at_k(found: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int) -> float:
    """Label precision@k over labelled queries: the share of the top k results that carry the query's label (rclip's
    metric)."""
    keep = labelled(query_labels)
    if not keep.any():
        return float("nan")
    rel = relevance(np.asarray(found)[keep, :k], np.asarray(query_labels, dtype=object)[keep], gallery_labels)
    return float(rel.sum(axis=1).mean() / k)


MAP_DEFINITION = (
    "mAP@k = mean over labelled queries of Σ_j P@j·rel_j / min(k, items with the query's label in the database)"
)


def relevant_counts(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """(Q,) how many database rows carry each query's label: the most relevant results a search could find."""
    values, counts = np.unique(
        np.asarray([str(x) for x in database_labels if x is not None], dtype=object), return_counts=True
    )
    table = dict(zip(values.tolist(), counts.tolist()))
    return np.asarray([table.get(str(q), 0) if q is not None else 0 for q in query_labels], dtype=np.int64)


def average_precision_at_k(
    found: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    database_labels: np.ndarray | None = None,
) -> float:
    """mAP@k over labelled queries: mean of Σ_j P@j·rel_j / min(k, relevant items in the database).

    Dividing by the relevant items that exist (capped at k), not by the hits found, is the
    standard definition: one hit at rank 1 out of ten findable scores 0.1, not 1. A query with
    no relevant item in the database scores 0. `database_labels` are the labels of the searched
    rows (default: `gallery_labels`, when the gallery is the database).
    """
    keep = labelled(query_labels)
    if not keep.any():
        return float("nan")
    q_labels = np.asarray(query_labels, dtype=object)[keep]
    rel = relevance(np.asarray(found)[keep, :k], q_labels, gallery_labels).astype(np.float64)
    prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    ideal = np.minimum(k, relevant_counts(q_labels, gallery_labels if database_labels is None else database_labels))
    ap = np.where(ideal > 0, (prec * rel).sum(axis=1) / np.maximum(ideal, 1), 0.0)
    return float(ap.mean())


@dataclass(frozen=True)
class Accuracy:
    """The three accuracy figures every experiment reports for one setting."""

    recall: float  # recall@k against exact search
    precision: float  # label precision@k (NaN when no query is labelled)
    map: float  # label mAP@k, normalised by min(k, relevant items in the database)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(
    found: np.ndarray,
    truth: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    database_ids: np.ndarray | None = None,
) -> Accuracy:
    """`database_ids`: the gallery rows searched (default: all of `gallery_labels`), for mAP's count of relevant
    items."""
    database_labels = (
        None
        if database_ids is None
        else np.asarray(gallery_labels, dtype=object)[np.asarray(database_ids, dtype=np.int64)]
    )
    return Accuracy(
        recall=recall_at_k(found, truth, k),
        precision=precision_at_k(found, query_labels, gallery_labels, k),
        map=average_precision_at_k(found, query_labels, gallery_labels, k, database_labels),
    )


def exact_neighbours(
    gallery: Gallery, database_ids: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip"
) -> np.ndarray:
    """Exact top-k gallery ids of `queries` (any vectors, e.g. embedded query images) among `database_ids`, cached
    beside the gallery.

    Streamed over the gallery's shards (`streamed_top_k`) with the database as a mask over rows,
    so a gallery larger than memory gets its true exact neighbours.
    """
    database_ids = np.asarray(database_ids, dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    key = hashlib.sha256(
        f"{gallery.fingerprint}|{metric}|{k}|".encode() + database_ids.tobytes() + queries.tobytes()
    ).hexdigest()[:16]
    path = Path(gallery.path) / CACHE / f"groundtruth-{metric}-k{k}-{key}.npy"
    if path.is_file():
        return np.load(path)
    database = np.zeros(gallery.count, dtype=bool)
    database[database_ids] = True
    ids = streamed_top_k(gallery.embeddings, queries, k, metric, database)
    atomic_save_npy(path, ids)
    return ids


def exact_top_k(
    vectors: np.ndarray | ShardedArray,
    queries: np.ndarray,
    k: int,
    metric: str = "ip",
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """The ground truth of every experiment: exact top-k rows (or `ids`) of `queries` among `vectors`, streamed block by
    block (`streamed_top_k`); −1 where there are fewer than k rows."""
    found = streamed_top_k(vectors, queries, k, metric)
    if ids is None:
        return found
    return np.where(found >= 0, np.asarray(ids, dtype=np.int64)[found], -1)


def streamed_top_k(
    vectors: np.ndarray | ShardedArray,
    queries: np.ndarray,
    k: int,
    metric: str = "ip",
    database: np.ndarray | None = None,
    block_rows: int | None = None,
) -> np.ndarray:
    """Exact top-k row numbers of `queries` among the rows of `vectors` where the boolean mask `database` is True (None:
    every row), best first, −1 padded; equal scores go to the lower row, as a stable sort of the full score matrix
    would order them.

    Why streamed: the rows are read one block at a time (`ShardedArray.blocks`, zero-copy views of
    the shards) and a running (Q, k) best is merged with each block's best, so memory is one block
    of scores plus the results, whatever the gallery's size. Scores: inner product (higher is
    better) for "ip", squared L2 distance ‖q‖² + ‖x‖² − 2⟨q, x⟩ (lower is better) for "l2".
    """
    if metric not in ("ip", "l2"):
        raise LookalikeError(f"unknown metric {metric!r}; use ip or l2")
    view = vectors if isinstance(vectors, ShardedArray) else ShardedArray([np.asarray(vectors)], vectors.shape[1])
    queries = as_float32_c(np.atleast_2d(queries))
    n, nq = len(view), len(queries)
    start, stop = 0, n
    if database is not None:
        database = np.asarray(database, dtype=bool)
        if database.shape != (n,):
            raise LookalikeError(f"the database mask has shape {database.shape}, the gallery {n} rows")
        if not database.any():
            return np.full((nq, k), -1, dtype=np.int64)
        start, stop = int(database.argmax()), n - int(database[::-1].argmax())  # the span holding every database row
    block_rows = block_rows or max(1, min(BLOCK_ROWS, SCORE_BLOCK_BYTES // (4 * max(1, nq))))
    query_norms = np.einsum("ij,ij->i", queries, queries)[:, None] if metric == "l2" else None
    best_keys = np.full((nq, k), np.inf, dtype=np.float32)  # lower is better: −score for ip, the distance for l2
    best_ids = np.full((nq, k), -1, dtype=np.int64)
    for first, block in view.blocks(start, stop, block_rows):
        keep = None if database is None else database[first : first + len(block)]
        if keep is not None and not keep.any():
            continue
        block = as_float32_c(block)
        keys = np.matmul(queries, block.T)
        if query_norms is None:
            np.negative(keys, out=keys)
        else:
            keys *= -2.0
            keys += np.einsum("ij,ij->i", block, block)
            keys += query_norms
        if keep is not None and not keep.all():
            keys[:, ~keep] = np.inf
        block_keys, columns = _smallest_k(keys, k)
        merged_keys = np.concatenate([best_keys, block_keys], axis=1)
        merged_ids = np.concatenate([best_ids, first + columns], axis=1)
        order = np.lexsort((merged_ids, merged_keys), axis=1)[:, :k]  # by key, then by the lower id
        best_keys = np.take_along_axis(merged_keys, order, axis=1)
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
    best_ids[np.isinf(best_keys)] = -1  # rows outside the database, or fewer than k rows in all
    return best_ids


def _smallest_k(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The min(k, columns) smallest keys of each row and their columns (in column order): among keys equal to the
    k-th smallest, the lowest columns, so ties go to the lower id as in a stable sort."""
    nq, b = keys.shape
    if b <= k:
        return keys, np.broadcast_to(np.arange(b, dtype=np.int64), keys.shape)
    threshold = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    take = keys < threshold
    room = k - take.sum(axis=1)  # how many keys equal to the threshold still fit (at least one)
    tied = keys == threshold
    surplus = np.flatnonzero(tied.sum(axis=1) > room)  # rows with more ties at the threshold than room: lowest first
    tied[surplus] &= np.cumsum(tied[surplus], axis=1) <= room[surplus, None]
    take |= tied
    columns = np.nonzero(take)[1].reshape(nq, k)
    return np.take_along_axis(keys, columns, axis=1), columns


def ground_truth(gallery: Gallery, partition: Partition, k: int, metric: str = "ip") -> np.ndarray:
    """Exact top-k gallery ids for the partition's held-out queries, cached beside the gallery."""
    return exact_neighbours(
        gallery, partition.database_ids, np.asarray(gallery.embeddings[partition.query_ids]), k, metric
    )
