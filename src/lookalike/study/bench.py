"""The study's timing table for one gallery, and the combined table over several (one column per model).

Every method goes through the SearchMethod interface and `measure_latency`; accuracy is
recall@k against exact search and label precision@k, on held-out queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime
from ..gallery import Gallery
from ..search import get_method
from .core import NOT_REAL_TAG, fmt, format_params, not_real_banner, write_outputs
from .metrics import ground_truth, precision_at_k, recall_at_k
from .timing import Latency, measure_latency

DEFAULT_METHODS = ("brute", "flat", "ivf")


@dataclass(frozen=True)
class MethodResult:
    method: str
    params: dict[str, Any]
    latency: Latency
    memory_bytes: int
    train_seconds: float
    build_seconds: float
    built_now: bool  # False when a saved index was loaded (its build time is the recorded one)
    recall: float  # recall@k against exact search
    precision: float  # label precision@k
    scanned: float | None = None  # share of the database each query was compared with (IVF: counted by FAISS)


@dataclass(frozen=True)
class BenchResult:
    gallery: str
    provenance: str
    real: bool  # pretrained/file weights on real data; False for random weights or generated data
    model: str
    dim: int
    extract_ms_per_image: float | None
    k: int
    metric: str
    queries: str  # how queries were held out
    methods: list[MethodResult]
    peak_rss_bytes: int
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = [
            f"# lookalike bench — {self.model}",
            "",
            f"**{self.provenance}**" + ("" if self.real else f"  \n{not_real_banner()}"),
            "",
            (
                f"Queries: {self.queries}; k = {self.k}; metric = {self.metric}; threads ="
                f" {self.environment.get('threads')}."
            ),
            f"Extraction: {fmt(self.extract_ms_per_image)} ms/image. Peak RSS: {self.peak_rss_bytes / 2**20:.0f} MiB.",
            "",
            "| method | params | single ms/query (median) | single p99 ms | batched ms/query | memory MiB | train s |"
            " build s | scanned per query | recall@k vs exact | label P@k |" + ("" if self.real else " provenance |"),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("" if self.real else "---|"),
        ]
        for m in self.methods:
            rows.append(
                f"| {m.method} | {format_params(m.params)} | {m.latency.single_ms:.3f} | {m.latency.single_p99_ms:.3f}"
                f" | {m.latency.batch_ms:.4f} | {m.memory_bytes / 2**20:.2f} | {m.train_seconds:.2f} |"
                f" {m.build_seconds:.2f} | {'–' if m.scanned is None else f'{100 * m.scanned:.1f}%'} | {m.recall:.4f} |"
                f" {m.precision:.4f} |" + ("" if self.real else f" {NOT_REAL_TAG} |")
            )
        rows += [
            "",
            (
                f"single = one query per call over {self.methods[0].latency.single_queries} queries; batched = all"
                f" {self.methods[0].latency.batch_queries} queries in one call, divided by their count. *scanned per"
                " query*: the share of the database each query was compared with (for IVF counted by FAISS; on"
                " clustered data it is often far above nprobe/nlist)."
            ),
        ]
        return "\n".join(rows) + "\n"


def run_bench(
    gallery: Gallery,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    k: int = 10,
    metric: str = "ip",
    max_queries: int = 1000,
    single_queries: int = 200,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> BenchResult:
    partition = gallery.partition(max_queries=max_queries)
    queries = np.asarray(gallery.embeddings[partition.query_ids])
    truth = ground_truth(gallery, partition, k, metric)
    labels = gallery.labels
    results = []
    for name in methods:
        options = {"nlist": nlist} if (nlist and name not in ("brute", "flat")) else {}
        method, built_now = get_method(gallery, name, metric, partition.database_ids, **options)
        params = {"nprobe": nprobe} if (nprobe and "nprobe" in method.search_param_ranges()) else None
        latency, found = measure_latency(method, queries, k, params, single_queries=single_queries)
        stats = method.build_stats
        results.append(
            MethodResult(
                method=name,
                params=method.params(),
                latency=latency,
                memory_bytes=method.memory_bytes(),
                train_seconds=stats.train_seconds if stats else 0.0,
                build_seconds=stats.build_seconds if stats else 0.0,
                built_now=built_now,
                recall=recall_at_k(found, truth, k),
                precision=precision_at_k(found, labels[partition.query_ids], labels, k),
                scanned=method.scanned_fraction(queries, k, params),
            )
        )
        del method
    return BenchResult(
        gallery=str(gallery.path),
        provenance=gallery.provenance(),
        real=gallery.is_real,
        model=gallery.model,
        dim=gallery.dim,
        extract_ms_per_image=gallery.manifest.timings.get("ms_per_image"),
        k=k,
        metric=metric,
        queries=partition.how,
        methods=results,
        peak_rss_bytes=runtime.peak_rss_bytes(),
        environment=runtime.environment(),
    )


def write_bench(result: BenchResult, folder: Path) -> dict[str, Path]:
    return write_outputs(folder, "bench", result.to_markdown(), result.to_dict())


def combined_table(results: list[BenchResult]) -> str:
    """The study's table: one column per gallery (model), one row per measured quantity."""
    if not results:
        return ""
    all_real = all(r.real for r in results)
    header = "| | " + " | ".join(r.model for r in results) + " |" + ("" if all_real else " provenance |")
    lines = [header, "|---|" + "---:|" * len(results) + ("" if all_real else "---|")]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |" + ("" if all_real else f" {NOT_REAL_TAG} |"))

    row("feature dim", [str(r.dim) for r in results])
    row("extraction ms/image", [fmt(r.extract_ms_per_image) for r in results])
    names = [m.method for m in results[0].methods]
    for name in names:
        per = [next((m for m in r.methods if m.method == name), None) for r in results]
        row(f"{name} ms/query, single", [fmt(m.latency.single_ms) if m else "–" for m in per])
        row(f"{name} ms/query, batched", [fmt(m.latency.batch_ms, 4) if m else "–" for m in per])
        row(f"{name} memory MiB", [f"{m.memory_bytes / 2**20:.2f}" if m else "–" for m in per])
        if any(m and m.train_seconds for m in per):
            row(
                f"{name} train / build s", [f"{m.train_seconds:.2f} / {m.build_seconds:.2f}" if m else "–" for m in per]
            )
        if any(m and "nlist" in m.params for m in per):
            row(
                f"{name} nlist / nprobe",
                [f"{m.params.get('nlist')} / {m.params.get('nprobe')}" if m else "–" for m in per],
            )
            row(
                f"{name} gallery scanned per query",
                [f"{100 * m.scanned:.1f}%" if m and m.scanned is not None else "–" for m in per],
            )
        row(f"{name} recall@{results[0].k} vs exact", [f"{m.recall:.4f}" if m else "–" for m in per])
    row(f"label precision@{results[0].k} (exact)", [f"{r.methods[0].precision:.4f}" for r in results])
    row("peak RSS MiB", [f"{r.peak_rss_bytes / 2**20:.0f}" for r in results])
    row("weights / data", [("REAL" if r.real else "⚠ RANDOM weights or GENERATED data") for r in results])
    notes = [f"- {r.model}: {r.provenance}; queries: {r.queries}" for r in results]
    return "\n".join(lines + [""] + notes) + "\n"
