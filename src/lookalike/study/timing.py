"""Search latency measured the same way in every experiment.

Two numbers per method: `single_ms`, the median time of one query searched alone (what
the original study timed, and what an interactive user feels), and `batch_ms`, the time of
one call with all queries divided by their count (throughput). Both are per query, in ms.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..search import SearchMethod

SINGLE_QUERIES = 200
BATCH_REPEATS = 3


@dataclass(frozen=True)
class Latency:
    single_ms: float  # median per-query latency, one query per call
    single_p99_ms: float
    batch_ms: float  # per-query latency with every query in one call (median of repeats)
    single_queries: int
    batch_queries: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(
    method: SearchMethod,
    queries: np.ndarray,
    k: int,
    params: dict[str, Any] | None = None,
    single_queries: int = SINGLE_QUERIES,
    batch_repeats: int = BATCH_REPEATS,
) -> tuple[Latency, np.ndarray]:
    """Time `method` on `queries`; also returns the batch call's result ids, for accuracy."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if params:
        method.set_params(**params)
    method.search(queries[:1], k)  # warm-up: page in memory-mapped data, JIT, thread pools
    singles = []
    for q in queries[: min(single_queries, len(queries))]:
        t = time.perf_counter()
        method.search(q[None], k)
        singles.append(time.perf_counter() - t)
    batch, ids = [], None
    for _ in range(batch_repeats):
        t = time.perf_counter()
        _, ids = method.search(queries, k)
        batch.append(time.perf_counter() - t)
    return (
        Latency(
            single_ms=1000 * statistics.median(singles),
            single_p99_ms=1000 * float(np.percentile(singles, 99)),
            batch_ms=1000 * statistics.median(batch) / len(queries),
            single_queries=len(singles),
            batch_queries=len(queries),
        ),
        ids,
    )
