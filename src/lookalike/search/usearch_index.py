"""HNSW from usearch, with its vectors stored in f16 or i8: a graph family beside FAISS's HNSW.

Why: benchmarks/bench_peers.py measures usearch's HNSW faster per query than FAISS's at the same
recall on this machine, and its f16/i8 storage halves or quarters the memory; so lookalike offers
it behind the same `SearchMethod` interface and the tuner considers it. usearch keeps its search
breadth (`expansion_search`, our `efSearch`) on the index, so a per-call value is set and restored
under a lock that every search takes: no search ever runs with another call's efSearch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c, search_threads
from .base import BuildStats, SearchMethod
from .registry import DEFAULT_HNSW_M, PARAMS

INDEX_FILE = "index.usearch"
EXPANSION_ADD = 40  # efConstruction, as the peers are built in bench_peers.py
EF_LOW, EF_HIGH = PARAMS["efSearch"].low, PARAMS["efSearch"].high


def _usearch():
    try:
        from usearch.index import Index
    except ImportError as exc:  # pragma: no cover - usearch is a dependency; this guards a broken install
        raise LookalikeError("the usearch methods need the usearch package: pip install usearch") from exc
    return Index


class UsearchHnsw(SearchMethod):
    kind = "usearch"

    def __init__(self, name: str, metric: str = "ip", dtype: str = "f16", m: int = DEFAULT_HNSW_M, search_params: dict[str, Any] | None = None):
        super().__init__(name, metric)
        if dtype not in ("f32", "f16", "i8"):
            raise LookalikeError(f"unknown usearch storage {dtype!r}; use f32, f16 or i8")
        self.dtype = dtype
        self.m = m
        self.index = None
        self._ef = int((search_params or {}).get("efSearch", PARAMS["efSearch"].default))
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.index.ndim) if self.index is not None else 0

    def _new_index(self, d: int):
        # "cos" for both metrics: on unit vectors cos = ⟨x, y⟩ and |x − y|² = 2 − 2·cos, and unlike "ip" its
        # distances stay normalised with i8 storage (usearch's i8 "ip" returns raw integer products)
        return _usearch()(ndim=d, metric="cos", dtype=self.dtype, connectivity=self.m, expansion_add=EXPANSION_ADD, expansion_search=self._ef)

    def _build(self, vectors: np.ndarray) -> BuildStats:
        t = time.perf_counter()
        index = self._new_index(vectors.shape[1])
        for start in range(0, len(vectors), 65536):  # a memory-mapped gallery is read block by block
            block = as_float32_c(np.asarray(vectors[start : start + 65536]))
            index.add(np.arange(start, start + len(block), dtype=np.uint64), block, threads=search_threads())
        self.index = index
        return BuildStats(0.0, round(time.perf_counter() - t, 4), 0)

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """New rows join the graph in place; a graph cannot forget a node, so removals need a rebuild."""
        if not keep.all():
            return False
        if len(vectors):
            start = len(self.ids)
            self.index.add(np.arange(start, start + len(vectors), dtype=np.uint64), as_float32_c(np.asarray(vectors)), threads=search_threads())
        return True

    def fresh(self) -> UsearchHnsw:
        return UsearchHnsw(self.name, self.metric, self.dtype, self.m, {"efSearch": self._ef})

    def search_param_ranges(self) -> dict[str, tuple[int, int]]:
        spec = PARAMS["efSearch"]
        return {"efSearch": (spec.low, spec.high)} if self.index is not None else {}

    def _check(self, params: dict[str, Any]) -> int | None:
        """efSearch from per-call `params`: the usual {"efSearch": n} checked inline, anything else by check_params (its errors)."""
        if len(params) == 1 and self.index is not None:
            ef = params.get("efSearch")
            if ef.__class__ is int and EF_LOW <= ef <= EF_HIGH:
                return ef
        return self.check_params(params).get("efSearch")

    def set_params(self, **params: Any) -> None:
        ef = self._check(params)
        if ef is not None:
            with self._lock:
                self._ef = ef
                if self.index is not None:
                    self.index.expansion_search = ef

    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "M": self.m, "efConstruction": EXPANSION_ADD, "efSearch": self._ef}

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        index = self.index
        if index is None:
            raise LookalikeError(f"{self.name} is not built; build or load it first")
        if queries.shape[1] != index.ndim:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but {self.name} holds {index.ndim}-d vectors")
        ef = self._check(params) if params else None
        with self._lock:
            if ef is not None:
                index.expansion_search = ef
            try:
                # one query runs on one thread: a pool hand-off costs more than the search itself
                found = index.search(queries, k, threads=1 if len(queries) == 1 else search_threads())
            finally:
                if ef is not None:
                    index.expansion_search = self._ef
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

    def _with_missing(self, found: Any, keys: np.ndarray, distances: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Results where some query found fewer than k: the missing ones as id −1, score ∓inf, padded to k like FAISS."""
        keys = np.asarray(keys, dtype=np.int64).reshape(n, -1)[:, :k]
        distances = np.asarray(distances, dtype=np.float32).reshape(n, -1)[:, :k]
        counts = np.asarray(found.counts).reshape(-1) if hasattr(found, "counts") else np.array([np.asarray(found.keys).size])
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

    def _save(self, folder: Path) -> None:
        self.index.save(str(folder / INDEX_FILE))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self.dtype, "m": self.m, "search_params": {"efSearch": self._ef}}

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> UsearchHnsw:
        method = cls(info["name"], info["metric"], info.get("dtype", "f16"), info.get("m", DEFAULT_HNSW_M), info.get("search_params"))
        index = method._new_index(int(info["dim"]))
        index.load(str(folder / INDEX_FILE))
        method.index = index
        return method
