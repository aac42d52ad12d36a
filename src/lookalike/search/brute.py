"""Exact cosine search by matrix product, in numpy or torch.

Queries go in blocks so the (block × N) score matrix stays under `score_block_bytes`
whatever the number of queries; top-k is a partial selection (torch.topk, or `top_k_rows`
for numpy), never a full sort of N scores.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c
from .base import BuildStats, SearchMethod

BACKENDS = ("numpy", "torch")
# Bigger query blocks make a more efficient matrix product: on 100k × 512 (2-core EPYC, 1 thread) a
# 64 MiB block (167 queries) ran at 63 (torch) / 78 (numpy) GFLOP/s, a 256 MiB block (671) at 75 / 92.
SCORE_BLOCK_BYTES = 256 * 2**20
SELECT_GROUPS = 16  # see top_k_rows
FILTERED_KEPT = 4  # filtered copies of the rows kept per method (`exact_within`): at most 4 filters × their rows


class BruteForce(SearchMethod):
    kind = "brute"

    def __init__(
        self,
        name: str = "brute",
        metric: str = "ip",
        backend: str = "torch",
        score_block_bytes: int = SCORE_BLOCK_BYTES,
    ):
        super().__init__(name, metric)
        if backend not in BACKENDS:
            raise LookalikeError(f"unknown brute-force backend {backend!r}; use numpy or torch")
        self.backend = backend
        self.score_block_bytes = score_block_bytes
        self.vectors = np.zeros((0, 0), dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _build(self, vectors: np.ndarray) -> BuildStats:
        t = time.perf_counter()
        self.vectors = as_float32_c(np.asarray(vectors))  # a memmap is read into RAM once, here
        return BuildStats(0.0, time.perf_counter() - t, 0)

    def params(self) -> dict[str, Any]:
        return {"backend": self.backend}

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        self.vectors = np.concatenate(
            [np.asarray(self.vectors)[keep], as_float32_c(np.asarray(vectors)).reshape(-1, self.dim)]
        )
        self._tv = None
        return True

    def scanned_fraction(self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None) -> float | None:
        return 1.0  # every query is scored against every row

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes + self.ids.nbytes)

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        if params:
            self.set_params(**params)  # raises: brute force has no search parameters
        n = len(self.vectors)
        k_eff = min(k, n)
        block = max(1, self.score_block_bytes // (4 * max(1, n)))
        scores = np.full((len(queries), k), -np.inf if self.metric == "ip" else np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        run = self._block_torch if self.backend == "torch" else self._block_numpy
        # One score buffer per call, reused by every block: a fresh 256 MiB array per block costs its page
        # faults each time (numpy brute on 100k × 512 went from 1.57× to 1.23× the sgemm roofline).
        buffer = np.empty((min(block, len(queries)), n), dtype=np.float32)
        for start in range(0, len(queries), block):
            q = queries[start : start + block]
            s, p = run(q, k_eff, buffer[: len(q)])
            if self.metric == "l2":
                s = np.maximum(2.0 - 2.0 * s, 0.0)  # |x−y|² = 2 − 2⟨x,y⟩ for unit vectors
            scores[start : start + block, :k_eff] = s
            positions[start : start + block, :k_eff] = p
        return scores, positions

    def search_within(
        self, queries: np.ndarray, k: int, rows: np.ndarray, params: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact: the matching rows alone are scored, so the answer is the true top k among them (and a filter that
        keeps a tenth of the rows costs about a tenth of the scan)."""
        if params:
            self.set_params(**params)
        return exact_within(self, self.vectors, queries, k, rows)

    def _block_numpy(self, q: np.ndarray, k: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k_rows(np.matmul(q, self.vectors.T, out=out), k)

    def _block_torch(self, q: np.ndarray, k: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            sims = torch.mm(torch.from_numpy(q), self._torch_vectors().T, out=torch.from_numpy(out))
            values, indices = torch.topk(sims, k, dim=1, largest=True, sorted=True)
        return values.numpy(), indices.numpy()

    def _torch_vectors(self):
        import torch

        if getattr(self, "_tv", None) is None or self._tv.data_ptr() != self.vectors.ctypes.data:
            import warnings

            with warnings.catch_warnings():  # a read-only memmap is fine: the tensor is only ever read
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self._tv = torch.from_numpy(self.vectors)
        return self._tv

    def _save(self, folder: Path) -> None:
        """Nothing to write: brute force searches the gallery's own embeddings.npy."""

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> BruteForce:
        method = cls(info["name"], info["metric"], **info["params"])
        ids = np.load(Path(folder) / "ids.npy")
        method.vectors = as_float32_c(
            vectors[ids] if len(ids) != len(vectors) or not np.array_equal(ids, np.arange(len(vectors))) else vectors
        )
        return method


def exact_within(
    method: SearchMethod, vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of `method`'s rows (`vectors`, by position) restricted to the gallery ids `rows`: brute force over
    the matching rows alone."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    key = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()  # the copies go when ids change (base.ids)
    kept: OrderedDict = method.__dict__.setdefault("_within", OrderedDict())
    sub = kept.get(key)
    if sub is None:  # gathered once per filter, then searched like any gallery: a tenth of the rows, a tenth the scan
        positions = method.positions_within(rows)
        sub = BruteForce(method.name, method.metric, backend="numpy")
        sub.build(np.asarray(vectors[positions]), method.ids[positions])
        kept[key] = sub
        while len(kept) > FILTERED_KEPT:
            kept.popitem(last=False)
    return sub.search(queries, k)


def top_k_rows(scores: np.ndarray, k: int, groups: int = SELECT_GROUPS) -> tuple[np.ndarray, np.ndarray]:
    """The k largest scores of each row of (b, n) `scores` and their columns, best first (ties: lower column).

    Why not np.argpartition alone: on 100k columns it costs about as much as the matrix product
    that made the scores. Instead one vectorised pass views each row as `groups` interleaved
    slices and takes their element-wise maximum (n/groups maxima). The k-th largest maximum is
    at most the row's k-th largest score (k distinct scores reach it), so only the columns whose
    maximum reaches it can hold the top k: their few `groups` scores are gathered and sorted.
    """
    b, n = scores.shape
    m = n // groups
    threshold = None
    if m >= k:
        grid = scores[:, : m * groups].reshape(b, groups, m)
        maxima = grid.max(axis=1)
        threshold = np.partition(maxima, m - k, axis=1)[:, m - k]
    if threshold is None or np.isnan(threshold).any():  # too few columns to prune, or NaN scores: plain selection
        cols = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (b, n))
        rows = np.repeat(np.arange(b), cols.shape[1])
        cols = cols.ravel()
        vals = scores[rows, cols]
    else:
        r, j = np.nonzero(maxima >= threshold[:, None])
        rows = np.repeat(r, groups)
        cols = (j[:, None] + m * np.arange(groups)).ravel()
        vals = grid[r, :, j].ravel()
        if m * groups < n:  # the last n mod groups columns are not in the grid: always candidates
            rows = np.concatenate([rows, np.repeat(np.arange(b), n - m * groups)])
            cols = np.concatenate([cols, np.tile(np.arange(m * groups, n), b)])
            vals = np.concatenate([vals, scores[:, m * groups :].ravel()])
    order = np.lexsort((cols, -vals, rows))  # by row, then best score, then column
    pick = order[np.searchsorted(rows[order], np.arange(b))[:, None] + np.arange(k)]
    return vals[pick], cols[pick].astype(np.int64, copy=False)
