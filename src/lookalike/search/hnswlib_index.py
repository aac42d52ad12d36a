"""HNSW from hnswlib over float32 vectors: the reference implementation of the graph, beside FAISS's and usearch's.

Why: benchmarks/bench_peers.py measures hnswlib's search faster per query than FAISS's HNSW at the
same efSearch (FAISS allocates a visited table on every search, hnswlib keeps a pool), so lookalike
offers it behind the same `SearchMethod` interface, as `hnswlib` (M 32, like the peers) and
`hnswlib-m16` (a lighter graph: each step is cheaper, but the same recall takes a wider search, so
which is faster at a target is measured, not assumed); the tuner considers both.

As with usearch, the search breadth (`ef`, our `efSearch`) lives on the index, so a per-call value
is set and restored under a lock that every search takes: no search ever runs with another call's
efSearch. Metric "ip": hnswlib's "ip" space returns 1 − ⟨x, y⟩, turned back into inner products;
"l2": its "l2" space returns squared distances, lookalike's convention as is.

Reproducibility: levels are drawn from a fixed seed (`random_seed`), but vectors are inserted on
the runtime's thread count, and the order in which threads insert them shapes the graph; so a
rebuild gives an equivalent graph (the same recall and speed, within noise), not an identical one,
as FAISS's and usearch's multi-threaded builds do. A saved graph loads back exactly.
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

INDEX_FILE = "index.hnswlib"
EF_CONSTRUCTION = 40  # as the peers are built in bench_peers.py
SEED = 0  # hnswlib's random_seed: the level of each inserted vector
SPACES = {"ip": "ip", "l2": "l2"}
EF_LOW, EF_HIGH = PARAMS["efSearch"].low, PARAMS["efSearch"].high


def _hnswlib():
    try:
        import hnswlib
    except ImportError as exc:  # pragma: no cover - hnswlib is a dependency; this guards a broken install
        raise LookalikeError("the hnswlib methods need the hnswlib package: pip install hnswlib") from exc
    return hnswlib


class HnswlibHnsw(SearchMethod):
    kind = "hnswlib"

    def __init__(self, name: str, metric: str = "ip", m: int = DEFAULT_HNSW_M, search_params: dict[str, Any] | None = None):
        super().__init__(name, metric)
        self.m = int(m)
        self.index = None
        self._dim = self._count = 0  # the index's dim and element count, kept here: _search reads them on every call
        self._ef = int((search_params or {}).get("efSearch", PARAMS["efSearch"].default))
        self._lock = threading.Lock()
        self._missing = -np.inf if metric == "ip" else np.inf

    @property
    def dim(self) -> int:
        return self._dim

    def _new_index(self, d: int):
        return _hnswlib().Index(space=SPACES[self.metric], dim=d)

    def _build(self, vectors: np.ndarray) -> BuildStats:
        t = time.perf_counter()
        n, d = vectors.shape
        index = self._new_index(d)
        index.init_index(max_elements=max(1, n), M=self.m, ef_construction=EF_CONSTRUCTION, random_seed=SEED)
        index.set_ef(self._ef)
        for start in range(0, n, 65536):  # a memory-mapped gallery is read block by block
            block = as_float32_c(np.asarray(vectors[start : start + 65536]))
            index.add_items(block, np.arange(start, start + len(block), dtype=np.int64), num_threads=search_threads())
        self._adopt(index)
        return BuildStats(0.0, round(time.perf_counter() - t, 4), 0)

    def _adopt(self, index) -> None:
        self.index, self._dim, self._count = index, int(index.dim), int(index.element_count)

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """New rows join the graph in place; removals rebuild it, as for usearch (hnswlib's `mark_deleted` would
        keep the dead rows' memory and renumber nothing, while positions here must stay dense)."""
        if not keep.all():
            return False
        if len(vectors):
            start = len(self.ids)
            with self._lock:
                self.index.resize_index(start + len(vectors))
                self.index.add_items(as_float32_c(np.asarray(vectors)), np.arange(start, start + len(vectors), dtype=np.int64), num_threads=search_threads())
                self._count = int(self.index.element_count)
        return True

    def fresh(self) -> HnswlibHnsw:
        return HnswlibHnsw(self.name, self.metric, self.m, {"efSearch": self._ef})

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
        ef = self._check(params) if params else None
        if ef is not None:
            with self._lock:
                self._ef = ef
                if self.index is not None:
                    self.index.set_ef(ef)

    def params(self) -> dict[str, Any]:
        return {"M": self.m, "efConstruction": EF_CONSTRUCTION, "efSearch": self._ef}

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        index = self.index
        if index is None:
            raise LookalikeError(f"{self.name} is not built; build or load it first")
        if queries.shape[1] != self._dim:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but {self.name} holds {self._dim}-d vectors")
        ef = self._check(params) if params else None
        n = len(queries)
        found = min(k, self._count)  # hnswlib cannot return more than it holds
        # one query runs on one thread (hnswlib does so itself below 4 queries per thread; said here, not relied on)
        threads = 1 if n == 1 else search_threads()
        with self._lock:
            if ef is not None:
                index.set_ef(ef)
            try:
                labels, distances = index.knn_query(queries, found, num_threads=threads) if found else (None, None)
            except RuntimeError:  # fewer than `found` reachable for some query: rare (a fragmented graph), answered row by row
                labels, distances = self._padded(queries, found)
            finally:
                if ef is not None:
                    index.set_ef(self._ef)
        if not found:
            return np.full((n, k), self._missing, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        positions = labels.view(np.int64)  # hnswlib labels are uint64 row positions, < 2**63
        scores = 1.0 - distances if self.metric == "ip" else distances
        if found < k:  # fewer rows than k: pad like FAISS
            positions = np.pad(positions, ((0, 0), (0, k - found)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - found)), constant_values=self._missing)
        return scores, positions

    def _padded(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's results, as many as hnswlib reaches (at most k), padded with −1 (distance ±inf); called under the lock."""
        labels = np.full((len(queries), k), np.iinfo(np.uint64).max, dtype=np.uint64)  # −1 once viewed as int64
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)  # score −inf for ip (1 − inf), +inf for l2
        for row, query in enumerate(queries):
            for kk in range(k, 0, -1):
                try:
                    got, dist = self.index.knn_query(query[None], kk, num_threads=1)
                except RuntimeError:
                    continue
                labels[row, :kk], distances[row, :kk] = got[0], dist[0]
                break
        return labels, distances

    def memory_bytes(self) -> int:
        """The graph's serialised size as hnswlib counts it (`index_file_size`: vectors, links, labels) plus the ids,
        as FAISS's is counted; hnswlib's in-memory bookkeeping (a mutex and a hash-map entry per vector, ~80 bytes)
        is not in it, nor in bench_peers.py's figure for the hnswlib peer (its saved file)."""
        return int(self.index.index_file_size()) + int(self.ids.nbytes) if self.index is not None else 0

    def _save(self, folder: Path) -> None:
        self.index.save_index(str(folder / INDEX_FILE))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "m": self.m, "seed": SEED, "search_params": {"efSearch": self._ef}}

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> HnswlibHnsw:
        method = cls(info["name"], info["metric"], info.get("m", DEFAULT_HNSW_M), info.get("search_params"))
        index = method._new_index(int(info["dim"]))
        index.load_index(str(folder / INDEX_FILE))
        index.set_ef(method._ef)
        method._adopt(index)
        return method
