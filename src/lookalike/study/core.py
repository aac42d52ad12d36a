"""What every experiment shares: query sets, measuring one search setting, the recall-target search, and output files.

bench, tradeoff, tune and scale each take a frozen config (or plain arguments) and return a
result object; they build on these pieces and never re-implement them, so a query set, a
ground truth, a "cheapest setting that reaches the target" or a not-real banner means the same
in every table. Ground truth is `metrics.exact_neighbours` everywhere.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadImageError, DataError, LookalikeError
from ..gallery import Gallery, atomic_write_bytes, atomic_write_json
from ..search import SearchMethod
from .metrics import Accuracy, accuracy
from .timing import Latency, measure_latency

# Every output that random weights, generated data or synthetic rows produced says so: a row's tag, a banner above.
NOT_REAL_TAG = "⚠ random weights / generated data"


def not_real_banner(scope: str = "") -> str:
    """The one banner above such an output (markdown); `scope` narrows it, e.g. " for the galleries marked below"."""
    return (
        f"**⚠ NOT A REAL RESULT{scope}: random weights, generated data and/or synthetic rows. Timings are valid"
        " measurements; accuracy figures say nothing about real images.**"
    )


# --- query sets ---


@dataclass(frozen=True)
class QuerySet:
    """Query vectors with their labels, and the gallery rows they are searched against."""

    vectors: np.ndarray  # (Q, d) float32, unit length
    labels: np.ndarray  # (Q,) object: label strings, or None when unlabelled
    database_ids: np.ndarray  # gallery ids that are searched; never the queries themselves
    how: str

    def subset(self, rows: np.ndarray, how: str) -> QuerySet:
        return QuerySet(self.vectors[rows], self.labels[rows], self.database_ids, how)


def held_out_queries(gallery: Gallery, max_queries: int = 1000, seed: int = 0) -> QuerySet:
    partition = gallery.partition(max_queries=max_queries, seed=seed)
    vectors = np.ascontiguousarray(gallery.embeddings[partition.query_ids], dtype=np.float32)
    return QuerySet(vectors, gallery.labels[partition.query_ids], partition.database_ids, f"held out: {partition.how}")


def list_queries(gallery: Gallery, list_file: str, max_queries: int = 1000) -> QuerySet:
    """Embed the images named in `list_file` (path, optional tab-separated label) with the gallery's model.

    The database is the whole gallery minus any image that is also a query, so no query finds itself.
    """
    from ..data.datasets import load_collection
    from ..embed.query import QueryEmbedder

    records = load_collection(list_file).records[:max_queries]
    embedder = QueryEmbedder(gallery)
    vectors, labels, skipped = [], [], []
    for record in records:
        try:
            vectors.append(embedder.embed_path(record.path)[0].reshape(-1))
            labels.append(record.label)
        except (BadImageError, DataError, OSError) as exc:
            skipped.append(f"{record.path}: {exc}")
    if not vectors:
        raise DataError(f"none of the {len(records)} images listed in {list_file} could be read; check the paths in it")
    for line in skipped:
        print(f"skipped query {line}", file=sys.stderr)
    query_paths = {r.path for r in records}
    database = np.asarray([i for i, p in enumerate(gallery.paths) if p not in query_paths], dtype=np.int64)
    how = (
        f"{len(vectors)} images from {list_file}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
        + f" vs {len(database)} gallery images"
    )
    return QuerySet(np.asarray(vectors, dtype=np.float32), np.asarray(labels, dtype=object), database, how)


def split_queries(queries: QuerySet, seed: int = 0) -> tuple[QuerySet, QuerySet]:
    """A seeded half/half split into validation (to choose a setting) and test (to report it)."""
    if len(queries.vectors) < 2:
        raise LookalikeError(
            "tuning needs at least 2 held-out queries (one to choose with, one to test); use a gallery with more images"
        )
    order = np.random.default_rng(seed).permutation(len(queries.vectors))
    half = len(order) // 2
    val, test = np.sort(order[:half]), np.sort(order[half:])
    return queries.subset(val, f"{len(val)} of {len(order)} queries {queries.how}"), queries.subset(
        test, f"the other {len(test)}"
    )


# --- measuring one setting ---


def evaluate(
    method: SearchMethod,
    queries: QuerySet,
    truth: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    params: dict[str, Any] | None,
    single_queries: int,
) -> tuple[Latency, Accuracy]:
    """Latency (single and batched) and accuracy of one search setting, measured the way every experiment does.

    A memory-mapped method starts a fresh working set here, so its memory_bytes() afterwards
    counts the pages this setting's queries read.
    """
    if hasattr(method, "reset_working_set"):
        method.reset_working_set()
    latency, found = measure_latency(method, queries.vectors, k, params, single_queries=single_queries)
    return latency, accuracy(found, truth, queries.labels, gallery_labels, k, queries.database_ids)


def cold_latency(method: SearchMethod, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> float | None:
    """Cold-cache single-query ms for methods that read a memory-mapped file; None for the rest."""
    return method.cold_single_ms(queries, k, params) if hasattr(method, "cold_single_ms") else None


# --- the recall-target search ---


@dataclass(frozen=True)
class TargetSearch:
    """The cheapest value found that reaches the target (or the last tried), and every value's score."""

    value: int | None
    score: float
    reached: bool
    tried: dict[int | None, float]


def cheapest_reaching(
    values: Sequence[int | None], score: Callable[[int | None], float], target: float, refine_steps: int = 0
) -> TargetSearch:
    """Walk `values` cheapest first and stop at the first whose score reaches `target`.

    With `refine_steps`, whole-number values are then bisected (at most that many times) between
    the last miss and the first hit, so a coarse ladder (powers of two) ends near the cheapest
    value. Each value is scored once.
    """
    tried: dict[int | None, float] = {}

    def trial(value: int | None) -> float:
        if value not in tried:
            tried[value] = score(value)
        return tried[value]

    miss, hit = None, None
    for value in values:
        if trial(value) >= target:
            hit = value
            break
        miss = value
    if hit is None:
        last = values[-1]
        return TargetSearch(last, tried[last], False, tried)
    if refine_steps and miss is not None:
        for _ in range(refine_steps):
            if hit - miss <= 1:
                break
            mid = (miss + hit) // 2
            miss, hit = (mid, hit) if trial(mid) < target else (miss, mid)
    return TargetSearch(hit, tried[hit], True, tried)


def doubling(lo: int, hi: int) -> list[int]:
    """lo, 2·lo, 4·lo, … up to hi (included): the coarse ladder that `cheapest_reaching(refine_steps=…)` bisects."""
    values, value = [lo], lo
    while value < hi:
        value = min(hi, value * 2)
        values.append(value)
    return values


# --- output ---


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "–"


def csv_text(rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
    """CSV of dict rows (columns from the first row), each with the `extra` columns (e.g. provenance) appended."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) + list(extra or {}))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **(extra or {})})
    return buffer.getvalue()


def write_outputs(
    folder: Path, stem: str, markdown: str, data: dict[str, Any], csv: str | None = None
) -> dict[str, Path]:
    """`<stem>.md`, `<stem>.json` (strict JSON: NaN → null) and, when given, `<stem>.csv` in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / f"{stem}.md", "json": folder / f"{stem}.json"}
    atomic_write_bytes(paths["md"], markdown.encode())
    atomic_write_json(paths["json"], data)
    if csv is not None:
        paths["csv"] = folder / f"{stem}.csv"
        atomic_write_bytes(paths["csv"], csv.encode())
    return paths
