"""Exact search from a 16-bit scan: low-precision scores select candidates, fp32 re-ranks them.

Why: on CPUs with bf16 matrix units (AMX, AVX-512-BF16) a bf16 product runs at about twice the
fp32 rate and reads half the bytes, so both batched and single-query exact search can beat the
fp32 roofline. The result stays exact *by construction*, not most of the time:

For unit vectors q, x rounded to a format with unit roundoff u (bf16: 2⁻⁸, fp16: 2⁻¹¹), products
accumulated in fp32 over d terms and the result rounded back to the format,
    |s̃ − s| ≤ b = (2u + u²) + γ_d (1 + u)² + u (1 + 2u + u² + γ_d (1 + u)²),   γ_d = d·2⁻²⁴ / (1 − d·2⁻²⁴)
(Cauchy–Schwarz bounds Σ|qᵢxᵢ| by 1). If a_k is the k-th largest approximate score and t_k the
k-th largest exact one, then a_k ≤ t_k + b, so every true top-k row has s̃ ≥ t_k − b ≥ a_k − 2b.
Any lower bound L ≤ a_k − 2b therefore keeps them all; re-scoring every row with s̃ ≥ L in fp32
returns exactly fp32 brute force's top k (ties: lower row first, as `brute` with numpy).

L comes cheaply from `brute.top_k_rows`'s trick: the k-th largest of G interleaved group maxima
is at most a_k. The precision is chosen by measurement at build time (the fastest of bf16 and fp16
that beats fp32 on this machine; fp32 itself, with its own tiny bound, where neither does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError
from ..runtime import as_float32_c
from .base import BuildStats, SearchMethod
from .brute import top_k_rows
from .rerank import is_memory_mapped

UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11, "fp32": 2.0**-24}
GROUPS = 16  # rows per group (interleaved); the groups' maxima bound the k-th score from below
SCORE_BLOCK_BYTES = 128 * 2**20  # the (queries × N) 16-bit score block of one pass
PROBE_ROWS, PROBE_QUERIES = 16384, 256  # the matrix product timed per precision at build time
DENSE_SHARE = 16  # a query with more than n/16 candidates is re-ranked by a dense fp32 product instead of gathers
RERANK_PAIRS = 131_072  # (query, row) pairs gathered at once: 2 × 131072 × d floats, 512 MiB at d = 512


def score_error_bound(precision: str, d: int) -> float:
    """The worst-case |approximate − exact| inner product of two unit vectors (module docstring)."""
    u = UNIT_ROUNDOFF[precision]
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    products = 2 * u + u * u
    accumulated = products + gamma * (1 + u) ** 2
    return accumulated + (u * (1 + accumulated) if precision != "fp32" else 0.0)


def _torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def measure_precisions(vectors: np.ndarray, candidates: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> dict[str, float]:
    """GFLOP/s of a (PROBE_QUERIES × d) @ (d × PROBE_ROWS) product per precision, on this machine now."""
    import torch

    rows = torch.from_numpy(np.array(vectors[:PROBE_ROWS], dtype=np.float32))  # a copy: a read-only memmap cannot back a tensor
    queries = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:PROBE_QUERIES]]
    rates = {}
    for precision in candidates:
        dtype = _torch_dtype(precision)
        x, q = rows.to(dtype), queries.to(dtype)
        with torch.inference_mode():
            torch.mm(q, x.T)  # warm-up: kernel selection, page faults
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                torch.mm(q, x.T)
                best = min(best, time.perf_counter() - t)
        rates[precision] = round(2 * q.shape[0] * x.shape[0] * x.shape[1] / best / 1e9, 1)
    return rates


class Exact16(SearchMethod):
    """Exact top-k: a 16-bit scan picks candidates within the proven error bound, fp32 re-ranks them."""

    kind = "exact16"

    def __init__(self, name: str = "exact16", metric: str = "ip", precision: str = "auto"):
        super().__init__(name, metric)
        if precision not in ("auto", *UNIT_ROUNDOFF):
            raise LookalikeError(f"unknown scan precision {precision!r}; use auto, bf16, fp16 or fp32")
        self.requested = precision
        self.precision = "fp32" if precision == "auto" else precision
        self.rates: dict[str, float] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # exact rows for re-ranking (memory-mapped when given so)
        self._scan = None  # torch tensor (N, d) in self.precision

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _build(self, vectors: np.ndarray) -> BuildStats:
        import torch

        t = time.perf_counter()
        self.vectors = vectors if is_memory_mapped(vectors) else as_float32_c(np.asarray(vectors))
        if self.requested == "auto":
            self.rates = measure_precisions(self.vectors)
            fastest = max(("bf16", "fp16"), key=lambda p: self.rates[p])
            self.precision = fastest if self.rates[fastest] > self.rates["fp32"] else "fp32"
        train = time.perf_counter() - t
        t = time.perf_counter()
        dtype = _torch_dtype(self.precision)
        scan = torch.empty(self.vectors.shape, dtype=dtype)
        for start in range(0, len(self.vectors), 65536):  # convert in blocks: never a second fp32 copy
            scan[start : start + 65536] = torch.from_numpy(np.array(self.vectors[start : start + 65536], dtype=np.float32))
        self._scan = scan
        return BuildStats(round(train, 4), round(time.perf_counter() - t, 4), 0)

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        """The scan copy is the rows themselves: convert the new set (at the precision measured at build)."""
        requested, self.requested = self.requested, self.precision
        try:
            self._build(np.concatenate([np.asarray(self.vectors)[keep], np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)]))
        finally:
            self.requested = requested
        return True

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "error_bound": round(score_error_bound(self.precision, max(1, self.dim)), 6)}
        if self.rates:
            out["gflops"] = self.rates
        return out

    def memory_bytes(self) -> int:
        scan = int(self._scan.numel() * self._scan.element_size()) if self._scan is not None else 0
        return scan + (0 if is_memory_mapped(self.vectors) else int(self.vectors.nbytes)) + int(self.ids.nbytes)

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        if params:
            self.set_params(**params)  # raises: no search-time parameters
        if self._scan is None:
            raise LookalikeError(f"{self.name} is not built; build or load it first")
        if queries.shape[1] != self.dim:
            raise LookalikeError(f"queries are {queries.shape[1]}-d but {self.name} holds {self.dim}-d vectors")
        n = len(self.vectors)
        k_eff = min(k, n)
        scores = np.full((len(queries), k), -np.inf if self.metric == "ip" else np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        block = max(1, SCORE_BLOCK_BYTES // (self._scan.element_size() * max(1, n)))
        for start in range(0, len(queries), block):
            s, p = self._block(queries[start : start + block], k_eff)
            scores[start : start + block, :k_eff] = np.maximum(2.0 - 2.0 * s, 0.0) if self.metric == "l2" else s
            positions[start : start + block, :k_eff] = p
        return scores, positions

    def _block(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        b, n = len(queries), len(self.vectors)
        bound = score_error_bound(self.precision, self.dim)
        with torch.inference_mode():
            approx = torch.mm(torch.from_numpy(queries).to(self._scan.dtype), self._scan.T)  # (b, n)
            m = n // GROUPS
            if m < k:  # too few rows to prune: every row is a candidate
                rows = np.repeat(np.arange(b), n)
                cols = np.tile(np.arange(n), b)
            else:
                # group j holds rows j, j + m, j + 2m, …: reducing over the middle axis reads contiguous
                # slices (6× faster than groups of consecutive rows, measured on 671 × 100k bf16 scores)
                grid = approx[:, : m * GROUPS].view(b, GROUPS, m)
                maxima = grid.amax(dim=1)  # (b, m): the k-th largest is ≤ the k-th largest approximate score
                kth = torch.topk(maxima, k, dim=1, sorted=False).values.amin(dim=1).float()
                floor = _round_down(kth - 2 * bound, self._scan.dtype)  # L ≤ a_k − 2b, exactly representable
                r, j = torch.nonzero(maxima >= floor[:, None], as_tuple=True)
                vals = grid[r, :, j]  # (c, GROUPS) approximate scores of the candidate groups' rows
                keep = vals >= floor[r][:, None]
                g = torch.nonzero(keep, as_tuple=True)
                rows = r[g[0]].numpy()
                cols = (j[g[0]] + m * g[1]).numpy()
                if m * GROUPS < n:  # the last n mod GROUPS rows are outside the grid: always candidates
                    rows = np.concatenate([rows, np.repeat(np.arange(b), n - m * GROUPS)])
                    cols = np.concatenate([cols, np.tile(np.arange(m * GROUPS, n), b)])
        return self._rerank(queries, rows, cols, k)

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """fp32 top k among each query's candidates (rows, cols): gathered where they are few, a dense product where not.

        Densely packed data (near-duplicate images, an untrained model's embeddings) can leave most of the
        gallery within the error bound; gathering those rows one by one would cost more memory and time
        than a plain fp32 product, so such queries get the product (`brute.top_k_rows`, the same ties).
        """
        b, n = len(queries), len(self.vectors)
        counts = np.bincount(rows, minlength=b)
        dense = np.flatnonzero((counts > max(k, n // DENSE_SHARE)) | (counts < k))  # < k: only NaN scores do that
        scores = np.empty((b, k), dtype=np.float32)
        positions = np.empty((b, k), dtype=np.int64)
        if len(dense):
            block = max(1, SCORE_BLOCK_BYTES // (4 * n))
            for start in range(0, len(dense), block):
                chosen = dense[start : start + block]
                scores[chosen], positions[chosen] = top_k_rows(queries[chosen] @ np.asarray(self.vectors).T, k)
        sparse = ~np.isin(rows, dense)
        rows, cols = rows[sparse], cols[sparse]
        if len(rows):
            exact = np.concatenate([_exact_scores(queries, self.vectors, rows[s : s + RERANK_PAIRS], cols[s : s + RERANK_PAIRS]) for s in range(0, len(rows), RERANK_PAIRS)])
            order = np.lexsort((cols, -exact, rows))  # by query, then best score, then lower row
            first = np.searchsorted(rows[order], np.unique(rows))
            pick = order[first[:, None] + np.arange(k)]
            kept = rows[pick[:, 0]]
            scores[kept], positions[kept] = exact[pick], cols[pick].astype(np.int64, copy=False)
        return scores, positions

    def _save(self, folder: Path) -> None:
        """Nothing to write: the scan copy is rebuilt from the gallery's embeddings.npy at load."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "requested_precision": self.requested}

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> Exact16:
        from .rerank import rows_view

        method = cls(info["name"], info["metric"], info["params"]["precision"])  # the precision measured at build
        method.build(rows_view(vectors, np.load(Path(folder) / "ids.npy")))
        method.rates = info["params"].get("gflops", {})
        return method


def _round_down(values, dtype):
    """`values` (fp32) converted to `dtype`, never above them: a floor rounded up could drop a candidate."""
    import torch

    converted = values.to(dtype)
    lower = torch.nextafter(converted, torch.full_like(converted, -float("inf")))
    return torch.where(converted.float() > values, lower, converted)


def _exact_scores(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """fp32 inner products of (query row, gallery row) pairs; a memory-mapped gallery is read in file order."""
    if is_memory_mapped(vectors):
        order = np.argsort(cols, kind="stable")
        gathered = np.empty((len(cols), vectors.shape[1]), dtype=np.float32)
        gathered[order] = vectors[cols[order]]
    else:
        gathered = vectors[cols]
    return np.einsum("cd,cd->c", queries[rows], gathered).astype(np.float32, copy=False)
