"""`lookalike scale`: how the end-to-end per-query latency profile shifts as the gallery grows (10k → 100k → 1M).

Per size it measures, through the SearchMethod interface for every method alike: search time
per query (single and batched), build/train time and memory, recall@k against exact search and
label precision@k, with each approximate method's search parameter (nprobe, efSearch) chosen
per size by a small sweep to reach the recall target. The held-out queries are split as `tune`
splits them: the sweep sees only the validation half, and the recall and label figures reported
are measured on the other (test) half, so they are not the figures the parameter was chosen on.
Extraction is a constant cost per image, read from the gallery's manifest: one image embedded
alone (batch 1) for the end-to-end single-query figure, batch throughput for the batched one.

Sizes are nested prefixes of one pool of rows: the gallery's own database rows (seeded order),
then real embeddings from `--extra-embeddings`, then SYNTHETIC rows drawn from a model fitted to
the real ones (`lookalike.data.vectors.fit_cluster_model`). Queries are always the gallery's real
held-out queries. Every table row, the plot and the JSON say which sizes hold synthetic rows.

The pool is a gallery written on disk as shards, block by block (`write_array_gallery_blocks`),
in a work folder removed afterwards (`--work`, `--keep-work`): at 10M × 512 it is 20 GB, more
than memory. A size whose rows would not fit in the memory available (with room for a method's
copy of them), or every size with `--out-of-core`, takes the out-of-core path: its methods are
the out-of-core ones (`ivfpq-ondisk`, built part by part from the shards; the in-memory methods
are skipped there, each with a line saying why), its ground truth is exact search streamed over
the shards (`metrics.streamed_top_k`), and nothing holds the whole pool. At every size each
phase's resident memory is sampled from /proc, anonymous and file-backed apart (`resident`), and
methods that read files at search time are also timed cold, after their files were dropped from
the page cache.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime
from ..data.vectors import ClusterModel, fit_cluster_model, neighbour_stats
from ..errors import GalleryError, LookalikeError
from ..gallery import DEFAULT_SHARD_ROWS, Gallery, ShardedArray, open_gallery
from ..gallery.generated import Segment, write_array_gallery_blocks
from ..search import SearchMethod, make_method
from ..search.factory import method_key
from ..search.registry import METHODS
from .core import (
    NOT_REAL_TAG,
    QuerySet,
    cheapest_reaching,
    doubling,
    fmt,
    format_params,
    not_real_banner,
    split_queries,
    write_outputs,
)
from .metrics import accuracy, exact_top_k, recall_at_k
from .resident import Resident, ResidentSampler, available_memory_bytes
from .timing import Latency, measure_latency

DEFAULT_METHODS = ("brute", "flat", "ivf")
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
FIT_CHECK_ROWS = 10_000  # rows compared between the real and the synthetic sample (NN statistics)
BISECT_STEPS = 3  # after doubling overshoots the target, narrow the parameter down this many times
DUPLICATE_DECIMALS = 6
BLOCK_ROWS = 65_536
OUT_OF_CORE_METHOD = "ivfpq-ondisk"  # what the out-of-core path measures when --methods names no out-of-core method
OUT_OF_CORE_KINDS = ("faiss-ondisk",)  # method kinds that never hold the rows in memory
IN_MEMORY_FACTOR = 3  # an in-memory size holds its rows, a method's copy of them, and room for the rest
METADATA_ROW_BYTES = 64  # a pool row's metadata on disk (path, label, split in parquet), generously
DISK_MARGIN = 1.1
POOL_FOLDER, INDEX_FOLDER = "pool", "indexes"  # in the work folder


# --- configuration and results ---


@dataclass(frozen=True)
class ScaleConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    methods: tuple[str, ...] = DEFAULT_METHODS
    k: int = 10
    metric: str = "ip"
    target_recall: float = 0.95
    max_queries: int = 1000  # held-out queries for recall and label precision
    timing_queries: int = 200  # a sample of them timed per method: one by one, and as one batch
    extra_embeddings: str | None = None  # .npy of real embeddings (same model), or a larger gallery folder
    seed: int = 0
    train_points_per_list: int | None = None  # IVF k-means points per list (None: the library default)
    out_of_core: bool = False  # every size on the out-of-core path, whatever would fit in memory
    work: str | None = None  # folder for the pool gallery and the on-disk indexes (None: a temporary folder)
    keep_work: bool = False  # keep the pool gallery and the on-disk indexes after the run
    shard_rows: int = DEFAULT_SHARD_ROWS  # rows per shard of the pool gallery


@dataclass(frozen=True)
class Composition:
    """Where the rows of one gallery size come from; rows are taken in this order."""

    size: int
    gallery_rows: int  # the gallery's own database rows (real or generated: the provenance line says which)
    extra_rows: int  # real embeddings from --extra-embeddings
    synthetic_rows: int  # drawn from the fitted model

    @property
    def synthetic(self) -> bool:
        return self.synthetic_rows > 0

    def describe(self) -> str:
        parts = [f"{self.gallery_rows} gallery"] + ([f"{self.extra_rows} extra"] if self.extra_rows else [])
        parts += [f"{self.synthetic_rows} SYNTHETIC"] if self.synthetic_rows else []
        return " + ".join(parts)


@dataclass(frozen=True)
class Tuning:
    """The search parameters chosen to reach the recall target, and the sweep that chose them."""

    params: dict[str, Any]
    recall: float
    reached: bool
    sweep: list[dict]  # [{"nprobe": 4, "recall": 0.91}, …] in the order they were tried


@dataclass(frozen=True)
class ScalePoint:
    """One (size, method) measurement; latencies are ms per query."""

    size: int
    synthetic_rows: int  # > 0: this row's database holds synthetic embeddings
    method: str
    params: dict[str, Any]
    latency: Latency
    extract_ms_per_image: float | None  # batch throughput: what each image costs when extracted in batches
    memory_bytes: int
    train_seconds: float
    build_seconds: float
    recall: float  # recall@k against exact search, over the test queries (not the ones the parameter was tuned on)
    precision: float  # label precision@k over the same queries (NaN when no query is labelled)
    map: float  # label mAP@k
    target_reached: bool  # test recall ≥ target
    synthetic_result_share: float  # share of the method's top-k results that are synthetic rows
    sweep: list[dict] = field(default_factory=list)  # recall on the validation queries at each value tried
    val_recall: float = float("nan")  # recall@k on the validation queries at the chosen parameter
    extract_single_ms: float | None = None  # one image decoded and embedded alone (batch 1)
    out_of_core: bool = False  # measured on the out-of-core path: the rows stayed on disk
    disk_bytes: int = 0  # the index's files read at search time (ivfpq-ondisk's lists), beside memory_bytes in RAM
    cold_single_ms: float | None = None  # one query right after its files left the page cache (None: all in RAM)
    build_memory: Resident | None = None  # peak resident memory while building
    search_memory: Resident | None = None  # … while tuning, searching and timing (cold queries included)

    @property
    def index_bytes(self) -> int:
        """The index in all: what it holds in RAM plus its files on disk."""
        return self.memory_bytes + self.disk_bytes

    @property
    def end_to_end_single_ms(self) -> float | None:
        """One query image alone: its batch-1 embedding latency plus one single-query search."""
        return None if self.extract_single_ms is None else self.extract_single_ms + self.latency.single_ms

    @property
    def end_to_end_batch_ms(self) -> float | None:
        return None if self.extract_ms_per_image is None else self.extract_ms_per_image + self.latency.batch_ms


@dataclass(frozen=True)
class SizeRun:
    """How one size was measured: in memory or out of core and why, its exact ground truth, the methods skipped."""

    size: int
    out_of_core: bool
    reason: str  # why this path: the memory its rows need against the memory available, or --out-of-core
    exact_seconds: float  # exact ground truth of every held-out query (streamed over the shards)
    exact_memory: Resident
    skipped: dict[str, str] = field(default_factory=dict)  # method → why it was not measured at this size


@dataclass(frozen=True)
class PoolRun:
    """The pool gallery the run wrote on disk: every size is a prefix of its rows."""

    path: str
    rows: int
    shards: int
    bytes: int  # its embeddings on disk
    seconds: float
    memory: Resident
    kept: bool  # left on disk after the run (--keep-work)


@dataclass(frozen=True)
class ScaleResult:
    gallery: str
    provenance: str
    real: bool  # pretrained/file weights on real data, and no synthetic rows at any size
    model: str
    dim: int
    config: ScaleConfig
    extraction: dict  # ms_per_image and what it was measured on
    queries: str  # how the queries were held out
    accuracy_queries: int  # test queries: recall and label figures are over these
    timing_queries: int
    compositions: list[Composition]
    extension: dict | None  # how the synthetic rows were made, and the NN-statistics check; None if none were needed
    extra_source: str | None  # where the extra real rows came from (--extra-embeddings), if any were used
    points: list[ScalePoint]
    peak_rss_bytes: int
    seconds: float
    environment: dict = field(default_factory=dict)
    validation_queries: int = 0  # queries the search parameter was tuned on (never reported)
    sizes: list[SizeRun] = field(default_factory=list)
    pool: PoolRun | None = None
    available_memory_bytes: int = 0  # MemAvailable when the run began: what decided each size's path

    @property
    def any_synthetic(self) -> bool:
        return any(c.synthetic for c in self.compositions)

    @property
    def fully_real(self) -> bool:
        """Real weights on real data at every size: no random weights, generated data or synthetic rows."""
        return self.real and not self.any_synthetic

    def to_dict(self) -> dict:
        out = asdict(self)
        for point, raw in zip(self.points, out["points"]):
            raw["end_to_end_single_ms"] = point.end_to_end_single_ms
            raw["end_to_end_batch_ms"] = point.end_to_end_batch_ms
            raw["index_bytes"] = point.index_bytes
            for key in ("precision", "map", "val_recall"):  # NaN (no labelled query) is not valid JSON
                raw[key] = raw[key] if math.isfinite(raw[key]) else None
        out["any_synthetic"] = self.any_synthetic
        return out

    def csv_rows(self) -> list[dict]:
        rows = []
        for p in self.points:
            c = next(c for c in self.compositions if c.size == p.size)
            rows.append(
                {
                    "size": p.size,
                    "gallery_rows": c.gallery_rows,
                    "extra_rows": c.extra_rows,
                    "synthetic_rows": c.synthetic_rows,
                    "uses_synthetic_extension": c.synthetic,
                    "method": p.method,
                    "params": json.dumps(p.params, sort_keys=True),
                    "extract_ms_per_image": p.extract_ms_per_image,
                    "extract_single_ms": p.extract_single_ms,
                    "search_single_ms": round(p.latency.single_ms, 5),
                    "search_single_p99_ms": round(p.latency.single_p99_ms, 5),
                    "search_batch_ms": round(p.latency.batch_ms, 6),
                    "end_to_end_single_ms": _round(p.end_to_end_single_ms, 5),
                    "end_to_end_batch_ms": _round(p.end_to_end_batch_ms, 6),
                    "memory_bytes": p.memory_bytes,
                    "disk_bytes": p.disk_bytes,
                    "index_bytes": p.index_bytes,
                    "train_seconds": p.train_seconds,
                    "build_seconds": p.build_seconds,
                    "out_of_core": p.out_of_core,
                    "search_cold_single_ms": _round(p.cold_single_ms, 5),
                    **resident_columns("build", p.build_memory),
                    **resident_columns("search", p.search_memory),
                    f"recall_at_{self.config.k}": round(p.recall, 5),
                    f"validation_recall_at_{self.config.k}": round(p.val_recall, 5),
                    f"label_precision_at_{self.config.k}": round(p.precision, 5),
                    f"label_map_at_{self.config.k}": round(p.map, 5),
                    "target_recall": self.config.target_recall,
                    "target_reached": p.target_reached,
                    "synthetic_result_share": round(p.synthetic_result_share, 5),
                    "accuracy_queries": self.accuracy_queries,
                    "validation_queries": self.validation_queries,
                    "timing_queries": self.timing_queries,
                    "provenance": self.provenance if self.real else f"{NOT_REAL_TAG}: {self.provenance}",
                }
            )
        return rows

    def to_csv(self) -> str:
        rows = self.csv_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["size"])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def to_markdown(self, plot_name: str | None = "scale.png", heading: str = "#") -> str:
        cfg, k = self.config, self.config.k
        ext = self.extraction
        lines = [f"{heading} lookalike scale — {self.model} ({self.dim}-d)", "", f"**{self.provenance}**", ""]
        if not self.fully_real:
            lines += [not_real_banner(), ""]
        if self.extra_source:
            lines += [f"Extra real rows (after the gallery's own) come from {self.extra_source}.", ""]
        if self.extension:
            lines += [f"**⚠ SYNTHETIC EXTENSION** at the sizes marked ⚠ below: {self.extension['summary']}", ""]
        lines += [
            (
                f"Extraction: **{fmt(ext.get('single_image_ms'))} ms for one image alone** (batch 1:"
                f" {ext.get('single_note', 'n/a')}); {fmt(ext.get('ms_per_image'))} ms per image in batches"
                f" ({ext['note']}). It is a constant cost per image, whatever the gallery size: each query image pays"
                " the batch-1 figure once, and building a gallery of N images costs N times the batched one."
            ),
            "",
            (
                f"Queries: {self.queries}, split in two as `tune` does: the search parameter of each approximate method"
                f" is chosen per size by a sweep on {self.validation_queries} **validation** queries (the smallest"
                f" value reaching recall@{k} ≥ {cfg.target_recall}); recall@{k} (against exact search on the same"
                f" database), label precision@{k} and the target column are measured on the other"
                f" {self.accuracy_queries} **test** queries; timings over a sample of {self.timing_queries} test"
                f" queries — single = one query per call, batched = the {self.timing_queries} in one call, per query."
                f" Metric {cfg.metric}; threads {self.environment.get('threads')}."
            ),
            "",
            (
                "| size | rows (gallery + extra + SYNTHETIC) | method | params | search ms/query single | single p99 |"
                " batched | end-to-end ms single (batch-1 extract + search) | memory MiB | train s | build s | test"
                f" recall@{k} | label P@{k} | target (test) | synthetic share: results (database) |"
            ),
            "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for p in self.points:
            comp = next(c for c in self.compositions if c.size == p.size)
            mark = " ⚠" if comp.synthetic else ""
            lines.append(
                f"| {format_size(p.size)}{mark} | {comp.describe()} | {p.method} | {format_params(p.params)} |"
                f" {p.latency.single_ms:.3f} | {p.latency.single_p99_ms:.3f} | {p.latency.batch_ms:.4f} |"
                f" {fmt(p.end_to_end_single_ms)} | {p.memory_bytes / 2**20:.1f} | {p.train_seconds:.2f} |"
                f" {p.build_seconds:.2f} | {p.recall:.4f} | {p.precision:.4f} |"
                f" {'met' if p.target_reached else 'MISSED'} | {p.synthetic_result_share:.3f}"
                f" ({comp.synthetic_rows / comp.size:.3f}) |"
            )
        lines += [
            "",
            (
                "⚠ = the database at this size holds synthetic embeddings (see above); its label precision uses the"
                " synthetic rows' assigned labels."
                if self.any_synthetic
                else ""
            ),
        ]
        lines += ["", shift_summary(self), ""]
        if self.sizes:
            lines += [*memory_lines(self), ""]
        if self.extension:
            lines += [
                "**How the synthetic rows were made and how close they are to the real ones**",
                "",
                *extension_lines(self.extension),
                "",
            ]
        sweeps = [p for p in self.points if len(p.sweep) > 1]
        if sweeps:
            lines += [f"**Parameter sweeps** (validation recall@{k} at each value tried)", ""]
            for p in sweeps:
                key = next(key for key in p.sweep[0] if key != "recall")
                lines.append(
                    f"- {format_size(p.size)} {p.method}: "
                    + ", ".join(f"{key}={s[key]} → {s['recall']:.3f}" for s in p.sweep)
                )
            lines.append("")
        if plot_name:
            lines += [f"![end-to-end per-query latency by method and size]({plot_name})", ""]
        env = self.environment
        lines += [
            f"Peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB; total {self.seconds:.0f} s; machine:"
            f" {env.get('machine', {}).get('cpu')} ({env.get('machine', {}).get('cores')} cores); versions: "
            + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        ]
        return "\n".join(lines) + "\n"


def resident_columns(phase: str, memory: Resident | None) -> dict[str, int | None]:
    """The CSV columns of one phase's peak resident memory: anonymous, file-backed, and the workers' anonymous."""
    return {
        f"{phase}_peak_anon_bytes": None if memory is None else memory.anon_bytes,
        f"{phase}_peak_file_bytes": None if memory is None else memory.file_bytes,
        f"{phase}_workers_peak_anon_bytes": None if memory is None else memory.workers_anon_bytes,
    }


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def resident_cell(memory: Resident | None) -> str:
    """Anonymous / file-backed MiB, and the largest worker's anonymous MiB when there were worker processes."""
    if memory is None:
        return "n/a"
    workers = f" (workers {mib(memory.workers_anon_bytes)})" if memory.workers_anon_bytes else ""
    return f"{mib(memory.anon_bytes)} / {mib(memory.file_bytes)}{workers}"


def memory_lines(result: ScaleResult) -> list[str]:
    """The out-of-core section: each size's path and why, the pool on disk, the streamed ground truth, and per method
    the build, the index's bytes, resident memory by phase (anonymous and file-backed apart) and warm and cold
    latency."""
    k = result.config.k
    lines = [
        "**Paths, memory and disk** (resident memory: peak over the phase, sampled from /proc every 50 ms;"
        " anon = this process's anonymous pages, file = its file-backed pages, i.e. mapped shards, lists and libraries"
        " in the page cache; workers = the largest anonymous peak of the build's worker processes)",
        "",
        f"Memory available when the run began: {result.available_memory_bytes / 2**30:.1f} GiB. A size is measured"
        f" out of core when its rows × {IN_MEMORY_FACTOR} exceed it, or with --out-of-core.",
    ]
    if result.pool is not None:
        pool = result.pool
        lines.append(
            f"Pool: {pool.rows} rows written as {pool.shards} shards ({pool.bytes / 2**30:.2f} GiB of embeddings) in"
            f" {pool.seconds:.1f} s, peak MiB anon / file {resident_cell(pool.memory)};"
            f" {'kept at ' + pool.path if pool.kept else 'removed after the run'}."
        )
    lines.append("")
    for run in result.sizes:
        how = f"out of core ({run.reason})" if run.out_of_core else f"in memory ({run.reason})"
        skipped = "".join(f"; {name} skipped (it {why})" for name, why in run.skipped.items())
        lines.append(
            f"- {format_size(run.size)}: {how}; exact ground truth streamed over the shards in"
            f" {run.exact_seconds:.1f} s, peak MiB anon / file {resident_cell(run.exact_memory)}{skipped}."
        )
    lines += [
        "",
        "| size | path | method | build s | index MiB (RAM + disk) | build peak MiB anon / file | search peak MiB"
        f" anon / file | test recall@{k} | single ms warm | single ms cold |",
        "|---:|---|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for p in result.points:
        mark = " ⚠" if p.synthetic_rows else ""
        lines.append(
            f"| {format_size(p.size)}{mark} | {'out of core' if p.out_of_core else 'in memory'} | {p.method} |"
            f" {p.build_seconds:.2f} | {mib(p.memory_bytes)} + {mib(p.disk_bytes)} | {resident_cell(p.build_memory)} |"
            f" {resident_cell(p.search_memory)} | {p.recall:.4f} | {p.latency.single_ms:.3f} |"
            f" {fmt(p.cold_single_ms)} |"
        )
    return lines


def extension_lines(extension: dict) -> list[str]:
    model, check = extension["model"], extension["check"]
    lines = [
        (
            f"- Model: {model['method']}; {model['clusters']} clusters, rank {model['rank']} per cluster, fitted on"
            f" {model['fitted_rows']} real rows (seed {model['seed']}); the principal directions hold"
            f" {model['explained_variance_share']} of the within-cluster variance on average."
        ),
        f"- Labels of synthetic rows: {model['label_rule']}.",
        (
            f"- Nearest-neighbour check (1 − cosine; {check['real']['rows']} real rows vs {check['synthetic']['rows']}"
            f" synthetic rows, seen from {check['real']['queries']} held-out real queries):"
        ),
        "",
        (
            "| sample | median distance to k-th NN from a query | median distance to NN from a query | median NN"
            " distance within the set | TwoNN intrinsic dimension |"
        ),
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("real", "synthetic"):
        s = check[name]
        lines.append(
            f"| {name} | {s['query_knn_distance_median']:.4f} | {s['query_nn_distance_median']:.4f} |"
            f" {s['within_nn_distance_median']:.4f} | {s['two_nn_dimension']} |"
        )
    return lines


def shift_summary(result: ScaleResult) -> str:
    """Two sentences on how the latency profile shifts from the smallest to the largest size, from the measured
    numbers."""
    sizes = sorted({p.size for p in result.points})
    if len(sizes) < 2:
        return ""
    lo, hi = sizes[0], sizes[-1]
    parts = []
    for method in dict.fromkeys(p.method for p in result.points):
        a = next((p for p in result.points if p.method == method and p.size == lo), None)
        b = next((p for p in result.points if p.method == method and p.size == hi), None)
        if a and b:
            growth = b.latency.single_ms / a.latency.single_ms if a.latency.single_ms else math.nan
            share = (b.latency.single_ms / b.end_to_end_single_ms) if b.end_to_end_single_ms else None
            parts.append(
                f"{method} {a.latency.single_ms:.3f} → {b.latency.single_ms:.3f} ms/query single ({growth:.1f}× for"
                f" {hi / lo:.0f}× the rows"
                + (f"; search is {100 * share:.1f}% of end-to-end at {format_size(hi)}" if share is not None else "")
                + ")"
            )
    return f"From {format_size(lo)} to {format_size(hi)}: " + "; ".join(parts) + "."


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


# --- sizes ---


def parse_sizes(text: str) -> tuple[int, ...]:
    """ "10k,100k,1M" → (10000, 100000, 1000000); sorted, deduplicated."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", part)
        if not m:
            raise LookalikeError(
                f"cannot read size {part!r}; use numbers with an optional k or M suffix, e.g. --sizes 10k,100k,1M"
            )
        value = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
        if value < 1 or value != int(value):
            raise LookalikeError(f"size {part!r} is not a whole number of rows ≥ 1")
        sizes.append(int(value))
    if not sizes:
        raise LookalikeError("--sizes is empty; give e.g. --sizes 10k,100k,1M")
    return tuple(sorted(set(sizes)))


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_size(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000 and n % 100 == 0:
        return f"{n / 1_000:g}k"
    return str(n)


# --- the pool of rows every size is a prefix of ---


@dataclass
class Pool:
    vectors: np.ndarray | ShardedArray  # (max size, d) float32: the pool gallery's shards, memory-mapped
    labels: np.ndarray  # (max size,) object; None where unknown
    gallery_rows: int
    extra_rows: int
    synthetic_rows: int
    extension: dict | None
    extra_how: str | None = None

    def composition(self, size: int) -> Composition:
        own = min(size, self.gallery_rows)
        extra = min(size - own, self.extra_rows)
        return Composition(size, own, extra, size - own - extra)

    @property
    def first_synthetic_row(self) -> int:
        return self.gallery_rows + self.extra_rows


@dataclass(frozen=True)
class RealRows:
    """The pool's real rows in pool order — the gallery's database rows (seeded order), then the extra ones — read
    from where they lie: nothing is copied until rows are asked for, so the pool is written block by block and the
    synthetic model is fitted on a sample (`fit_cluster_model` indexes it like an array)."""

    sources: ShardedArray  # the gallery's rows, then the extra embeddings' rows: zero-copy views of their files
    order: np.ndarray  # pool row i is row order[i] of `sources`
    labels: np.ndarray  # (len(order),) object
    gallery_rows: int  # the first ones come from the gallery, the rest from --extra-embeddings
    extra_how: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.order), self.sources.shape[1]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        """Rows by pool position (a slice or positions), read from the sources in ascending order."""
        rows = np.atleast_1d(self.order[key])
        ascending = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        out[ascending] = self.sources.take(rows[ascending])
        return out


def real_rows(
    gallery: Gallery, database_ids: np.ndarray, queries: np.ndarray, size: int, extra: str | None, seed: int
) -> RealRows:
    """The gallery's database rows in seeded order, then extra real embeddings, up to `size` rows; `--extra-embeddings`
    is read and checked here, before anything is written."""
    real_ids = np.random.default_rng(seed).permutation(database_ids)[:size]
    own = RealRows(gallery.embeddings, real_ids, gallery.labels[real_ids], len(real_ids))
    if size == len(real_ids) or not extra:
        return own
    rows = load_extra(extra, gallery, queries, own)
    used = rows.rows[: size - len(real_ids)]
    vectors = rows.vectors
    sources = ShardedArray(
        [*gallery.embeddings.parts, *(vectors.parts if isinstance(vectors, ShardedArray) else [vectors])], gallery.dim
    )
    return RealRows(
        sources,
        np.concatenate([real_ids, gallery.count + used]),
        np.concatenate([own.labels, rows.labels[used]]),
        len(real_ids),
        rows.how,
    )


def write_pool(
    gallery: Gallery, real: RealRows, size: int, queries: np.ndarray, folder: Path, seed: int, shard_rows: int
) -> Pool:
    """Write the pool as a gallery of shards in `folder`: the real rows, then SYNTHETIC rows drawn from a model fitted
    to them, generated and written one block at a time (block i drawn with seed (seed + 1, i), so any prefix is a
    fair sample); the manifest's segments say which rows are which."""
    d, n_real = gallery.dim, len(real)
    n_synthetic = size - n_real
    labels = np.full(size, None, dtype=object)
    labels[:n_real] = real.labels
    model, fit_seconds, sample_seconds, sample = None, 0.0, 0.0, []
    if n_synthetic:
        t = time.perf_counter()
        model = fit_cluster_model(real, real.labels, seed=seed)
        fit_seconds = time.perf_counter() - t

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal sample_seconds
        for start in range(0, n_real, BLOCK_ROWS):
            yield real[start : start + BLOCK_ROWS], real.labels[start : start + BLOCK_ROWS]
        for number, start in enumerate(range(n_real, size, BLOCK_ROWS)):
            t = time.perf_counter()
            rows = np.empty((min(BLOCK_ROWS, size - start), d), dtype=np.float32)
            clusters = model.sample_into(rows, seed=[seed + 1, number])
            labels[start : start + len(rows)] = np.asarray(model.labels, dtype=object)[clusters]
            sample_seconds += time.perf_counter() - t
            room = FIT_CHECK_ROWS - sum(len(kept) for kept in sample)
            if room > 0:  # the first rows drawn are the NN-statistics check's sample
                sample.append(rows[:room].copy())
            yield rows, labels[start : start + len(rows)]

    n_gallery = real.gallery_rows
    segments = [
        Segment(
            "gallery",
            0,
            n_gallery,
            gallery.manifest.data.synthetic,
            f"database rows of {gallery.path} in seeded order (seed {seed})",
        ),
        Segment("extra-embeddings", n_gallery, n_real, False, real.extra_how or ""),
        Segment(
            "synthetic",
            n_real,
            size,
            True,
            "drawn from a model fitted to the real rows",
            model.describe() if model else {},
        ),
    ]
    pool = write_array_gallery_blocks(
        folder,
        d,
        blocks(),
        segments=[s for s in segments if s.count],
        model=gallery.manifest.model,
        data={"source_gallery": str(gallery.path), "source_fingerprint": gallery.fingerprint},
        shard_rows=shard_rows,
        overwrite=True,
    )
    extension = None
    if model is not None:
        synthetic = np.concatenate(sample)
        extension = describe_extension(model, real, synthetic, queries, fit_seconds, sample_seconds, n_synthetic, seed)
    return Pool(pool.embeddings, labels, n_gallery, n_real - n_gallery, n_synthetic, extension, real.extra_how)


def describe_extension(
    model: ClusterModel,
    real: np.ndarray,
    synthetic: np.ndarray,
    queries: np.ndarray,
    fit_seconds: float,
    sample_seconds: float,
    count: int,
    seed: int,
) -> dict:
    """How the synthetic rows were made, plus NN statistics of equal-sized real and synthetic samples."""
    m = min(FIT_CHECK_ROWS, len(real), len(synthetic))
    rng = np.random.default_rng(seed + 2)
    real_sample = real[np.sort(rng.choice(len(real), m, replace=False))]
    synthetic_sample = synthetic[:m]  # rows are drawn independently, so a prefix is a fair sample
    check = {
        "real": neighbour_stats(real_sample, queries).to_dict(),
        "synthetic": neighbour_stats(synthetic_sample, queries).to_dict(),
    }
    how = model.describe()
    summary = (
        f"{count} synthetic rows drawn from a model fitted to {len(real)} real rows — {how['clusters']} spherical"
        f" k-means clusters in {how['classes']} classes, each a Gaussian with {how['rank']} principal directions plus"
        " isotropic noise (PPCA), samples L2-normalised; no real vector is copied. Labels: k-means runs within each"
        " real class, so a synthetic row carries its cluster's class."
    )
    return {
        "summary": summary,
        "rows": count,
        "model": how,
        "check": check,
        "fit_seconds": round(fit_seconds, 2),
        "sample_seconds": round(sample_seconds, 2),
    }


@dataclass(frozen=True)
class ExtraRows:
    vectors: np.ndarray  # (M, d), usually memory-mapped: only the rows used are ever read
    labels: np.ndarray  # (M,) object; None for a bare .npy
    rows: np.ndarray  # positions in `vectors` to use, in order (held-out queries removed)
    how: str


def load_extra(
    source: str, gallery: Gallery, queries: np.ndarray, pool: np.ndarray | RealRows | None = None
) -> ExtraRows:
    """Real embeddings to grow the gallery with: a .npy (N, d) array or a gallery folder of the same model.

    Rows equal to a held-out query are left out, so a query never finds itself; rows equal to one
    already in the pool (the gallery's own database rows) or to an earlier extra row are left out
    too, since a duplicate splits ties and counts its label twice in label precision.
    """
    path = Path(source)
    if path.is_dir():
        other = open_gallery(path)
        if other.model != gallery.model or other.manifest.weights != gallery.manifest.weights:
            raise GalleryError(
                f"--extra-embeddings gallery {path} was made with {other.model} ({other.manifest.weights.kind}"
                f" weights), not the same model and weights as {gallery.path}; extract it with the same --model and"
                " --weights"
            )
        vectors, labels, how = other.embeddings, other.labels, f"gallery {path}"
    elif path.suffix == ".npy" and path.is_file():
        try:
            vectors = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise LookalikeError(
                f"cannot read --extra-embeddings {path} ({exc}); give a .npy file saved with numpy.save"
            ) from exc
        labels, how = np.full(len(vectors), None, dtype=object), f"file {path} (no labels)"
    else:
        raise LookalikeError(f"--extra-embeddings {path} is neither a .npy file nor a gallery folder")
    if vectors.ndim != 2 or vectors.shape[1] != gallery.dim or not np.issubdtype(vectors.dtype, np.floating):
        raise LookalikeError(
            f"--extra-embeddings {path} holds {vectors.shape} {vectors.dtype} values; it must be (N, {gallery.dim})"
            f" float embeddings from {gallery.model}"
        )
    sample = np.asarray(vectors[: min(1000, len(vectors))], dtype=np.float32)
    norms = np.linalg.norm(sample, axis=1)
    if len(sample) and np.abs(norms - 1).max() > 1e-3:
        raise LookalikeError(
            f"--extra-embeddings {path} are not L2-normalised (norms {norms.min():.3f}..{norms.max():.3f}); save them"
            " as lookalike extract does, one unit vector per row"
        )
    keep = _new_rows(vectors, [queries] + ([] if pool is None else [pool]))
    if dropped := len(vectors) - len(keep):
        how += f"; {dropped} rows left out as copies of a query, of a gallery row or of an earlier extra row"
    return ExtraRows(vectors, labels, keep, how)


def _row_keys(rows: np.ndarray) -> list[bytes]:
    """A 16-byte digest per row of its values rounded to 6 decimals: equal rows, equal keys."""
    rounded = np.round(np.asarray(rows, dtype=np.float32), DUPLICATE_DECIMALS) + np.float32(0.0)  # + 0: −0.0 → 0.0
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rounded]


def _new_rows(vectors: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """Row positions of `vectors` that equal (to 6 decimals) no row of `seen` and no earlier row of `vectors`."""
    keys: set[bytes] = set()
    for rows in seen:
        for start in range(0, len(rows), BLOCK_ROWS):
            keys.update(_row_keys(rows[start : start + BLOCK_ROWS]))
    keep = []
    for start in range(0, len(vectors), BLOCK_ROWS):
        for i, key in enumerate(_row_keys(vectors[start : start + BLOCK_ROWS])):
            if key not in keys:
                keys.add(key)
                keep.append(start + i)
    return np.asarray(keep, dtype=np.int64)


# --- measuring one method at one size ---


def tune_for_recall(
    method: SearchMethod, queries: np.ndarray, truth: np.ndarray, k: int, target: float
) -> tuple[Tuning, np.ndarray]:
    """The smallest value of the method's first search parameter that reaches `target` recall@k.

    Doubling from the low end until the target is reached, then a few bisection steps between
    the last miss and the first hit: about log2(range) + 3 batched searches. Methods without a
    search parameter (exact ones) are searched once. Returns the tuning and the chosen result ids.
    """
    ranges = method.search_param_ranges()
    if not ranges:
        _, found = method.search(queries, k)
        recall = recall_at_k(found, truth, k)
        return Tuning({}, recall, recall >= target, [{"recall": recall}]), found
    key, (lo, hi) = next(iter(ranges.items()))
    found_at: dict[int, np.ndarray] = {}

    def recall_at(value: int) -> float:
        _, found_at[value] = method.search(queries, k, {key: value})
        return recall_at_k(found_at[value], truth, k)

    chosen = cheapest_reaching(doubling(lo, hi), recall_at, target, refine_steps=BISECT_STEPS)
    method.set_params(**{key: chosen.value})
    sweep = [{key: v, "recall": round(r, 5)} for v, r in chosen.tried.items()]
    return Tuning({key: chosen.value}, chosen.score, chosen.reached, sweep), found_at[chosen.value]


def split_methods(methods: tuple[str, ...], out_of_core: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The methods measured at a size and those skipped with why: on the out-of-core path only methods that keep the
    rows on disk are measured (`OUT_OF_CORE_METHOD` when none is listed)."""
    if not out_of_core:
        return methods, {}
    on_disk = tuple(m for m in methods if m in METHODS and METHODS[m].kind in OUT_OF_CORE_KINDS)
    measured = on_disk or (OUT_OF_CORE_METHOD,)
    return measured, {m: "holds every row in memory" for m in methods if m not in measured}


def size_path(size: int, dim: int, available: int, forced: bool) -> tuple[bool, str]:
    """(out of core?, why): out of core when forced, or when the rows × IN_MEMORY_FACTOR exceed the memory
    available."""
    need = size * dim * 4
    figures = f"its rows take {format_bytes(need)}, × {IN_MEMORY_FACTOR} against {format_bytes(available)} available"
    if forced:
        return True, "--out-of-core"
    return need * IN_MEMORY_FACTOR > available, figures


def rows_in_memory(vectors: np.ndarray | ShardedArray, size: int) -> np.ndarray:
    """Rows 0 … size − 1 copied into RAM block by block: the database of the in-memory path, held as its methods
    hold it."""
    view = vectors if isinstance(vectors, ShardedArray) else ShardedArray([vectors], vectors.shape[1])
    out = np.empty((size, view.shape[1]), dtype=np.float32)
    for first, block in view.blocks(0, size):
        out[first : first + len(block)] = block
    return out


def rows_on_disk(vectors: np.ndarray | ShardedArray, size: int) -> ShardedArray:
    """Rows 0 … size − 1 as a view of the shards (nothing read): the database of the out-of-core path."""
    if isinstance(vectors, ShardedArray):
        return vectors.slice(0, size)
    return ShardedArray([vectors[:size]], vectors.shape[1])


def measure_size(
    pool: Pool,
    size: int,
    val: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    config: ScaleConfig,
    extraction: dict,
    progress=print,
    *,
    out_of_core: bool = False,
    work: Path | None = None,
    truth: np.ndarray | None = None,
) -> list[ScalePoint]:
    """Every method at one size: tuned on the validation queries, measured on the test queries.

    `truth` is the exact top-k of the validation then the test queries on the same rows (computed
    here when not given). On the out-of-core path the database stays a view of the shards and only
    out-of-core methods are built, each in a folder of `work` (a temporary one when None) removed
    after it is measured unless `config.keep_work`.
    """
    database = rows_on_disk(pool.vectors, size) if out_of_core else rows_in_memory(pool.vectors, size)
    labels = pool.labels[:size]
    d = database.shape[1]
    if truth is None:
        truth = exact_top_k(database, np.concatenate([val, test]), config.k, config.metric)
    truth_val, truth = truth[: len(val)], truth[len(val) :]
    timing = test[: config.timing_queries]
    points = []
    with contextlib.nullcontext(work) if work else tempfile.TemporaryDirectory(prefix="lookalike-scale-") as folder:
        for name in split_methods(config.methods, out_of_core)[0]:
            extra = (
                {}
                if config.train_points_per_list is None or name == "brute"
                else {"train_points_per_list": config.train_points_per_list}
            )
            method = make_method(name, size, d, config.metric, **extra)
            method.workdir = Path(folder) / f"{method_key(name)}-{size}"  # where an out-of-core build keeps its parts
            with ResidentSampler() as building:
                stats = method.build(database)
            with ResidentSampler() as searching:
                # leaves the chosen value set
                tuning, _ = tune_for_recall(method, val, truth_val, config.k, config.target_recall)
                if hasattr(
                    method, "reset_working_set"
                ):  # memory-mapped re-ranking: count the pages the test queries read
                    method.reset_working_set()
                _, found = method.search(test, config.k)
                latency, _ = measure_latency(method, timing, config.k, single_queries=len(timing))
                cold = method.cold_single_ms(timing, config.k) if hasattr(method, "cold_single_ms") else None
            disk_bytes = method.file_bytes() if hasattr(method, "file_bytes") else 0
            synthetic_share = (
                float(np.mean(found[found >= 0] >= pool.first_synthetic_row)) if np.any(found >= 0) else 0.0
            )
            acc = accuracy(found, truth, test_labels, labels, config.k)
            progress(
                f"  {name}: built in {stats.build_seconds:.1f} s, {format_params(tuning.params)}, recall@{config.k}"
                f" {acc.recall:.4f} on test ({tuning.recall:.4f} on validation), {latency.single_ms:.3f} ms/query"
                f" single{f' ({cold:.3f} cold)' if cold is not None else ''}, {latency.batch_ms:.4f} batched; peak"
                f" MiB anon / file: build {resident_cell(building.peak)}, search {resident_cell(searching.peak)}"
            )
            points.append(
                ScalePoint(
                    size=size,
                    synthetic_rows=pool.composition(size).synthetic_rows,
                    method=name,
                    params=method.params(),
                    latency=latency,
                    extract_ms_per_image=extraction.get("ms_per_image"),
                    memory_bytes=method.memory_bytes(),
                    train_seconds=stats.train_seconds,
                    build_seconds=stats.build_seconds,
                    recall=acc.recall,
                    precision=acc.precision,
                    map=acc.map,
                    target_reached=acc.recall >= config.target_recall,
                    synthetic_result_share=synthetic_share if pool.composition(size).synthetic else 0.0,
                    sweep=tuning.sweep,
                    val_recall=tuning.recall,
                    extract_single_ms=extraction.get("single_image_ms"),
                    out_of_core=out_of_core,
                    disk_bytes=disk_bytes,
                    cold_single_ms=cold,
                    build_memory=building.peak,
                    search_memory=searching.peak,
                )
            )
            workdir = method.workdir
            del method
            if not config.keep_work:
                shutil.rmtree(workdir, ignore_errors=True)
    return points


# --- the experiment ---


def extraction_info(gallery: Gallery) -> dict:
    """Per-image extraction time from the manifest; galleries written from arrays may carry one measured elsewhere
    (`measured_on` says where)."""
    timings = gallery.manifest.timings
    ms = timings.get("ms_per_image")
    note = timings.get("measured_on") or (
        f"measured when this gallery was extracted ({timings.get('images')} images, batch {timings.get('batch_size')}, "
        f"{timings.get('threads')} threads, {timings.get('device')}; {gallery.manifest.model.precision_name})"
        if ms is not None
        else (
            "not available: this gallery's embeddings were not extracted from images, so end-to-end figures show search"
            " only"
        )
    )
    single = timings.get("single_image_ms")
    single_note = timings.get("single_image_note") or (
        "not recorded for this gallery (extracted before batch-1 timing was added, or not extracted from images): "
        "end-to-end single-query figures are n/a; re-extract to record it"
        if single is None
        else "one image decoded, preprocessed and embedded alone, median of repeats, measured at extraction"
    )
    return {
        "ms_per_image": ms,
        "note": note,
        "images_per_second": timings.get("images_per_second"),
        "single_image_ms": single,
        "single_note": single_note,
    }


def run_scale(gallery: Gallery, config: ScaleConfig, progress=print) -> ScaleResult:
    started = time.perf_counter()
    if config.k < 1 or not 0 < config.target_recall <= 1:
        raise LookalikeError("k must be ≥ 1 and --target-recall in (0, 1]")
    if min(config.sizes) < config.k:
        raise LookalikeError(f"the smallest size ({min(config.sizes)}) is below k={config.k}; use larger --sizes")
    if config.shard_rows < 1:
        raise LookalikeError(f"--shard-size must be at least 1 row, got {config.shard_rows}")
    for name in config.methods:
        make_method(name, max(config.sizes), gallery.dim, config.metric)  # unknown names fail now, not after an hour
    partition = gallery.partition(max_queries=config.max_queries, seed=config.seed)
    queries = np.ascontiguousarray(gallery.embeddings[partition.query_ids], dtype=np.float32)
    held_out = QuerySet(queries, gallery.labels[partition.query_ids], partition.database_ids, partition.how)
    val, test = split_queries(held_out, seed=config.seed)
    biggest = max(config.sizes)
    real = real_rows(gallery, partition.database_ids, queries, biggest, config.extra_embeddings, config.seed)
    available = available_memory_bytes()
    paths = {size: size_path(size, gallery.dim, available, config.out_of_core) for size in config.sizes}
    out_of_core_sizes = [size for size in config.sizes if paths[size][0]]
    check_disk(Path(config.work or tempfile.gettempdir()), biggest, gallery.dim, out_of_core_sizes, config.keep_work)
    work = Path(config.work) if config.work else Path(tempfile.mkdtemp(prefix="lookalike-scale-"))
    made = first_missing(work) if config.work else work
    work.mkdir(parents=True, exist_ok=True)
    try:
        progress(
            f"building a pool of {format_size(biggest)} rows from {len(partition.database_ids)} gallery rows"
            + (f" + {config.extra_embeddings}" if config.extra_embeddings else "")
            + f", written as shards of {config.shard_rows} rows in {work / POOL_FOLDER}"
        )
        with ResidentSampler() as writing:
            t = time.perf_counter()
            pool = write_pool(gallery, real, biggest, queries, work / POOL_FOLDER, config.seed, config.shard_rows)
            pool_seconds = time.perf_counter() - t
        pool_run = PoolRun(
            str(work / POOL_FOLDER),
            biggest,
            len(pool.vectors.parts),
            int(pool.vectors.nbytes),
            round(pool_seconds, 2),
            writing.peak,
            config.keep_work,
        )
        if pool.extension:
            progress(f"⚠ synthetic extension: {pool.extension['summary']}")
        extraction = extraction_info(gallery)
        both = np.concatenate([val.vectors, test.vectors])
        points: list[ScalePoint] = []
        runs: list[SizeRun] = []
        for size in config.sizes:
            out_of_core, reason = paths[size]
            skipped = split_methods(config.methods, out_of_core)[1]
            progress(
                f"size {format_size(size)} ({pool.composition(size).describe()}),"
                f" {'out of core' if out_of_core else 'in memory'}: {reason} …"
            )
            for name, why in skipped.items():
                progress(f"  {name}: skipped — it {why}, and this size is measured out of core")
            with ResidentSampler() as exact:
                t = time.perf_counter()
                truth = exact_top_k(rows_on_disk(pool.vectors, size), both, config.k, config.metric)
                exact_seconds = time.perf_counter() - t
            runs.append(SizeRun(size, out_of_core, reason, round(exact_seconds, 2), exact.peak, skipped))
            points += measure_size(
                pool,
                size,
                val.vectors,
                test.vectors,
                test.labels,
                config,
                extraction,
                progress,
                out_of_core=out_of_core,
                work=work / INDEX_FOLDER,
                truth=truth,
            )
    finally:
        clean_work(work, made, config.keep_work)
    return ScaleResult(
        gallery=str(gallery.path),
        provenance=gallery.provenance(),
        real=gallery.is_real,
        model=gallery.model,
        dim=gallery.dim,
        config=config,
        extraction=extraction,
        queries=partition.how,
        accuracy_queries=len(test.vectors),
        timing_queries=min(config.timing_queries, len(test.vectors)),
        compositions=[pool.composition(s) for s in config.sizes],
        extension=pool.extension,
        extra_source=pool.extra_how,
        points=points,
        peak_rss_bytes=runtime.peak_rss_bytes(),
        seconds=round(time.perf_counter() - started, 1),
        environment=runtime.environment(),
        validation_queries=len(val.vectors),
        sizes=runs,
        pool=pool_run,
        available_memory_bytes=available,
    )


# --- the work folder: the pool gallery and the on-disk indexes ---


def ondisk_index_bytes(rows: int, dim: int) -> int:
    """ivfpq-ondisk's files: a PQ code of d/8 bytes and an 8-byte id per row, twice (the parts, then the merged
    lists)."""
    return 2 * rows * (dim // 8 + 8)


def check_disk(work: Path, rows: int, dim: int, out_of_core_sizes: list[int], keep: bool) -> None:
    """Refuse to start, with the size needed, when the work folder's disk cannot hold the pool and the largest on-disk
    index (all of them when they are kept)."""
    pool = rows * (dim * 4 + METADATA_ROW_BYTES)
    indexes = [ondisk_index_bytes(size, dim) for size in out_of_core_sizes]
    need = int(DISK_MARGIN * (pool + (sum(indexes) if keep else max(indexes, default=0))))
    existing = next(folder for folder in (work, *work.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise LookalikeError(
            f"scale needs about {format_bytes(need)} free in {work} (the pool of {format_size(rows)} rows as shards:"
            f" {format_bytes(pool)}, and the on-disk index: {format_bytes(max(indexes, default=0))}), but"
            f" {format_bytes(free)} are free there; free some space or point --work at a larger disk"
        )


def first_missing(folder: Path) -> Path | None:
    """The outermost folder on `folder`'s path that does not exist yet (None: it exists): what the run creates, so
    what it removes afterwards."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def clean_work(work: Path, made: Path | None, keep: bool) -> None:
    """Remove the pool and the indexes, then the folders the run created, unless `keep`; anything else found in them
    stays."""
    if keep:
        return
    for name in (POOL_FOLDER, INDEX_FOLDER):
        shutil.rmtree(work / name, ignore_errors=True)
    folder = work
    while made is not None and folder.is_relative_to(made):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def plot_title(result: ScaleResult) -> str:
    lines = [
        f"End-to-end per-query latency: extraction of one image ({fmt(result.extraction.get('single_image_ms'))} ms,"
        f" batch 1, constant) + search — {result.model}"
    ]
    lines.append(result.provenance if result.real else f"{NOT_REAL_TAG}: {result.provenance}")
    if result.any_synthetic:
        synth = ", ".join(format_size(c.size) for c in result.compositions if c.synthetic)
        lines.append(
            f"⚠ hatched bars ({synth}) use SYNTHETIC extension: k-means + per-cluster PPCA model of the real embeddings"
        )
    return "\n".join(lines)


def write_scale(result: ScaleResult, folder: Path) -> dict[str, Path]:
    """scale.json, scale.csv, scale.md and scale.png in `folder`."""
    from .plots import plot_scale_latency

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"png": folder / "scale.png"}
    bars = [
        {
            "method": p.method,
            "size": format_size(p.size),
            "extract_ms": p.extract_single_ms or 0.0,
            "extract_batch_ms": p.extract_ms_per_image or 0.0,
            "single_ms": p.latency.single_ms,
            "batch_ms": p.latency.batch_ms,
            "synthetic": p.synthetic_rows > 0,
        }
        for p in result.points
    ]
    plot_scale_latency(bars, plot_title(result), paths["png"])
    paths.update(
        write_outputs(folder, "scale", result.to_markdown(paths["png"].name), result.to_dict(), result.to_csv())
    )
    return paths
