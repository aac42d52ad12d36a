"""The one interface every search method implements: build, search, save/load, memory, params.

Experiments, the CLI and the server only ever talk to this interface, so a new index family
is a new subclass plus a registry entry, never a special case elsewhere.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import LookalikeError
from ..fileio import atomic_save_npy, atomic_write_json
from ..runtime import as_float32_c

METRICS = ("ip", "l2")
FLOAT32 = np.dtype(np.float32)  # compared by identity in `search`: numpy keeps one instance of each builtin dtype
METHOD_FILE = "method.json"
IDS_FILE = "ids.npy"


@dataclass(frozen=True)
class BuildStats:
    """Seconds spent training (k-means, PQ codebooks) and adding vectors; 0 when there is nothing to train."""

    train_seconds: float
    add_seconds: float
    train_size: int

    @property
    def build_seconds(self) -> float:
        return self.train_seconds + self.add_seconds


def padded_results(scores: np.ndarray, ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with k columns: missing results are id −1 with the worst score, as FAISS pads them."""
    missing = ids < 0
    scores = np.where(missing, -np.inf if metric == "ip" else np.inf, scores).astype(np.float32)
    if ids.shape[1] < k:
        pad = ((0, 0), (0, k - ids.shape[1]))
        ids = np.pad(ids, pad, constant_values=-1)
        scores = np.pad(scores, pad, constant_values=-np.inf if metric == "ip" else np.inf)
    return scores, ids


class SearchMethod(ABC):
    """k-NN over unit vectors. `search` returns (scores, gallery ids), best first.

    Scores are inner products (higher is better) for metric "ip", and squared L2 distances
    (lower is better, equal to 2 − 2·cos for unit vectors) for metric "l2". Missing results
    (k larger than what an approximate index found) are id −1.
    """

    kind: ClassVar[str]
    # Where a method built out of core keeps its finished parts between runs, so a killed build resumes (set by the
    # caller that knows where the index will live, `storage.build_dir`); methods built in memory ignore it.
    workdir: Path | None = None

    def __init__(self, name: str, metric: str = "ip"):
        if metric not in METRICS:
            raise LookalikeError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        self.name = name
        self.metric = metric
        self.ids = np.zeros(0, dtype=np.int64)
        self.build_stats: BuildStats | None = None

    @property
    def ids(self) -> np.ndarray:
        """Gallery id of each row position (a view of `_lookup`, whose extra last entry, −1, is where position −1
        lands)."""
        return self._ids

    @ids.setter
    def ids(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        lookup = np.empty(len(ids) + 1, dtype=np.int64)
        lookup[:-1] = ids
        lookup[-1] = -1
        self._lookup, self._ids = lookup, lookup[:-1]
        # the filtered copies `brute.exact_within` keeps: a build or an update sets ids, so they go
        self.__dict__.pop("_within", None)

    # -- building --
    def build(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> BuildStats:
        """Index `vectors` (n, d); `ids` maps row positions to gallery ids (default 0..n-1)."""
        self.ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(self.ids) != len(vectors):
            raise LookalikeError(f"{len(vectors)} vectors but {len(self.ids)} ids")
        self.build_stats = self._build(vectors)
        return self.build_stats

    @abstractmethod
    def _build(self, vectors: np.ndarray) -> BuildStats: ...

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """Follow a gallery update in place: drop the rows at positions where `keep` is False, then append `vectors`.

        Kept rows move down in order, as a flat index compacts; the caller then sets `ids` to the
        kept rows' new gallery ids followed by the appended rows'. Returns False, changing nothing,
        when the family cannot (a graph cannot forget a node): the caller rebuilds it (`fresh`) or
        marks it stale.
        """
        return False

    def fresh(self) -> SearchMethod | None:
        """An unbuilt method with this one's parameters, for a family that is rebuilt when it cannot follow an update;
        None: mark it stale instead."""
        return None

    # -- searching --
    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, row positions) for float32 C-contiguous queries."""

    def search(
        self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query row; `params` (e.g. {"nprobe": 8}) apply to this call only."""
        # Kept lean: a single graph query takes ~0.1–0.2 ms and each numpy call after it a few µs (its cache is cold).
        if not (
            queries.__class__ is np.ndarray
            and queries.ndim == 2
            and queries.dtype is FLOAT32
            and queries.flags.c_contiguous
        ):
            queries = as_float32_c(np.atleast_2d(queries))
        if k < 1:
            raise LookalikeError(f"k must be at least 1, got {k}")
        scores, positions = self._search(queries, k, params)
        if len(self._ids):
            # one gather: a missing result (position −1) reads `_lookup`'s last entry, −1; other negatives do not occur
            return scores, self._lookup.take(positions)
        return scores, positions

    def search_within(
        self, queries: np.ndarray, k: int, rows: np.ndarray, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the gallery ids `rows` only (a `filters.Where`'s rows), best first, as `search` answers.

        This default serves methods whose library cannot filter (usearch): it asks for more results, doubling until
        every query has k among `rows` or the whole index was asked, and keeps the first k that match — the
        documented fallback, which keeps k results whenever k rows match and the index reaches them. FAISS
        indexes filter inside the search (an IDSelector), exact methods score the matching rows alone, hnswlib
        uses its filter callback.
        """
        queries = as_float32_c(np.atleast_2d(queries))
        want = min(self.ntotal, 2 * k)
        while True:
            scores, ids = self.search(queries, want, params)
            keep = (ids >= 0) & np.isin(ids, rows)
            if want >= self.ntotal or (keep.sum(axis=1) >= k).all():
                break
            want = min(self.ntotal, want * 4)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # matching results first, in their order
        top_ids = np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(ids, order, axis=1), -1)
        top_scores = np.take_along_axis(scores, order, axis=1)
        return padded_results(top_scores, top_ids, k, self.metric)

    def positions_within(self, rows: np.ndarray) -> np.ndarray:
        """This method's row positions whose gallery ids are in `rows`, ascending."""
        return np.flatnonzero(np.isin(self.ids, rows))

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    @abstractmethod
    def dim(self) -> int: ...

    # -- parameters --
    def params(self) -> dict[str, Any]:
        """Build-time and current search-time parameters, for tables and saved files."""
        return {}

    def set_params(self, **params: Any) -> None:
        """Change search-time parameters (e.g. nprobe, efSearch) for all later searches."""
        if params:
            raise LookalikeError(f"{self.name} has no search parameters; got {', '.join(params)}")

    def check_params(self, params: dict[str, Any]) -> dict[str, int]:
        """The one validation of search-time parameters (the API, the CLI and the server all rely on it):
        each must be one this method has, within `search_param_ranges`. Returns them as ints."""
        ranges = self.search_param_ranges()
        checked = {}
        for key, value in params.items():
            if key not in ranges:
                raise LookalikeError(
                    f"{self.name} has no {key}; its search parameters are: {', '.join(ranges) or 'none'}"
                )
            lo, hi = ranges[key]
            if not lo <= int(value) <= hi:
                raise LookalikeError(f"{key}={value} is out of range for {self.name}: use {lo}..{hi}")
            checked[key] = int(value)
        return checked

    def search_param_ranges(self) -> dict[str, tuple[int, int]]:
        """Valid (min, max) of each search-time parameter (from search.registry, bounded by the built index)."""
        return {}

    def scanned_fraction(self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None) -> float | None:
        """The share of the database each query compared itself with, where the method can say (IVF); else None.

        Exact methods scan everything (1.0); an index that skips most of the data reports its real
        share, which on clustered data can be far above nprobe/nlist."""
        return None

    # -- memory --
    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the method holds for searching, measured on the real structure (ids included)."""

    # -- persistence --
    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "metric": self.metric,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "params": self.params(),
            "build": asdict(self.build_stats) if self.build_stats else None,
        }

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save(folder)
        atomic_save_npy(folder / IDS_FILE, self.ids)
        atomic_write_json(folder / METHOD_FILE, {**self.describe(), **(extra or {})})  # last: marks a complete save

    @abstractmethod
    def _save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> SearchMethod: ...

    @classmethod
    def load(cls, folder: Path, vectors: np.ndarray) -> SearchMethod:
        """Load a saved method; `vectors` are the gallery's embeddings (brute force searches them directly)."""
        info = json.loads((Path(folder) / METHOD_FILE).read_text())
        method = cls._load(Path(folder), info, vectors)
        method.ids = np.load(Path(folder) / IDS_FILE, mmap_mode="r")  # copied once, into the id lookup
        stats = info.get("build")
        method.build_stats = BuildStats(**stats) if stats else None
        return method
