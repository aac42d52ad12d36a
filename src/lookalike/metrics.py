"""Accuracy metrics, used by every experiment so recall means the same thing everywhere.

Ground truth is exact search (brute force) over the same database with the same metric, on
held-out queries; it is computed once per (gallery, partition, k, metric) and cached in
<gallery>/cache/.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .gallery import CACHE, Gallery, Partition, atomic_save_npy


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k (the "intersection" recall FAISS reports as k-recall@k)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0], assume_unique=True)) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else float("nan")


def relevance(found: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """(Q, k) booleans: result j of query i has the query's label (missing results and unlabelled queries are not relevant)."""
    found = np.asarray(found)
    labels = np.asarray(gallery_labels, dtype=object)[np.clip(found, 0, None)]
    q = np.asarray(query_labels, dtype=object)[:, None]
    return (found >= 0) & (labels == q) & (q != None)  # noqa: E711 - elementwise on object arrays


def precision_at_k(found: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int) -> float:
    """Label precision@k: the share of the top k results that carry the query's label (rclip's ImageNet metric)."""
    rel = relevance(np.asarray(found)[:, :k], query_labels, gallery_labels)
    return float(rel.sum(axis=1).mean() / k) if len(rel) else float("nan")


def average_precision_at_k(found: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int) -> float:
    """mAP@k: mean over queries of Σ_j P@j·rel_j / (number of relevant results in the top k); 0 when none are relevant."""
    rel = relevance(np.asarray(found)[:, :k], query_labels, gallery_labels).astype(np.float64)
    if not len(rel):
        return float("nan")
    cum = np.cumsum(rel, axis=1)
    prec = cum / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    ap = np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return float(ap.mean())


def ground_truth(gallery: Gallery, partition: Partition, k: int, metric: str = "ip") -> np.ndarray:
    """Exact top-k gallery ids for the partition's queries, cached beside the gallery."""
    key = hashlib.sha256(
        f"{gallery.fingerprint}|{metric}|{k}|".encode() + partition.database_ids.tobytes() + partition.query_ids.tobytes()
    ).hexdigest()[:16]
    path = Path(gallery.path) / CACHE / f"groundtruth-{metric}-k{k}-{key}.npy"
    if path.is_file():
        return np.load(path)
    from .search import BruteForce

    exact = BruteForce("brute", metric)
    exact.build(gallery.embeddings[partition.database_ids], partition.database_ids)
    _, ids = exact.search(np.asarray(gallery.embeddings[partition.query_ids]), k)
    atomic_save_npy(path, ids)
    return ids
