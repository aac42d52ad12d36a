"""Compressed codes in RAM, exact re-ranking from the gallery's memory-mapped vectors.

FAISS's own re-ranking (`…,RFlat`) keeps a full float copy of every vector inside the index,
so it needs *more* memory than the raw vectors. Here the index holds only its codes (e.g.
"IVF1000,PQ64": 64 bytes a vector); a search asks it for k·k_factor candidates and re-scores
them exactly with rows read from the gallery's embeddings.npy, which stays on disk,
memory-mapped. The price is k·k_factor row reads per query, served from the page cache once
the gallery is warm (from disk otherwise).

So the mapped vectors are not free: the pages a search reads must stay in the page cache for the
warm latency to hold. `memory_bytes` counts the codes plus that working set (every page of the
mapped file the searches so far have read, tracked exactly from the candidate rows), and
`cold_single_ms` times single queries with the file dropped from the page cache first.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..gallery.shards import ShardedArray
from ..runtime import as_float32_c
from .base import IDS_FILE, BuildStats
from .faiss_index import MAX_POINTS_PER_CENTROID, FaissIndex
from .registry import PARAMS

K_FACTOR_RANGE = (PARAMS["k_factor"].low, PARAMS["k_factor"].high)
DEFAULT_K_FACTOR = PARAMS["k_factor"].default
PAGE_BYTES = mmap.PAGESIZE
COLD_QUERIES = 20  # single queries timed cold, each after dropping the file from the page cache
STEP_BLOCK = 1 << 20  # ids compared at once by `steps_hold`: 8 MiB of steps


def is_memory_mapped(array: np.ndarray) -> bool:
    """True when `array` is a view of a file mapping (its bytes live in the page cache, not the heap)."""
    return isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None


def mapped_parts(vectors: np.ndarray | ShardedArray) -> tuple[np.ndarray, ...] | None:
    """The file mappings holding `vectors`, in row order: the array itself, or each shard of a gallery's rows that
    span several; None when any rows are held in memory."""
    parts = vectors.parts if isinstance(vectors, ShardedArray) else (vectors,)
    return tuple(parts) if all(is_memory_mapped(part) for part in parts) else None


def steps_hold(ids: np.ndarray, holds: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Whether `holds` is true of every step ids[i + 1] − ids[i], checked a block of STEP_BLOCK ids at a time.

    Why blocks: the id map of a 1B-row index is 8 GB; `np.diff` of all of it would allocate as
    much again, in the process that searches (the memory would grow with N).
    """
    return all(bool(holds(np.diff(ids[a : a + STEP_BLOCK + 1])).all()) for a in range(0, len(ids) - 1, STEP_BLOCK))


def is_run(ids: np.ndarray) -> bool:
    """The ids are one contiguous ascending run (first, first + 1, …)."""
    return bool(len(ids)) and ids[-1] - ids[0] == len(ids) - 1 and steps_hold(ids, lambda step: step == 1)


def rows_view(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """vectors[ids], as a zero-copy view when the ids are one contiguous ascending run."""
    ids = np.asarray(ids, dtype=np.int64)
    if is_run(ids):
        return vectors[int(ids[0]) : int(ids[-1]) + 1]
    return np.asarray(vectors[ids])


def file_offset(array: np.ndarray) -> int:
    """Byte offset in its file of a memory-mapped array's first element (views of a mapping included)."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return int(array.offset) + array.__array_interface__["data"][0] - root.__array_interface__["data"][0]


def pages_of_rows(rows: np.ndarray, row_bytes: int, offset: int) -> np.ndarray:
    """Sorted distinct file pages holding the given rows of a C-contiguous array that starts `offset` bytes into the
    file."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    first = (offset + rows * row_bytes) // PAGE_BYTES
    last = (offset + (rows + 1) * row_bytes - 1) // PAGE_BYTES
    spans = last - first + 1
    return np.unique(np.repeat(first, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)))


def drop_page_cache(array: np.ndarray) -> None:
    """Evict a memory-mapped array's file from the page cache: unmap our pages, then POSIX_FADV_DONTNEED the file.

    The kernel keeps pages that a process still maps, so the madvise comes first.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)
    evict_file(array.filename)


def evict_file(path: str | os.PathLike) -> None:
    """POSIX_FADV_DONTNEED a whole file: its pages that no process maps leave the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)  # dirty pages (a file just written) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def unmap_pages(address: int, length: int) -> None:
    """MADV_DONTNEED a file mapping made outside Python (FAISS's on-disk lists), so `evict_file` can drop its pages;
    the next read maps them again from the page cache or the disk."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(address, length, mmap.MADV_DONTNEED) != 0:
        raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) failed on the lists' mapping")


def exact_rerank(
    queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
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
        ef_construction: int | None = None,
    ):
        search_params = {"k_factor": DEFAULT_K_FACTOR, **(search_params or {})}
        super().__init__(name, factory, metric, search_params, seed, train_points_per_list, ef_construction)
        self.vectors: np.ndarray | ShardedArray = np.zeros((0, 0), dtype=np.float32)  # row positions → exact vectors
        self._touched: list[np.ndarray] = []  # per mapped part: its file pages read by searches so far
        self._pages_read = 0  # distinct pages summed over queries
        self._queries = 0

    def _build(self, vectors: np.ndarray) -> BuildStats:
        stats = super()._build(vectors)
        # a gallery's shards stay mapped too: a database spanning several (any over DEFAULT_SHARD_ROWS) is not copied
        self.vectors = vectors if mapped_parts(vectors) is not None else as_float32_c(np.asarray(vectors))
        return stats

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        if not super().apply_update(keep, vectors):
            return False
        self.vectors = np.concatenate(
            [np.asarray(self.vectors)[keep], as_float32_c(np.asarray(vectors)).reshape(-1, self.vectors.shape[1])]
        )
        self._touched = []
        return True

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
        if (parts := mapped_parts(self.vectors)) is not None:
            self._record_pages(candidates, parts)
        return exact_rerank(queries, candidates, self.vectors, k, self.metric)

    def search_within(
        self, queries: np.ndarray, k: int, rows: np.ndarray, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the codes with an IDSelector (never a post-filter), re-ranked exactly as always."""
        queries = as_float32_c(np.atleast_2d(queries))
        params = dict(params or {})
        k_factor = self._check_k_factor(params.pop("k_factor", self._search_params["k_factor"]))
        _, candidates = self._selected(queries, k * k_factor, params or None, self.positions_within(rows))
        scores, positions = exact_rerank(queries, candidates, self.vectors, k, self.metric)
        return scores, self._lookup.take(positions)  # position −1 (missing) → id −1, as `search` maps them

    def _record_pages(self, candidates: np.ndarray, parts: tuple[np.ndarray, ...]) -> None:
        """Mark the file pages the re-ranking of these candidates reads (per query and in all), in each mapped part."""
        view = ShardedArray(parts, self.vectors.shape[1])  # its row → part arithmetic, for one part or several
        row_bytes = self.vectors.shape[1] * np.dtype(np.float32).itemsize
        offsets = [file_offset(part) for part in parts]
        if len(self._touched) != len(parts):
            self._touched = [
                np.zeros((offset + len(part) * row_bytes) // PAGE_BYTES + 1, dtype=bool)
                for part, offset in zip(parts, offsets)
            ]
        for row in candidates:
            row = row[row >= 0]
            shard = view.shard_of(row)
            for number in np.unique(shard):
                pages = pages_of_rows(row[shard == number] - view.starts[number], row_bytes, offsets[number])
                self._touched[number][pages] = True
                self._pages_read += len(pages)
        self._queries += len(candidates)

    def working_set_bytes(self) -> int:
        """Bytes of the mapped file that searches so far have read: the page cache their warm latency relied on."""
        return sum(int(touched.sum()) for touched in self._touched) * PAGE_BYTES

    def pages_per_query(self) -> float:
        """Mean distinct pages of the mapped file read per query (NaN before any search)."""
        return self._pages_read / self._queries if self._queries else float("nan")

    def reset_working_set(self) -> None:
        for touched in self._touched:
            touched[:] = False
        self._pages_read = self._queries = 0

    def memory_bytes(self) -> int:
        """The codes and ids, plus the exact vectors: all of them when held in RAM, the working set read so far when
        memory-mapped."""
        return super().memory_bytes() + (
            self.working_set_bytes() if mapped_parts(self.vectors) is not None else int(self.vectors.nbytes)
        )

    def drop_page_cache(self) -> bool:
        """Evict the memory-mapped vectors from the page cache, so the next search reads them from disk; False when they
        are held in RAM (nothing to drop)."""
        parts = mapped_parts(self.vectors)
        if parts is None:
            return False
        for part in parts:
            drop_page_cache(part)
        return True

    def cold_single_ms(
        self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None, n: int = COLD_QUERIES
    ) -> float | None:
        """Median ms of one query searched alone right after the mapped file was dropped from the page cache.

        None when the vectors are held in RAM (nothing to read from disk).
        """
        times = []
        for query in np.asarray(queries, dtype=np.float32)[:n]:
            if not self.drop_page_cache():
                return None
            t = time.perf_counter()
            self.search(query[None], k, params)
            times.append(1000 * (time.perf_counter() - t))
        return statistics.median(times) if times else None

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> MmapRerankIndex:
        method = super()._load(folder, info, vectors)
        method.vectors = rows_view(vectors, np.load(Path(folder) / IDS_FILE, mmap_mode="r"))
        return method
