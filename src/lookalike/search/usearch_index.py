"""HNSW from usearch, with its vectors stored in f16 or i8: a graph family beside FAISS's HNSW.

Why: benchmarks/bench_peers.py measures usearch's HNSW faster per query than FAISS's at the same
recall on this machine, and its f16/i8 storage halves or quarters the memory; so lookalike offers
it behind the same `SearchMethod` interface and the tuner considers it. usearch's search breadth
is `expansion_search`, our efSearch (locking, updates and saving: `graph.GraphMethod`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import search_threads
from .graph import GraphMethod
from .registry import DEFAULT_HNSW_M

EXPANSION_ADD = 40  # efConstruction, as the peers are built in bench_peers.py


def _usearch():
    try:
        from usearch.index import Index
    except ImportError as exc:  # pragma: no cover - usearch is a dependency; this guards a broken install
        raise LookalikeError("the usearch methods need the usearch package: pip install usearch") from exc
    return Index


class UsearchHnsw(GraphMethod):
    kind = "usearch"
    index_file = "index.usearch"

    def __init__(
        self,
        name: str,
        metric: str = "ip",
        dtype: str = "f16",
        m: int = DEFAULT_HNSW_M,
        search_params: dict[str, Any] | None = None,
    ):
        if dtype not in ("f32", "f16", "i8"):
            raise LookalikeError(f"unknown usearch storage {dtype!r}; use f32, f16 or i8")
        super().__init__(name, metric, m, search_params)
        self.dtype = dtype

    @property
    def dim(self) -> int:
        return int(self.index.ndim) if self.index is not None else 0

    def _new_index(self, d: int, capacity: int | None = None):
        # "cos" for both metrics: on unit vectors cos = ⟨x, y⟩ and |x − y|² = 2 − 2·cos, and unlike "ip" its
        # distances stay normalised with i8 storage (usearch's i8 "ip" returns raw integer products)
        return _usearch()(
            ndim=d,
            metric="cos",
            dtype=self.dtype,
            connectivity=self.m,
            expansion_add=EXPANSION_ADD,
            expansion_search=self._ef,
        )

    def _add(self, index, start: int, block: np.ndarray) -> None:
        index.add(np.arange(start, start + len(block), dtype=np.uint64), block, threads=search_threads())

    def _set_breadth(self, index, ef: int) -> None:
        index.expansion_search = ef

    def _read(self, index, path: Path) -> None:
        index.load(str(path))

    def _write(self, index, path: Path) -> None:
        index.save(str(path))

    @classmethod
    def _from_info(cls, info: dict[str, Any]) -> UsearchHnsw:
        return cls(
            info["name"],
            info["metric"],
            info.get("dtype", "f16"),
            info.get("m", DEFAULT_HNSW_M),
            info.get("search_params"),
        )

    def fresh(self) -> UsearchHnsw:
        return UsearchHnsw(self.name, self.metric, self.dtype, self.m, {"efSearch": self._ef})

    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "M": self.m, "efConstruction": EXPANSION_ADD, "efSearch": self._ef}

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        index, ef = self._ready(queries, params)
        # one query runs on one thread: a pool hand-off costs more than the search itself
        threads = 1 if len(queries) == 1 else search_threads()
        found = self._locked(index, ef, lambda: index.search(queries, k, threads=threads))
        keys, distances = found.keys, found.distances
        # a batch gives BatchMatches (keys padded to k, `counts` found); one vector gives Matches (only what was found)
        if keys.ndim == 1:
            keys, distances = keys.reshape(1, -1), distances.reshape(1, -1)
            complete = keys.shape[1] == k
        else:
            complete = not len(found.counts) or int(found.counts.min()) == k
        if complete:  # the common case, kept to a few array operations: usearch's keys are row positions < 2**63
            scores = (1.0 - distances) if self.metric == "ip" else 2.0 * distances  # usearch's cos distance is 1 − cos
            return scores, keys.view(np.int64)
        return self._with_missing(found, keys, distances, len(queries), k)

    def _with_missing(
        self, found: Any, keys: np.ndarray, distances: np.ndarray, n: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Results where some query found fewer than k: the missing ones as id −1, score ∓inf, padded to k like
        FAISS."""
        keys = np.asarray(keys, dtype=np.int64).reshape(n, -1)[:, :k]
        distances = np.asarray(distances, dtype=np.float32).reshape(n, -1)[:, :k]
        counts = (
            np.asarray(found.counts).reshape(-1)
            if hasattr(found, "counts")
            else np.array([np.asarray(found.keys).size])
        )
        missing = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        positions = np.where(missing, -1, keys)
        scores = (1.0 - distances) if self.metric == "ip" else 2.0 * distances
        scores = np.where(missing, -np.inf if self.metric == "ip" else np.inf, scores).astype(np.float32)
        if keys.shape[1] < k:  # fewer results than k: pad like FAISS
            pad = k - keys.shape[1]
            positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf if self.metric == "ip" else np.inf)
        return scores, positions

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage) + int(self.ids.nbytes) if self.index is not None else 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self.dtype}
