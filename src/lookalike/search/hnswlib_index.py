"""HNSW from hnswlib over float32 vectors: the reference implementation of the graph, beside FAISS's and usearch's.

Why: benchmarks/bench_peers.py measures hnswlib's search faster per query than FAISS's HNSW at the
same efSearch (FAISS allocates a visited table on every search, hnswlib keeps a pool), so lookalike
offers it behind the same `SearchMethod` interface, as `hnswlib` (M 32, efConstruction 40: the
peers' own settings, so the two differ only by what the interface costs) and `hnswlib-m16` (a
lighter graph built more carefully, efConstruction 100: each step is cheaper, and the better
links make up the recall; measured on the 100k generated gallery, the same recall at 0.75× the
time per query of M 32 / efConstruction 40, for twice the build time); the tuner considers both.

Metric "ip": hnswlib's "ip" space returns 1 − ⟨x, y⟩, turned back into inner products; "l2": its
"l2" space returns squared distances, lookalike's convention as is. (efSearch, locking, updates
and saving: `graph.GraphMethod`.)

Reproducibility: levels are drawn from a fixed seed (`random_seed`), but vectors are inserted on
the runtime's thread count, and the order in which threads insert them shapes the graph; so a
rebuild gives an equivalent graph (the same recall and speed, within noise), not an identical one,
as FAISS's and usearch's multi-threaded builds do. A saved graph loads back exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c, search_threads
from .base import padded_results
from .graph import GraphMethod
from .registry import DEFAULT_HNSW_M

EF_CONSTRUCTION = 40  # the default, as the peers are built in bench_peers.py; a registry option may set another
SEED = 0  # hnswlib's random_seed: the level of each inserted vector
SPACES = {"ip": "ip", "l2": "l2"}


def _hnswlib():
    try:
        import hnswlib
    except ImportError as exc:  # pragma: no cover - hnswlib is a dependency; this guards a broken install
        raise LookalikeError("the hnswlib methods need the hnswlib package: pip install hnswlib") from exc
    return hnswlib


class HnswlibHnsw(GraphMethod):
    kind = "hnswlib"
    index_file = "index.hnswlib"

    def __init__(
        self,
        name: str,
        metric: str = "ip",
        m: int = DEFAULT_HNSW_M,
        search_params: dict[str, Any] | None = None,
        ef_construction: int = EF_CONSTRUCTION,
    ):
        super().__init__(name, metric, m, search_params)
        self.ef_construction = int(ef_construction)
        self._dim = self._count = 0  # the index's dim and element count, kept here: _search reads them on every call
        self._missing = -np.inf if metric == "ip" else np.inf

    @property
    def dim(self) -> int:
        return self._dim

    def _new_index(self, d: int, capacity: int | None = None):
        index = _hnswlib().Index(space=SPACES[self.metric], dim=d)
        if capacity is not None:
            index.init_index(
                max_elements=max(1, capacity), M=self.m, ef_construction=self.ef_construction, random_seed=SEED
            )
            index.set_ef(self._ef)
        return index

    def _add(self, index, start: int, block: np.ndarray) -> None:
        if index.get_max_elements() < start + len(block):
            index.resize_index(start + len(block))
        index.add_items(block, np.arange(start, start + len(block), dtype=np.int64), num_threads=search_threads())

    def _set_breadth(self, index, ef: int) -> None:
        index.set_ef(ef)

    def _read(self, index, path: Path) -> None:
        index.load_index(str(path))

    def _write(self, index, path: Path) -> None:
        index.save_index(str(path))

    def _adopt(self, index) -> None:
        self.index, self._dim, self._count = index, int(index.dim), int(index.element_count)

    @classmethod
    def _from_info(cls, info: dict[str, Any]) -> HnswlibHnsw:
        return cls(
            info["name"],
            info["metric"],
            info.get("m", DEFAULT_HNSW_M),
            info.get("search_params"),
            info.get("ef_construction", EF_CONSTRUCTION),
        )

    def fresh(self) -> HnswlibHnsw:
        return HnswlibHnsw(self.name, self.metric, self.m, {"efSearch": self._ef}, self.ef_construction)

    def params(self) -> dict[str, Any]:
        return {"M": self.m, "efConstruction": self.ef_construction, "efSearch": self._ef}

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        index, ef = self._ready(queries, params)
        n = len(queries)
        found = min(k, self._count)  # hnswlib cannot return more than it holds
        if not found:
            return np.full((n, k), self._missing, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        # one query runs on one thread (hnswlib does so itself below 4 queries per thread; said here, not relied on)
        threads = 1 if n == 1 else search_threads()
        labels, distances = self._locked(index, ef, lambda: self._query(index, queries, found, threads))
        positions = labels.view(np.int64)  # hnswlib labels are uint64 row positions, < 2**63
        scores = np.subtract(1.0, distances, out=distances) if self.metric == "ip" else distances
        if found < k:  # fewer rows than k: pad like FAISS
            positions = np.pad(positions, ((0, 0), (0, k - found)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - found)), constant_values=self._missing)
        return scores, positions

    def _query(self, index, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return index.knn_query(queries, k, num_threads=threads)
        except RuntimeError:  # fewer than k reachable for some query: rare (a fragmented graph), answered row by row
            return self._padded(index, queries, k)

    def search_within(
        self, queries: np.ndarray, k: int, rows: np.ndarray, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib's own filter callback: the graph walk keeps only matching rows. Where fewer than k matching rows
        are reachable it raises, and the base class's fallback answers instead."""
        queries = as_float32_c(np.atleast_2d(queries))
        index, ef = self._ready(queries, params)
        allowed = np.zeros(self._count, dtype=bool)
        allowed[self.positions_within(rows)] = True
        found = min(k, int(allowed.sum()))
        try:
            labels, distances = self._locked(
                index, ef, lambda: index.knn_query(queries, found, num_threads=1, filter=lambda label: allowed[label])
            )
        except RuntimeError:
            return super().search_within(queries, k, rows, params)
        positions = labels.view(np.int64)
        scores = np.subtract(1.0, distances, out=distances) if self.metric == "ip" else distances
        return padded_results(scores, self.ids[positions], k, self.metric)

    def _padded(self, index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's results, as many as hnswlib reaches (at most k), padded with −1 (distance ±inf); called under
        the lock."""
        labels = np.full((len(queries), k), np.iinfo(np.uint64).max, dtype=np.uint64)  # −1 once viewed as int64
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)  # score −inf for ip (1 − inf), +inf for l2
        for row, query in enumerate(queries):
            for kk in range(k, 0, -1):
                try:
                    got, dist = index.knn_query(query[None], kk, num_threads=1)
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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": SEED, "ef_construction": self.ef_construction}
