"""The one view every reader of a gallery's vectors goes through: rows by id and blocks, over memory-mapped shards.

A gallery's embeddings lie in one or more `.npy` shards (see `ShardInfo`). `ShardedArray` reads
them without ever concatenating them: `take(ids)` gathers rows from the shards that hold them,
`blocks()` walks the gallery one zero-copy slice at a time, and `sources()` names the files and
rows behind a range, so another process (a build task) can map them itself. Indexing by ids gives
a numpy array, as a memory-mapped array would; a slice across shards is another `ShardedArray`
(nothing is read). `np.asarray(view)` is the one way to hold every row at once: free (the memory
map itself) for a gallery of one shard, a copy in RAM for more, so the in-memory search methods
keep working and the out-of-core ones use `blocks()` and `sources()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

BLOCK_ROWS = 65_536  # rows per block: 128 MiB at 512-d


class ShardedArray:
    """(N, d) float32, read-only, spread over memory-mapped shards in id order."""

    def __init__(self, parts: Sequence[np.ndarray], dim: int, origins: Sequence[tuple[str | None, int]] | None = None):
        self.parts = tuple(parts)
        # each part's file and first row in it (None: rows in memory), so a range can be mapped again elsewhere
        self.origins = tuple(origins) if origins is not None else tuple((None, 0) for _ in self.parts)
        self.starts = np.cumsum([0, *(len(p) for p in self.parts)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), int(dim))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.itemsize = self.dtype.itemsize
        self.nbytes = self.shape[0] * self.shape[1] * self.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedArray({self.shape[0]}×{self.shape[1]} float32 in {len(self.parts)} shards)"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if len(self.parts) == 1:
            whole = self.parts[0]
        elif not self.parts:
            whole = np.zeros(self.shape, np.float32)
        else:
            whole = np.concatenate(self.parts)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key):
        if len(self.parts) == 1:  # exactly a memory-mapped array's semantics
            return self.parts[0][key]
        if isinstance(key, tuple):
            rows, *rest = key
            picked = self[rows]
            return picked[(slice(None), *rest)] if picked.ndim == 2 else picked[tuple(rest)]
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self.rows(start, stop)
            return self.take(np.arange(start, stop, step))
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            key = np.flatnonzero(key)
        return self.take(key)

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard number holding each id."""
        return np.searchsorted(self.starts, ids, side="right") - 1

    def take(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows `ids` (any order, repeats allowed, negative from the end), gathered shard by shard into one
        array."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(self)
        ids = np.where(ids < 0, ids + n, ids)
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise IndexError(f"row {bad} is out of range for a gallery of {n} rows")
        out = np.empty((len(ids), self.shape[1]), np.float32)
        if len(self.parts) == 1:
            return np.take(self.parts[0], ids, axis=0, out=out)
        shard = self.shard_of(ids)
        for number in np.unique(shard):
            mine = shard == number
            out[mine] = self.parts[number][ids[mine] - self.starts[number]]
        return out

    def rows(self, start: int, stop: int) -> np.ndarray | ShardedArray:
        """Rows start … stop − 1: a zero-copy view when one shard holds them all, else a `ShardedArray` of views."""
        if stop <= start:
            return np.zeros((0, self.shape[1]), np.float32)
        first, last = (int(s) for s in self.shard_of(np.array([start, stop - 1])))
        if first == last:
            base = self.starts[first]
            return self.parts[first][start - base : stop - base]
        return self.slice(start, stop)

    def slice(self, start: int, stop: int) -> ShardedArray:
        """Rows start … stop − 1 as a `ShardedArray` of zero-copy views, whatever the shards."""
        parts, origins = [], []
        for number, part in enumerate(self.parts):
            base = int(self.starts[number])
            lo, hi = max(start, base), min(stop, base + len(part))
            if lo < hi:
                parts.append(part[lo - base : hi - base])
                file, first = self.origins[number]
                origins.append((file, first + lo - base))
        return ShardedArray(parts, self.shape[1], origins)

    def sources(self, start: int = 0, stop: int | None = None) -> list[tuple[str, int, int]] | None:
        """(`.npy` file, first row in it, rows) behind rows start … stop − 1, in order; None when some rows are held
        in memory rather than in a file."""
        view = self.slice(start, len(self) if stop is None else stop)
        if any(file is None for file, _ in view.origins):
            return None
        return [(str(file), first, len(part)) for (file, first), part in zip(view.origins, view.parts)]

    def blocks(
        self, start: int = 0, stop: int | None = None, block_rows: int = BLOCK_ROWS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, rows) for consecutive blocks of at most `block_rows` rows, each a zero-copy view inside one
        shard: the way to read a gallery that does not fit in memory."""
        stop = len(self) if stop is None else min(stop, len(self))
        for number, part in enumerate(self.parts):
            base = int(self.starts[number])
            lo, hi = max(start, base), min(stop, base + len(part))
            for first in range(lo, hi, block_rows):
                yield first, part[first - base : min(hi, first + block_rows) - base]
