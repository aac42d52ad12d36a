"""Compressed codes in RAM, exact re-ranking from the gallery's memory-mapped vectors.

FAISS's own re-ranking (`…,RFlat`) keeps a full float copy of every vector inside the index,
so it needs *more* memory than the raw vectors. Here the index holds only its codes (e.g.
"IVF1000,PQ64": 64 bytes a vector); a search asks it for k·k_factor candidates and re-scores
them exactly with rows read from the gallery's embeddings.npy, which stays on disk,
memory-mapped. The RAM cost is the codes; the price is k·k_factor row reads per query, served
from the page cache once the gallery is warm (from disk otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c
from .base import IDS_FILE, BuildStats
from .faiss_index import MAX_POINTS_PER_CENTROID, FaissIndex
from .registry import PARAMS

K_FACTOR_RANGE = (PARAMS["k_factor"].low, PARAMS["k_factor"].high)
DEFAULT_K_FACTOR = PARAMS["k_factor"].default


def is_memory_mapped(array: np.ndarray) -> bool:
    """True when `array` is a view of a file mapping (its bytes live in the page cache, not the heap)."""
    return isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None


def rows_view(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """vectors[ids], as a zero-copy view when the ids are one contiguous ascending run."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1 and np.all(np.diff(ids) == 1):
        return vectors[int(ids[0]) : int(ids[-1]) + 1]
    return np.asarray(vectors[ids])


def exact_rerank(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-score (Q, K) candidate rows of `vectors` exactly and keep the best k; −1 candidates stay last."""
    valid = candidates >= 0
    flat = np.clip(candidates, 0, None).ravel()
    order = np.argsort(flat, kind="stable")  # read the mapping in file order: sequential pages, fewer faults
    rows = np.empty((len(flat), vectors.shape[1]), dtype=np.float32)
    rows[order] = vectors[flat[order]]
    rows = rows.reshape(*candidates.shape, -1)
    ip = np.einsum("qd,qkd->qk", queries, rows)
    if metric == "ip":
        scores = np.where(valid, ip, -np.inf)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.where(valid, (queries**2).sum(1)[:, None] + (rows**2).sum(2) - 2 * ip, np.inf)
        best = np.argsort(scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, best, axis=1).astype(np.float32)
    top = np.where(np.take_along_axis(valid, best, axis=1), np.take_along_axis(candidates, best, axis=1), -1)
    if top.shape[1] < k:  # fewer candidates than k: pad like FAISS does
        pad = k - top.shape[1]
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-1)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf if metric == "ip" else np.inf)
    return top_scores, top


class MmapRerankIndex(FaissIndex):
    """A FAISS index of codes plus exact re-ranking of k·k_factor candidates from memory-mapped vectors."""

    kind = "faiss-mmap-rerank"

    def __init__(
        self,
        name: str,
        factory: str,
        metric: str = "ip",
        search_params: dict[str, Any] | None = None,
        seed: int = 0,
        train_points_per_list: int = MAX_POINTS_PER_CENTROID,
    ):
        search_params = {"k_factor": DEFAULT_K_FACTOR, **(search_params or {})}
        super().__init__(name, factory, metric, search_params, seed, train_points_per_list)
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # row positions → exact vectors

    def _build(self, vectors: np.ndarray) -> BuildStats:
        stats = super()._build(vectors)
        self.vectors = vectors if is_memory_mapped(vectors) else as_float32_c(np.asarray(vectors))
        return stats

    def _check_k_factor(self, value: Any) -> int:
        lo, hi = K_FACTOR_RANGE
        if not lo <= int(value) <= hi:
            raise LookalikeError(f"k_factor={value} is out of range for {self.name}: use {lo}..{hi}")
        return int(value)

    def _apply(self, params: dict[str, Any]) -> None:
        """k_factor is ours (how many candidates to re-rank); the rest are FAISS's."""
        if "k_factor" in params:
            self._check_k_factor(params["k_factor"])
        super()._apply({key: value for key, value in params.items() if key != "k_factor"})

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        params = dict(params or {})
        k_factor = self._check_k_factor(params.pop("k_factor", self._search_params["k_factor"]))
        _, candidates = super()._search(queries, k * k_factor, params or None)
        return exact_rerank(queries, candidates, self.vectors, k, self.metric)

    def memory_bytes(self) -> int:
        """The codes and ids; the exact vectors count only when they are held in RAM rather than memory-mapped."""
        return super().memory_bytes() + (0 if is_memory_mapped(self.vectors) else int(self.vectors.nbytes))

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> MmapRerankIndex:
        method = super()._load(folder, info, vectors)
        method.vectors = rows_view(vectors, np.load(Path(folder) / IDS_FILE))
        return method
