"""`lookalike tradeoff`: how much accuracy approximate search gives up for how much speed.

Every index family is built once and swept over its search-time parameters (nprobe for IVF,
efSearch for HNSW, k_factor for re-ranking), which is how it would be tuned in production: only
search parameters change, never the trained structure. Each point records recall@k against
exact search, label precision@k and mAP@k, per-query latency (single and batched), the real
serialised memory and the build/train time. Exact methods (brute, flat) are reference points.

Queries are held out (the val split, or a seeded sample removed from the database), or a list
of query images embedded with the gallery's own model; a query never searches for itself.
"""

from __future__ import annotations

import gc
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime
from ..errors import LookalikeError
from ..gallery import Gallery
from ..search import SearchMethod, database_vectors, default_nlist, factory_for, make_method
from .core import (
    NOT_REAL_TAG,
    QuerySet,
    cold_latency,
    csv_text,
    evaluate,
    held_out_queries,
    not_real_banner,
    write_outputs,
)
from .metrics import MAP_DEFINITION, Accuracy, accuracy, exact_neighbours
from .timing import Latency

FAMILIES = ("ivf", "hnsw", "usearch-f16", "hnswlib", "ivfpq", "ivfpq-mmap", "sq8", "sqfp16")
# Accepted by `families` but not swept by default: graphs over 8- and 16-bit codes, fast on spread-out data, whose
# recall caps where scores bunch (all pairs above 0.9: hnsw-sq8 at 0.69, usearch i8 at 0.013 on real ResNet-18
# embeddings, issue 22). bench_tradeoff sweeps them on its bunched gallery.
MORE_FAMILIES = ("hnsw-sq8", "hnsw16-sq8", "hnsw16-fp16", "usearch-i8")
# graph families built at each HNSW_M (at efConstruction 40; the registry's hnswlib-m16 builds with 100)
M_SWEPT = ("hnsw", "hnswlib")
EXACT_METHODS = ("brute", "flat")
NLIST_FACTORS = (1, 4, 16)  # nlist = factor·√N, as in the original study
# Fewer than ~10 vectors per list leaves k-means fitting centroids to single points, and lists
# so short that probing them costs more than it saves (FAISS itself warns below 39).
MIN_VECTORS_PER_LIST = 10
HNSW_M = (16, 32)  # links per node: 16 is lean, 32 the usual choice for 512-d and up
EF_SEARCH = (16, 32, 64, 128, 256, 512)
K_FACTORS = (1, 4, 16)  # re-rank k·k_factor candidates; 1 shows the codes' own ranking
RECALL_TARGETS = (0.9, 0.95, 0.99)
# A doubling of nprobe/efSearch that gains less recall than this has reached the curve's plateau
# (e.g. PQ's own ranking error); further points only cost time. Checked from the 3rd point on.
PLATEAU_GAIN = 0.001
EXACT_QUERIES = 200  # exact search cost grows with N; its recall is 1 by definition, so a sample times it


# --- what to build and how to sweep it ---


@dataclass(frozen=True)
class Build:
    """One index to train once: its family, make_method arguments, and a legend label."""

    family: str
    name: str  # make_method name or a FAISS factory string
    options: dict[str, Any]
    label: str


def plan_builds(
    families: Sequence[str], factories: Sequence[str], n: int, d: int, nlist_factors: Sequence[int] = NLIST_FACTORS
) -> tuple[list[Build], list[str]]:
    """The indexes to build for `families` and extra factory strings, and notes on what was skipped and why."""
    unknown = [f for f in families if f not in (*FAMILIES, *MORE_FAMILIES)]
    if unknown:
        raise LookalikeError(
            f"unknown index family {unknown[0]!r}; use some of {', '.join((*FAMILIES, *MORE_FAMILIES))} (or --index"
            " for a factory string)"
        )
    builds, skipped = [], []
    root = default_nlist(n)
    nlists = [f * root for f in dict.fromkeys(nlist_factors)]
    trainable = [nl for nl in nlists if n >= MIN_VECTORS_PER_LIST * nl]
    for nl in nlists:
        if nl not in trainable:
            skipped.append(
                f"ivf nlist={nl}: N={n} is too small to train it (needs ≥ {MIN_VECTORS_PER_LIST}·nlist ="
                f" {MIN_VECTORS_PER_LIST * nl} vectors)"
            )
    for family in families:
        if family == "ivf":
            builds += [Build("ivf", "ivf", {"nlist": nl}, f"ivf nlist={nl}") for nl in trainable]
        elif family in M_SWEPT:
            builds += [Build(family, family, {"m": m}, f"{family} M={m}") for m in HNSW_M]
        elif family in ("ivfpq", "ivfpq-mmap"):
            if n < MIN_VECTORS_PER_LIST * root:
                skipped.append(f"{family}: N={n} is too small to train an IVF of {root} lists")
                continue
            factory = factory_for(family, n, d, root)
            builds.append(Build(family, family, {"nlist": root}, f"{family} {factory}"))
        else:
            builds.append(Build(family, family, {}, family))
    for factory in factories:
        check_factory(factory, d)
        builds.append(Build("factory", factory, {}, factory))
    return builds, skipped


def check_factory(factory: str, d: int) -> None:
    """Fail before a long sweep, not in the middle of it, when FAISS cannot parse a factory string."""
    import faiss

    try:
        faiss.index_factory(d, factory)
    except RuntimeError as exc:
        raise LookalikeError(
            f"FAISS cannot build --index {factory!r} for d={d}: {str(exc).strip().splitlines()[-1]}; check the factory"
            " string"
        ) from exc


def powers_of_two_up_to(limit: int) -> list[int]:
    """1, 2, 4, … below `limit`, then `limit` itself (nprobe = nlist is exact IVF)."""
    values = [2**i for i in range(int(math.log2(max(limit, 1))) + 1) if 2**i < limit]
    return values + [limit]


def sweep_curves(method: SearchMethod, label: str) -> list[tuple[str, list[dict[str, int]]]]:
    """(curve label, search settings cheapest first) for a built method, from its own parameter ranges."""
    ranges = method.search_param_ranges()
    if "nprobe" in ranges:
        primary = [{"nprobe": v} for v in powers_of_two_up_to(ranges["nprobe"][1])]
    elif "efSearch" in ranges:
        primary = [{"efSearch": v} for v in EF_SEARCH]
    else:
        primary = [{}]
    if "k_factor" not in ranges:
        return [(label, primary)]
    return [(f"{label} k_factor={kf}", [{**p, "k_factor": kf} for p in primary]) for kf in K_FACTORS]


# --- measuring ---


@dataclass(frozen=True)
class Point:
    family: str
    curve: str  # legend label: the built index and any fixed search parameter
    method: str  # factory string ("IVF316,Flat") or "brute"
    params: dict[str, Any]  # build and search parameters, as the method reports them
    exact: bool
    recall: float  # recall@k against exact search
    precision: float  # label precision@k (NaN when no query is labelled)
    map: float  # label mAP@k
    single_ms: float  # median per-query latency, one query per call
    single_p99_ms: float
    batch_ms: float  # per-query latency with all queries in one call
    single_queries: int
    batch_queries: int
    memory_bytes: int  # serialised size of the real index (+ id map)
    bytes_per_vector: float
    train_seconds: float
    build_seconds: float  # train + add
    pareto: bool = False
    cold_single_ms: float | None = (
        None  # memory-mapped re-ranking: single query with the file dropped from the page cache
    )

    def setting(self) -> str:
        search = {k: v for k, v in self.params.items() if k in ("nprobe", "efSearch", "k_factor")}
        return self.curve + (
            ""
            if not search
            else " · " + ", ".join(f"{k}={v}" for k, v in search.items() if f"{k}={v}" not in self.curve)
        )

    def csv_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "params"}
        for key in ("nlist", "nprobe", "M", "efSearch", "k_factor"):
            row[key] = self.params.get(key, "")
        return row


def make_point(family: str, curve: str, method: SearchMethod, latency: Latency, acc: Accuracy, exact: bool) -> Point:
    stats = method.build_stats
    params = method.params()
    if (m := re.search(r"HNSW(\d+)", str(params.get("factory", "")))) is not None:
        params["M"] = int(m.group(1))
    memory = method.memory_bytes()
    return Point(
        family=family,
        curve=curve,
        method=str(params.get("factory", method.name)),
        params=params,
        exact=exact,
        recall=acc.recall,
        precision=acc.precision,
        map=acc.map,
        single_ms=latency.single_ms,
        single_p99_ms=latency.single_p99_ms,
        batch_ms=latency.batch_ms,
        single_queries=latency.single_queries,
        batch_queries=latency.batch_queries,
        memory_bytes=memory,
        bytes_per_vector=memory / max(1, method.ntotal),
        train_seconds=stats.train_seconds if stats else 0.0,
        build_seconds=stats.build_seconds if stats else 0.0,
    )


def sweep(
    method: SearchMethod,
    build: Build,
    queries: QuerySet,
    truth: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    single_queries: int,
    stop_recall: float,
) -> Iterator[Point]:
    """Every curve of one built index, cheapest setting first; a curve stops at `stop_recall` or on its plateau."""
    for curve, settings in sweep_curves(method, build.label):
        recalls: list[float] = []
        for params in settings:
            # sets params: params() reports them
            latency, acc = evaluate(method, queries, truth, gallery_labels, k, params or None, single_queries)
            # memory first: cold timing reads pages too
            point = make_point(build.family, curve, method, latency, acc, exact=False)
            yield replace(point, cold_single_ms=cold_latency(method, queries.vectors, k, params or None))
            recalls.append(acc.recall)
            if acc.recall >= stop_recall or (len(recalls) >= 3 and recalls[-1] - recalls[-2] < PLATEAU_GAIN):
                break


def mark_pareto(points: list[Point]) -> list[Point]:
    """Flag the points no other point beats on both single-query latency and recall."""
    out = []
    for p in points:
        dominated = any(
            q.single_ms <= p.single_ms and q.recall >= p.recall and (q.single_ms < p.single_ms or q.recall > p.recall)
            for q in points
        )
        out.append(replace(p, pareto=not dominated))
    return out


# --- the result ---


@dataclass(frozen=True)
class TradeoffResult:
    gallery: str
    provenance: str
    real: bool  # pretrained/file weights on real data; False for random weights or generated data
    model: str
    dim: int
    n_database: int
    raw_bytes: int  # the database's float32 vectors: N·d·4
    k: int
    metric: str
    queries: str
    n_queries: int
    exact_queries: int  # the sample that timed the exact methods
    points: list[Point]
    skipped: list[str]
    sweep_seconds: float
    peak_rss_bytes: int
    environment: dict = field(default_factory=dict)

    def cheapest(self, target: float, latency: str = "single") -> Point | None:
        """The lowest-latency point reaching recall@k ≥ target (exact methods included: at small N they win)."""
        reached = [p for p in self.points if p.recall >= target]
        return min(reached, key=lambda p: getattr(p, f"{latency}_ms")) if reached else None

    def title(self) -> str:
        tag = "" if self.real else f"  ⚠ NOT A REAL RESULT ({NOT_REAL_TAG[2:]})"
        return f"recall@{self.k} vs latency — {self.provenance}{tag}"

    def cheapest_lines(self) -> list[str]:
        lines = []
        for target in RECALL_TARGETS:
            p = self.cheapest(target)
            lines.append(
                f"recall@{self.k} ≥ {target}: "
                + (
                    "not reached by any setting"
                    if p is None
                    else (
                        f"{p.setting()} — {p.single_ms:.3f} ms/query single, {p.batch_ms:.4f} batched, recall"
                        f" {p.recall:.4f}, {p.memory_bytes / 2**20:.1f} MiB"
                    )
                )
            )
        return lines

    def to_markdown(self) -> str:
        flag = "" if self.real else f" {NOT_REAL_TAG} |"
        lines = [
            f"**{self.provenance}**" + ("" if self.real else f"  \n{not_real_banner()}"),
            "",
            (
                f"Database: {self.n_database} vectors ({self.raw_bytes / 2**20:.1f} MiB raw); queries: {self.queries};"
                f" k = {self.k}; metric = {self.metric}; exact methods timed on {self.exact_queries} of them; threads ="
                f" {self.environment.get('threads')}; sweep took {self.sweep_seconds:.0f} s."
            ),
            "",
            "| setting | recall@k | label P@k | mAP@k | single ms/query | batched ms/query | memory MiB | × raw |"
            " bytes/vector | train s | build s | Pareto |" + ("" if self.real else " provenance |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|" + ("" if self.real else "---|"),
        ]
        for p in self.points:
            lines.append(
                f"| {p.setting()}{' (exact)' if p.exact else ''} | {p.recall:.4f} | {p.precision:.4f} | {p.map:.4f} |"
                f" {p.single_ms:.3f} | {p.batch_ms:.4f} | {p.memory_bytes / 2**20:.1f} |"
                f" {p.memory_bytes / max(1, self.raw_bytes):.2f} | {p.bytes_per_vector:.0f} | {p.train_seconds:.2f} |"
                f" {p.build_seconds:.2f} | {'●' if p.pareto else ''} |{flag}"
            )
        lines += ["", *[f"- {line}" for line in self.cheapest_lines()]]
        lines += [
            f"- {p.setting()}: cold-cache single query {p.cold_single_ms:.3f} ms (the mapped embeddings dropped from"
            f" the page cache before each query) vs {p.single_ms:.3f} ms warm; its memory counts the codes plus the"
            " pages of the mapped file the queries read."
            for p in self.points
            if p.cold_single_ms is not None
        ]
        lines += [f"- {MAP_DEFINITION}."]
        lines += [f"- skipped: {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """JSON-ready; the writer (gallery.json_text) turns NaN (label metrics without labels) into null."""
        return {
            **asdict(self),
            "cheapest": {str(t): asdict(p) if (p := self.cheapest(t)) else None for t in RECALL_TARGETS},
        }


@dataclass(frozen=True)
class TradeoffConfig:
    """What `run_tradeoff` measures; the CLI and the benchmarks build one."""

    k: int = 10
    metric: str = "ip"
    families: Sequence[str] = FAMILIES
    factories: Sequence[str] = ()
    queries: QuerySet | None = None  # default: the gallery's held-out queries
    max_queries: int = 1000
    single_queries: int = 200
    exact_queries: int = EXACT_QUERIES
    nlist_factors: Sequence[int] = NLIST_FACTORS
    stop_recall: float = 1.0
    train_points_per_list: int | None = None


def run_tradeoff(
    gallery: Gallery, config: TradeoffConfig | None = None, progress: bool = True, **options: Any
) -> TradeoffResult:
    """Measure exact references, then every family's curves, on one set of queries against one ground truth.

    `options` (TradeoffConfig's fields) build the config when none is given.
    """
    c = config if config is not None else TradeoffConfig(**options)
    k, metric, families, factories, queries, max_queries = (
        c.k,
        c.metric,
        c.families,
        c.factories,
        c.queries,
        c.max_queries,
    )
    single_queries, exact_queries, nlist_factors, stop_recall, train_points_per_list = (
        c.single_queries,
        c.exact_queries,
        c.nlist_factors,
        c.stop_recall,
        c.train_points_per_list,
    )
    started = time.perf_counter()
    queries = queries or held_out_queries(gallery, max_queries)
    n, d = len(queries.database_ids), gallery.dim
    builds, skipped = plan_builds(families, factories, n, d, nlist_factors)
    truth = exact_neighbours(gallery, queries.database_ids, queries.vectors, k, metric)
    labels = gallery.labels
    vectors = database_vectors(gallery, queries.database_ids)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    points: list[Point] = []
    sample = np.arange(min(exact_queries, len(queries.vectors)))
    exact_set = queries.subset(sample, f"first {len(sample)} queries")
    for name in EXACT_METHODS:
        method = make_method(name, n, d, metric)
        method.build(vectors, queries.database_ids)
        latency, sample_acc = evaluate(method, exact_set, truth[sample], labels, k, None, single_queries)
        # Exact search returns the ground truth, so its label metrics are the ground truth's over every
        # query (comparable with the approximate rows); its recall is checked on the timed sample.
        acc = replace(accuracy(truth, truth, queries.labels, labels, k, queries.database_ids), recall=sample_acc.recall)
        points.append(make_point("exact", name, method, latency, acc, exact=True))
        log(f"  {name}: {latency.single_ms:.3f} ms/query")
        del method
    extra = {} if train_points_per_list is None else {"train_points_per_list": train_points_per_list}
    for build in builds:
        method = make_method(build.name, n, d, metric, **build.options, **extra)
        t = time.perf_counter()
        method.build(vectors, queries.database_ids)
        log(f"  built {build.label} in {time.perf_counter() - t:.1f} s; sweeping")
        for point in sweep(method, build, queries, truth, labels, k, single_queries, stop_recall):
            points.append(point)
            log(f"    {point.setting()}: recall {point.recall:.4f}, {point.single_ms:.3f} ms/query")
        del method
        gc.collect()
    return TradeoffResult(
        gallery=str(gallery.path),
        provenance=gallery.provenance(),
        real=gallery.is_real,
        model=gallery.model,
        dim=d,
        n_database=n,
        raw_bytes=n * d * 4,
        k=k,
        metric=metric,
        queries=queries.how,
        n_queries=len(queries.vectors),
        exact_queries=len(sample),
        points=mark_pareto(points),
        skipped=skipped,
        sweep_seconds=round(time.perf_counter() - started, 1),
        peak_rss_bytes=runtime.peak_rss_bytes(),
        environment=runtime.environment(),
    )


def write_tradeoff(result: TradeoffResult, folder: Path) -> dict[str, Path]:
    """tradeoff.csv, tradeoff.json, tradeoff.md and tradeoff.png in `folder`."""
    from .plots import plot_tradeoff, wrapped_title

    markdown = f"# lookalike tradeoff — {result.model}\n\n" + result.to_markdown()
    paths = write_outputs(
        folder,
        "tradeoff",
        markdown,
        result.to_dict(),
        csv_text([p.csv_row() for p in result.points], {"provenance": result.provenance}),
    )
    paths["png"] = Path(folder) / "tradeoff.png"
    title = wrapped_title(
        result.title(),
        f"{result.n_database} vectors, {result.queries}; {result.metric}; machine:"
        f" {result.environment.get('machine', {}).get('cpu')}",
    )
    plot_tradeoff(result.points, title, paths["png"], result.k)
    return paths


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise LookalikeError(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise LookalikeError(f"{what} must list positive whole numbers, got {text!r}")
    return values
