"""What the HNSW libraries behind `SearchMethod` (hnswlib, usearch) share: a graph whose search breadth lives on the
index.

Both keep efSearch on the index object, not on the call, so a per-call value is set and restored
under a lock that every search takes: no search ever runs with another call's efSearch (a call
that asks for the current value skips both). Both add rows block by block (a memory-mapped
gallery is never read whole), grow in place on an update, and cannot forget a node, so a
removal rebuilds (`fresh`).
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c
from .base import BuildStats, SearchMethod
from .registry import DEFAULT_HNSW_M, PARAMS

ADD_BLOCK = 65_536  # rows converted and added at once
EF_LOW, EF_HIGH = PARAMS["efSearch"].low, PARAMS["efSearch"].high
T = TypeVar("T")


class GraphMethod(SearchMethod):
    index_file: ClassVar[str]

    def __init__(
        self, name: str, metric: str = "ip", m: int = DEFAULT_HNSW_M, search_params: dict[str, Any] | None = None
    ):
        super().__init__(name, metric)
        self.m = int(m)
        self.index = None
        self._ef = int((search_params or {}).get("efSearch", PARAMS["efSearch"].default))
        self._lock = threading.Lock()

    # -- what each library does --
    @abstractmethod
    def _new_index(self, d: int, capacity: int | None = None):
        """An empty index of `d`-d vectors at the current efSearch: to build, with room for `capacity` rows where the
        library needs it; with None, to load a saved one into."""

    @abstractmethod
    def _add(self, index, start: int, block: np.ndarray) -> None:
        """Append `block` (float32, C-contiguous) as row positions start, start + 1, …"""

    @abstractmethod
    def _set_breadth(self, index, ef: int) -> None: ...

    @abstractmethod
    def _read(self, index, path: Path) -> None: ...

    @abstractmethod
    def _write(self, index, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _from_info(cls, info: dict[str, Any]) -> GraphMethod:
        """An unbuilt method with the parameters a saved `describe()` records."""

    def _adopt(self, index) -> None:
        self.index = index

    # -- SearchMethod --
    def _build(self, vectors: np.ndarray) -> BuildStats:
        t = time.perf_counter()
        index = self._new_index(vectors.shape[1], len(vectors))
        for start in range(0, len(vectors), ADD_BLOCK):
            self._add(index, start, as_float32_c(np.asarray(vectors[start : start + ADD_BLOCK])))
        self._adopt(index)
        return BuildStats(0.0, round(time.perf_counter() - t, 4), 0)

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """New rows join the graph in place; removals need a rebuild (positions must stay dense)."""
        if not keep.all():
            return False
        if len(vectors):
            with self._lock:
                self._add(self.index, len(self.ids), as_float32_c(np.asarray(vectors)))
                self._adopt(self.index)
        return True

    def search_param_ranges(self) -> dict[str, tuple[int, int]]:
        return {"efSearch": (EF_LOW, EF_HIGH)} if self.index is not None else {}

    def _check(self, params: dict[str, Any]) -> int | None:
        """efSearch from per-call `params`: the usual {"efSearch": n} checked inline, anything else by check_params (its
        errors)."""
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
                    self._set_breadth(self.index, ef)

    def _ready(self, queries: np.ndarray, params: dict[str, Any] | None) -> tuple[Any, int | None]:
        """The built index, after checking the queries' width, and the per-call efSearch (None: the current one)."""
        index = self.index
        if index is None:
            raise LookalikeError(f"{self.name} is not built; build or load it first")
        if queries.shape[1] != self.dim:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but {self.name} holds {self.dim}-d vectors")
        ef = self._check(params) if params else None
        return index, (None if ef == self._ef else ef)

    def _locked(self, index, ef: int | None, call: Callable[[], T]) -> T:
        """`call()` under the lock, at efSearch `ef` (None: the current one), restored afterwards."""
        with self._lock:
            if ef is None:
                return call()
            self._set_breadth(index, ef)
            try:
                return call()
            finally:
                self._set_breadth(index, self._ef)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "m": self.m, "search_params": {"efSearch": self._ef}}

    def _save(self, folder: Path) -> None:
        self._write(self.index, folder / self.index_file)

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> GraphMethod:
        method = cls._from_info(info)
        index = method._new_index(int(info["dim"]))
        method._read(index, folder / cls.index_file)
        method._set_breadth(index, method._ef)
        method._adopt(index)
        return method
