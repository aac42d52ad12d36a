"""Any FAISS index, named by its `index_factory` string ("Flat", "IVF316,Flat", "HNSW32", "OPQ32,IVF1024,PQ32").

Factory strings are the field's shared vocabulary, so we accept them as they are, record
them in every table, and implement each family (flat, ivf, hnsw, pq, sq) as one class.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import LookalikeError
from ..fileio import atomic_write_bytes
from ..runtime import as_float32_c
from .base import BuildStats, SearchMethod
from .registry import PARAMS, params_of

INDEX_FILE = "index.faiss"
FAISS_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")
# FAISS guidance: k-means wants 30–256 training points per centroid; fewer warns, more wastes time.
MAX_POINTS_PER_CENTROID = 256
PQ_CODEBOOK_TRAINING = 256 * 256  # 256 centroids per sub-quantiser × 256 points each


@contextmanager
def one_thread_for_one_query(queries: int) -> Iterator[None]:
    """FAISS's graph search splits work over queries, so one query runs on one thread anyway; waking the
    other OpenMP threads for it only adds latency (bench_peers: HNSW single queries). Flat search is left
    alone: one query's scan is split over the database. The setting is per calling thread, and restored.
    (`FaissIndex._search` does the same inline, without a generator, on its single-query path.)"""
    if queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# Per-call SearchParameters objects kept per index (see FaissIndex._per_call): at most this many settings.
PER_CALL_CACHE = 64


def ivf_nlist(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def training_size(factory: str, n: int, points_per_list: int = MAX_POINTS_PER_CENTROID) -> int:
    """How many vectors to train on: enough for every centroid, capped so training stays cheap."""
    nlist = ivf_nlist(factory) or 0
    want = points_per_list * nlist
    if re.search(r"PQ\d", factory):
        want = max(want, PQ_CODEBOOK_TRAINING)
    return min(n, want) if want else n


class FaissIndex(SearchMethod):
    max_train_rows: int | None = None  # a cap on the training sample (the out-of-core build keeps it in memory)

    kind = "faiss"

    def __init__(
        self,
        name: str,
        factory: str,
        metric: str = "ip",
        search_params: dict[str, Any] | None = None,
        seed: int = 0,
        train_points_per_list: int = MAX_POINTS_PER_CENTROID,
        ef_construction: int | None = None,
    ):
        super().__init__(name, metric)
        self.factory = factory
        self.seed = seed
        self.ef_construction = ef_construction  # an HNSW graph's build breadth (None: FAISS's default, 40)
        self.train_points_per_list = (
            train_points_per_list  # k-means sample per IVF list: fewer trains faster, 30 is FAISS's floor
        )
        self._search_params: dict[str, Any] = dict(search_params or {})
        self._memory: int | None = None
        self._graph = "HNSW" in factory  # one query on one thread (see one_thread_for_one_query)
        self.index: faiss.Index | None = None

    @property
    def index(self) -> faiss.Index | None:
        return self._index

    @index.setter
    def index(self, index: faiss.Index | None) -> None:
        # search_param_ranges and per-call SearchParameters are derived from the index: kept with it, dropped
        # when it is replaced (build, load, an engine's add) or its own parameters change (set_params)
        self._index = index
        self._ranges: dict[str, tuple[int, int]] | None = None
        self._per_call_cache: dict[tuple, tuple[Any, list]] = {}

    @property
    def dim(self) -> int:
        return int(self.index.d) if self.index is not None else 0

    def _build(self, vectors: np.ndarray) -> BuildStats:
        index, train_n, t_train = self._trained_index(vectors)
        t = time.perf_counter()
        index = self._add(index, vectors)
        t_add = time.perf_counter() - t
        self.index = index
        self._memory = None
        self._apply(self._search_params)
        return BuildStats(round(t_train, 4), round(t_add, 4), train_n)

    def _add(self, index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
        """Add every vector to the trained `index`; the Ray engine overrides this (lookalike.distributed.index)."""
        for start in range(0, len(vectors), 65536):  # add in blocks: a memmapped gallery is never copied whole
            index.add(as_float32_c(np.asarray(vectors[start : start + 65536])))
        return index

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """IVF and flat-code indexes (Flat, SQ) drop rows in place; any index adds. HNSW, refined and
        pre-transformed indexes cannot drop rows here (False: HNSW is rebuilt, the others go stale)."""
        index = faiss.downcast_index(self.index)
        drop = np.flatnonzero(~np.asarray(keep, dtype=bool)).astype(np.int64)
        if len(drop):
            if isinstance(index, faiss.IndexIVF):
                index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
                renumber_ivf(index, keep)
            elif isinstance(index, faiss.IndexFlatCodes):
                index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))  # compacts, keeping order
            else:
                return False
        if len(vectors):
            self.index = self._add(self.index, vectors)  # positions continue from ntotal, after the kept rows
        self._memory = None
        return True

    def fresh(self) -> FaissIndex | None:
        """HNSW graphs are rebuilt when rows go; other families cannot be rebuilt without retraining, and go stale."""
        if "HNSW" not in self.factory or "IVF" in self.factory:
            return None
        return type(self)(
            self.name,
            self.factory,
            self.metric,
            dict(self._search_params),
            self.seed,
            self.train_points_per_list,
            self.ef_construction,
        )

    def _trained_index(self, vectors: np.ndarray) -> tuple[faiss.Index, int, float]:
        """A new, still empty index from the factory, trained on a seeded sample: (index, training vectors, seconds)."""
        n, d = vectors.shape
        nlist = ivf_nlist(self.factory)
        if nlist and n < nlist:
            raise LookalikeError(
                f"{self.factory} needs at least nlist={nlist} vectors to train, the gallery has {n}; use a smaller"
                " --nlist"
            )
        try:
            index = faiss.index_factory(d, self.factory, FAISS_METRICS[self.metric])
        except RuntimeError as exc:
            raise LookalikeError(
                f"FAISS cannot build {self.factory!r} for d={d}: {str(exc).splitlines()[-1] if str(exc) else exc}"
            ) from exc
        if self.ef_construction is not None:
            graph = faiss.downcast_index(index)
            if not isinstance(graph, faiss.IndexHNSW):
                raise LookalikeError(f"ef_construction applies to HNSW graphs, not {self.factory!r}")
            graph.hnsw.efConstruction = int(self.ef_construction)
        train_n, t_train = 0, 0.0
        if not index.is_trained:
            train_n = min(training_size(self.factory, n, self.train_points_per_list), self.max_train_rows or n)
            rows = (
                np.sort(np.random.default_rng(self.seed).choice(n, train_n, replace=False))
                if train_n < n
                else slice(None)
            )
            sample = as_float32_c(np.asarray(vectors[rows]))
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.cp.seed = self.seed
                ivf.cp.max_points_per_centroid = max(MAX_POINTS_PER_CENTROID, self.train_points_per_list)
            t = time.perf_counter()
            index.train(sample)
            t_train = time.perf_counter() - t
        return index, train_n, t_train

    def _apply(self, params: dict[str, Any]) -> None:
        space = faiss.ParameterSpace()
        for key, value in params.items():
            if key not in SEARCH_PARAMS:
                raise LookalikeError(
                    f"unknown search parameter {key!r} for {self.factory}; known:"
                    f" {', '.join(self.search_param_ranges()) or 'none'}"
                )
            if key not in self.search_param_ranges():
                raise LookalikeError(f"{self.name} ({self.factory}) has no search parameter {key!r}")
            lo, hi = self.search_param_ranges()[key]
            if not lo <= int(value) <= hi:
                raise LookalikeError(f"{key}={value} is out of range for {self.name}: use {lo}..{hi}")
            faiss_key = "k_factor_rf" if key == "k_factor" else key  # ParameterSpace's name for IndexRefine
            space.set_index_parameter(self.index, faiss_key, int(value))

    def set_params(self, **params: Any) -> None:
        self._apply(params)
        self._search_params.update(params)
        self._per_call_cache = {}  # cached SearchParameters copied the index's former values

    def search_param_ranges(self) -> dict[str, tuple[int, int]]:
        if self._ranges is None:
            self._ranges = self._param_ranges()
        return dict(self._ranges)

    def _param_ranges(self) -> dict[str, tuple[int, int]]:
        ranges: dict[str, tuple[int, int]] = {}
        if self.index is None:
            return ranges
        ivf = faiss.try_extract_index_ivf(self.index)
        for name in params_of(self.factory, self.kind):
            spec = PARAMS[name]
            high = (
                spec.high
                if spec.high is not None
                else int(ivf.nlist)
                if name == "nprobe" and ivf is not None
                else spec.low
            )
            ranges[name] = (spec.low, high)
        return ranges

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"factory": self.factory}
        ivf = faiss.try_extract_index_ivf(self.index) if self.index is not None else None
        if ivf is not None:
            out["nlist"] = int(ivf.nlist)
            out["nprobe"] = int(ivf.nprobe)
        return {**out, **self._search_params}

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        index = self.index
        if index is None:
            raise LookalikeError(f"{self.name} is not built; build or load it first")
        if queries.shape[1] != index.d:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but {self.name} holds {index.d}-d vectors")
        # Per-call values travel in a FAISS SearchParameters object: the shared index is never
        # changed, so concurrent searches with and without parameters cannot see each other's.
        # `per_call` (the object and the Python owners of its nested ones) stays referenced until the search returns
        per_call = self._per_call(params) if params else (None, None)
        if self._graph and len(queries) == 1:  # one_thread_for_one_query, inline: this path is timed in microseconds
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                return index.search(queries, k, params=per_call[0])
            finally:
                faiss.omp_set_num_threads(before)
        return index.search(queries, k, params=per_call[0])

    def search_within(
        self, queries: np.ndarray, k: int, rows: np.ndarray, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The search itself skips rows outside `rows`: an IDSelector in this call's SearchParameters (never a
        post-filter), so an IVF probes the same lists and an HNSW walks the same graph, keeping only matches."""
        queries = as_float32_c(np.atleast_2d(queries))
        scores, positions = self._selected(queries, k, params, self.positions_within(rows))
        return scores, self._lookup.take(positions)  # position −1 (missing) → id −1, as `search` maps them

    def _selected(
        self, queries: np.ndarray, k: int, params: dict[str, Any] | None, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row positions) of a search restricted to `positions` (ascending)."""
        if params:
            self._check(params)
        selector = faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(np.ascontiguousarray(positions, np.int64)))
        per_call, keep = search_parameters(
            self.index, {name: int(value) for name, value in (params or {}).items()}, selector
        )
        if per_call is None:
            raise LookalikeError(f"{self.name} ({self.factory}) cannot filter its search; use flat, ivf or hnsw")
        return self.index.search(queries, k, params=per_call)

    def _per_call(self, params: dict[str, Any]) -> tuple[faiss.SearchParameters | None, list]:
        """The checked SearchParameters for `params` and the owners of its nested objects (`search_parameters`),
        built once per setting and kept with the index: FAISS only reads them, so concurrent searches share one.
        A setting found in the cache was checked when it was added, against the same index and ranges."""
        cache = self._per_call_cache
        key = tuple(params.items())
        try:
            entry = cache.get(key)
        except TypeError:  # an unhashable value: check_params says what is wrong with it
            entry, key = None, None
        if entry is None:
            self._check(params)
            entry = search_parameters(self.index, {name: int(value) for name, value in params.items()})
            if key is not None:
                if len(cache) >= PER_CALL_CACHE:
                    cache = self._per_call_cache = {}
                cache[key] = entry
        return entry

    def _check(self, params: dict[str, Any]) -> None:
        self.check_params(params)

    def scanned_fraction(self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None) -> float | None:
        """Vectors compared per query over the database size, counted by FAISS (indexIVF_stats) for IVF indexes."""
        if self.index is None:
            return None
        if faiss.try_extract_index_ivf(self.index) is None:
            return 1.0 if self.factory == "Flat" else None
        faiss.cvar.indexIVF_stats.reset()
        self.search(queries, k, params)
        stats = faiss.cvar.indexIVF_stats
        return float(stats.ndis) / max(1, int(stats.nq)) / max(1, self.ntotal)

    def memory_bytes(self) -> int:
        """Serialised size of the real index plus the id map: what a loaded copy occupies.

        The bytes are counted as FAISS writes them, never held, so measuring a 2 GB index
        does not cost another 2 GB of RAM.
        """
        if self._memory is None:
            self._memory = serialised_bytes(self.index)
        return self._memory + int(self.ids.nbytes)

    def _save(self, folder: Path) -> None:
        atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(self.index).tobytes())

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "factory": self.factory,
            "search_params": self._search_params,
            "seed": self.seed,
            "train_points_per_list": self.train_points_per_list,
            **({"ef_construction": self.ef_construction} if self.ef_construction is not None else {}),
        }

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> FaissIndex:
        method = cls(
            info["name"],
            info["factory"],
            info["metric"],
            info.get("search_params"),
            info.get("seed", 0),
            info.get("train_points_per_list", MAX_POINTS_PER_CENTROID),
            info.get("ef_construction"),
        )
        method.index = cls._read_index(folder)
        method._apply(method._search_params)
        return method

    @classmethod
    def _read_index(cls, folder: Path) -> faiss.Index:
        return faiss.read_index(str(folder / INDEX_FILE))


def renumber_ivf(ivf: faiss.IndexIVF, keep: np.ndarray) -> None:
    """After `remove_ids`, give the kept rows positions 0..n−1 in their old order, as a flat index's removal does.

    An IVF index stores each row's label in its list; `SearchMethod.ids` maps labels (positions)
    to gallery ids, so labels must stay dense for `ids` to stay a plain array.
    """
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.make_direct_map(False)  # the map is keyed by the old labels; it is rebuilt below
        rebuild_map = True
    else:
        rebuild_map = False
    position = np.cumsum(np.asarray(keep, dtype=np.int64)) - 1  # old label → new label
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if not size:
            continue
        labels = np.ascontiguousarray(position[faiss.rev_swig_ptr(invlists.get_ids(lst), size)], dtype=np.int64)
        codes = np.array(faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size), copy=True)
        invlists.update_entries(lst, 0, size, faiss.swig_ptr(labels), faiss.swig_ptr(codes))
    if rebuild_map:
        ivf.make_direct_map(True)


def search_parameters(
    index: faiss.Index, values: dict[str, int], selector: faiss.IDSelector | None = None
) -> tuple[faiss.SearchParameters | None, list]:
    """A SearchParameters tree for `index` that sets `values` (nprobe, efSearch, k_factor) and keeps the index's own
    others; `selector` (an IDSelector over row positions) restricts the innermost search to its rows.

    FAISS reads per-call parameters from this object instead of the index, so nothing shared is
    mutated. Wrappers pass them down: IndexPreTransform (OPQ…) via SearchParametersPreTransform,
    IndexRefine (…,RFlat) via IndexRefineSearchParameters. The list holds every object created,
    which must outlive the search (FAISS stores raw pointers to the nested ones).
    """
    keep: list = []
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner, keep = search_parameters(index.index, values, selector)
        if inner is None:
            return None, keep
        p = faiss.SearchParametersPreTransform()
        p.index_params = inner
    elif isinstance(index, faiss.IndexRefine):
        inner, keep = search_parameters(index.base_index, values, selector)
        p = faiss.IndexRefineSearchParameters()
        p.k_factor = float(values.get("k_factor", index.k_factor))
        if inner is not None:
            p.base_index_params = inner
    elif isinstance(index, faiss.IndexIVF):
        p = faiss.SearchParametersIVF()
        p.nprobe = int(values.get("nprobe", index.nprobe))
        p.max_codes = int(index.max_codes)
    elif isinstance(index, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        p.efSearch = int(values.get("efSearch", index.hnsw.efSearch))
    elif selector is not None and isinstance(index, faiss.IndexFlatCodes):  # Flat, SQ: a plain scan, filtered
        p = faiss.SearchParameters()
    else:
        return None, keep
    if selector is not None and not isinstance(index, (faiss.IndexPreTransform, faiss.IndexRefine)):
        p.sel = selector
        keep.append(selector)
    keep.append(p)
    return p, keep


def serialised_bytes(index: faiss.Index) -> int:
    """Size of `index` as faiss.write_index writes it, counted through a callback writer."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last buffered chunk
    return total
