"""`lookalike tune`: the fastest index that reaches a recall target on held-out queries, within a memory budget.

autofaiss picks an index for a latency target and then reports recall measured with the
gallery's own vectors as queries, where every query finds itself. We do the opposite: the
target is recall@k against exact search, measured on held-out queries. Those are split in
two: the *validation* half chooses the configuration, the *test* half (never looked at while
choosing) gives the figure we report, so the reported recall is not the one we tuned on.

`candidate_configs` holds every rule in one place; `tune` measures what it proposes. A candidate
whose recall cannot reach the target at its widest search (8-bit codes on embeddings whose scores
bunch together: hnsw-sq8 capped at 0.69 on real ResNet-18 embeddings) stays "below target" and is
never picked, however fast it is. `default_method` applies the same rule to methods a server has
already loaded: which one (and at which search setting) answers when a request names none.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime
from ..errors import LookalikeError
from ..gallery import Gallery
from ..search import SearchMethod, database_vectors, default_nlist, factory_for, make_method, save_method
from ..search.registry import METHODS
from .core import (
    NOT_REAL_TAG,
    QuerySet,
    cheapest_reaching,
    cold_latency,
    evaluate,
    format_params,
    held_out_queries,
    split_queries,
    write_outputs,
)
from .metrics import Accuracy, exact_neighbours, exact_top_k, recall_per_query
from .timing import Latency
from .tradeoff import EF_SEARCH, MIN_VECTORS_PER_LIST, powers_of_two_up_to

# The other libraries' graphs measured beside FAISS's hnsw (registry names; usearch-i8 is left out: its
# i8 vectors trade recall for memory, and the memory case is ivf-sq8's and ivfpq-mmap's).
GRAPH_CANDIDATES = ("usearch-f16", "hnswlib", "hnswlib-m16")
# FAISS's graphs over 8-bit codes (registry name → M): a quarter of the bytes read per step, so the fastest at
# moderate recall targets (bench_peers.py), with a recall ceiling the quantiser sets.
QUANTISED_GRAPHS = {
    "hnsw-sq8": (32, "i8"),
    "hnsw16-sq8": (16, "i8"),
    "hnsw16-fp16": (16, "f16"),
}  # FAISS graphs over codes: M, and the codes' type (a VECTOR_BYTES key)
CANDIDATE_FAMILIES = ("flat", "ivf", "hnsw", *GRAPH_CANDIDATES, *QUANTISED_GRAPHS, "ivf-sq8", "ivfpq-mmap")
VECTOR_BYTES = {"f32": 4, "f16": 2, "i8": 1}  # bytes per dimension of a graph's stored vectors
# Validation recall must clear the target with ~95% confidence (one-sided), not just on average:
# a setting chosen at exactly the target on 500 queries lands below it on new queries half the time.
CONFIDENCE_Z = 1.645
# HNSW's graph build costs about N·log N·efConstruction·M distance computations. Default size limit for
# building it; benchmarks/bench_tradeoff.py measures the build at 100k/250k/500k, extrapolates to 1M and
# passes its own limit (`hnsw_max_n`) from those measured times.
HNSW_MAX_N = 500_000
HNSW_M = 32  # 32 links per node: the usual choice for 512-d and up (16 loses recall at high efSearch)
# 8-bit PQ codebooks need ~39·256 ≈ 10k training points; below that the raw vectors are small anyway.
PQ_MIN_N = 10_000
# Re-ranking 16·k candidates costs 16·k row reads per query (≈0.1 ms at k = 10 from the page cache),
# small next to the IVF scan, and recovers nearly all of the ranking error of 64-byte codes.
PQ_K_FACTOR = 16


@dataclass(frozen=True)
class Candidate:
    family: str
    name: str  # make_method name or factory string
    options: dict[str, Any]  # make_method build options (nlist, m)
    sweep: str | None  # search parameter raised until the target is met (nprobe, efSearch), None when there is none
    fixed: dict[str, Any]  # search parameters held fixed (k_factor)
    estimated_bytes_per_vector: float  # only to skip building what cannot fit; the choice uses the real serialised size
    reason: str

    def label(self) -> str:
        return " ".join([self.family, *(f"{k}={v}" for k, v in self.options.items() if k != "train_points_per_list")])


def candidate_configs(
    n: int,
    d: int,
    max_memory_bytes: int | None = None,
    families: tuple[str, ...] | None = None,
    hnsw_max_n: int = HNSW_MAX_N,
) -> tuple[list[Candidate], list[str]]:
    """The configurations worth measuring for n vectors of d dimensions, and why others were left out.

    Every threshold is a rule of thumb with its reason beside it; the measurement on held-out
    queries, not these rules, decides.
    """
    nlist = default_nlist(n)
    wanted: list[Candidate] = [
        # Exact search: recall 1 by definition, and below ~10^5 vectors a scan of N·d floats takes about
        # as long as probing an index, so it is a real contender and the fallback that always meets the target.
        Candidate("flat", "flat", {}, None, {}, 4 * d + 8, "exact; at small N a scan is as fast as an index"),
    ]
    if n >= MIN_VECTORS_PER_LIST * nlist:
        # IVF-Flat with √N lists (the study's default): memory ≈ raw vectors + ids, nprobe trades recall for speed.
        wanted.append(
            Candidate(
                "ivf",
                "ivf",
                {"nlist": nlist},
                "nprobe",
                {},
                4 * d + 16,
                f"IVF with √N = {nlist} lists, exact distances in the lists",
            )
        )
    if n >= MIN_VECTORS_PER_LIST * 4 * nlist:
        # 4√N lists: each probe scans 4× fewer vectors; the coarse quantiser (nlist·d) costs more but pays off at large
        # N.
        wanted.append(
            Candidate(
                "ivf",
                "ivf",
                {"nlist": 4 * nlist},
                "nprobe",
                {},
                4 * d + 16,
                f"IVF with 4√N = {4 * nlist} lists: shorter lists to scan",
            )
        )
    if n <= hnsw_max_n:
        # HNSW: the lowest single-query latency at high recall, at the price of the largest memory (links) and slowest
        # build.
        wanted.append(
            Candidate(
                "hnsw",
                "hnsw",
                {"m": HNSW_M},
                "efSearch",
                {},
                4 * d + 8 * HNSW_M + 16,
                f"graph (M={HNSW_M}): fastest at high recall, slow to build",
            )
        )
        # The other libraries' graphs, faster per query than FAISS's here (bench_peers.py): usearch's over f16
        # vectors (half the vector memory), hnswlib's at M 32 and at M 16 (cheaper steps, wider searches: measured).
        for name in GRAPH_CANDIDATES:
            spec = METHODS[name]
            m, dtype = spec.options.get("m", HNSW_M), spec.options.get("dtype", "f32")
            per_vector = VECTOR_BYTES[dtype] * d + 8 * m + 16
            wanted.append(
                Candidate(
                    name, name, {"m": m}, "efSearch", {}, per_vector, f"{spec.kind} graph (M={m}) over {dtype} vectors"
                )
            )
        for name, (m, codes) in QUANTISED_GRAPHS.items():
            wanted.append(
                Candidate(
                    name,
                    name,
                    {"m": m},
                    "efSearch",
                    {},
                    VECTOR_BYTES[codes] * d + 8 * m + 16,
                    f"faiss graph (M={m}) over {8 * VECTOR_BYTES[codes]}-bit codes",
                )
            )
    if n >= MIN_VECTORS_PER_LIST * nlist:
        # 8-bit scalar quantisation: 4× smaller than float32 at a small recall cost on unit vectors.
        wanted.append(
            Candidate(
                "ivf-sq8", f"IVF{nlist},SQ8", {}, "nprobe", {}, d + 16, "IVF with 8-bit scalar codes: 4× smaller lists"
            )
        )
    if n >= PQ_MIN_N:
        # PQ codes (d/8 bytes) in RAM with exact re-ranking from the memory-mapped gallery: for budgets below the raw
        # vectors.
        factory = factory_for("ivfpq-mmap", n, d, nlist)
        wanted.append(
            Candidate(
                "ivfpq-mmap",
                "ivfpq-mmap",
                {"nlist": nlist},
                "nprobe",
                {"k_factor": PQ_K_FACTOR},
                d / 8 + 16,
                f"{factory} codes in RAM, exact re-rank of {PQ_K_FACTOR}·k from the mapped gallery",
            )
        )
    chosen, notes = [], []
    for c in wanted:
        if families is not None and c.family not in families:
            continue
        if max_memory_bytes is not None and c.estimated_bytes_per_vector * n > max_memory_bytes:
            notes.append(
                f"{c.label()}: ~{c.estimated_bytes_per_vector * n / 2**20:.1f} MiB estimated, over the"
                f" {max_memory_bytes / 2**20:.1f} MiB budget; not built"
            )
            continue
        chosen.append(c)
    if n > hnsw_max_n and (
        families is None or any(f in ("hnsw", *GRAPH_CANDIDATES, *QUANTISED_GRAPHS) for f in families)
    ):
        notes.append(
            f"hnsw: N={n} > {hnsw_max_n}, the size limit for building an HNSW graph here; IVF covers this size"
        )
    return chosen, notes


def sweep_values(method: SearchMethod, param: str | None) -> list[int | None]:
    if param is None:
        return [None]
    if param == "nprobe":
        return powers_of_two_up_to(method.search_param_ranges()["nprobe"][1])
    return list(EF_SEARCH) + [1024, 2048]


def recall_lower_bound(per_query: np.ndarray) -> float:
    """One-sided ~95% lower confidence bound on mean recall, from the per-query spread."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else float("nan")
    return float(per_query.mean() - CONFIDENCE_Z * per_query.std(ddof=1) / math.sqrt(len(per_query)))


@dataclass(frozen=True)
class Measured:
    family: str
    method: str  # factory string
    reason: str  # the rule that proposed it
    setting: dict[str, Any]  # search parameters: the cheapest meeting the target, else the last tried
    val_recall: float
    val_recall_bound: float  # lower confidence bound of val_recall
    val_precision: float
    single_ms: float
    batch_ms: float
    memory_bytes: int
    build_seconds: float
    status: str  # "meets target", "below target", "over budget", "chosen"
    cold_single_ms: float | None = (
        None  # memory-mapped re-ranking: single query with the file dropped from the page cache
    )


@dataclass(frozen=True)
class TuneResult:
    gallery: str
    provenance: str
    real: bool
    k: int
    metric: str
    target_recall: float
    latency: str  # "single" or "batch": the latency minimised
    max_memory_bytes: int | None
    n_database: int
    validation: str
    test: str
    candidates: list[Measured]
    notes: list[str]
    chosen: int | None  # index into candidates
    test_accuracy: Accuracy | None
    test_latency: Latency | None
    saved_to: str | None
    environment: dict = field(default_factory=dict)

    def explanation(self) -> str:
        if self.chosen is None:
            return (
                f"no candidate reached recall@{self.k} ≥ {self.target_recall} on the validation queries"
                + (f" within {self.max_memory_bytes / 2**20:.0f} MiB" if self.max_memory_bytes else "")
                + "; raise --max-memory or lower --target-recall"
            )
        c = self.candidates[self.chosen]
        meeting = sum(m.status in ("meets target", "chosen") for m in self.candidates)
        acc, lat = self.test_accuracy, self.test_latency
        text = (
            f"chosen: {c.method} {format_params(c.setting)} — the lowest {self.latency}-query latency"
            f" ({getattr(c, f'{self.latency}_ms'):.3f} ms) of the {meeting} candidate(s) whose validation"
            f" recall@{self.k} reaches {self.target_recall} with 95% confidence (bound {c.val_recall_bound:.4f})"
            + (f" within the {self.max_memory_bytes / 2**20:.0f} MiB budget" if self.max_memory_bytes else "")
            + f"; memory {c.memory_bytes / 2**20:.1f} MiB.\n"
            f"test queries ({self.test}): recall@{self.k} {acc.recall:.4f}, label P@{self.k} {acc.precision:.4f}, "
            f"{lat.single_ms:.3f} ms/query single, {lat.batch_ms:.4f} batched."
        )
        if acc.recall < self.target_recall:
            text += (
                f"\nnote: on the test queries recall is {acc.recall:.4f} < {self.target_recall}: the validation"
                " estimate was optimistic."
            )
        return text

    def to_markdown(self) -> str:
        flag = "" if self.real else f" {NOT_REAL_TAG} |"
        lines = [
            f"**{self.provenance}**",
            "",
            f"Target recall@{self.k} ≥ {self.target_recall} (metric {self.metric}), minimising {self.latency}-query"
            " latency"
            + (f", memory ≤ {self.max_memory_bytes / 2**20:.0f} MiB" if self.max_memory_bytes else "")
            + f". Database {self.n_database} vectors. Validation: {self.validation}. Test: {self.test}.",
            "",
            "| candidate | setting | val recall | 95% bound | val label P | single ms | batched ms | memory MiB | build"
            " s | status |" + ("" if self.real else " provenance |"),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("" if self.real else "---|"),
        ]
        for m in self.candidates:
            lines.append(
                f"| {m.method} | {format_params(m.setting)} | {m.val_recall:.4f} | {m.val_recall_bound:.4f} |"
                f" {m.val_precision:.4f} | {m.single_ms:.3f} | {m.batch_ms:.4f} | {m.memory_bytes / 2**20:.1f} |"
                f" {m.build_seconds:.2f} | {'**chosen**' if m.status == 'chosen' else m.status} |{flag}"
            )
        lines += ["", self.explanation(), *[f"- {note}" for note in self.notes]]
        lines += [
            f"- {m.method}: cold-cache single query {m.cold_single_ms:.3f} ms (mapped embeddings dropped from the page"
            f" cache first) vs {m.single_ms:.3f} ms warm; its memory counts the codes plus the pages of the mapped file"
            " its validation queries read."
            for m in self.candidates
            if m.cold_single_ms is not None
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)


def measure_candidate(
    c: Candidate,
    vectors: np.ndarray,
    database_ids: np.ndarray,
    val: QuerySet,
    truth: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    metric: str,
    target_recall: float,
    max_memory_bytes: int | None,
    single_queries: int,
) -> tuple[Measured, SearchMethod]:
    """Build one candidate, raise its search parameter until validation recall clears the target, and time that
    setting."""
    method = make_method(c.name, len(database_ids), vectors.shape[1], metric, **c.options)
    method.build(vectors, database_ids)
    memory, build_s = method.memory_bytes(), method.build_stats.build_seconds
    factory = str(method.params().get("factory", c.name))
    setting = dict(c.fixed)
    if max_memory_bytes is not None and memory > max_memory_bytes:  # the measured size decides, not the estimate
        nan = float("nan")
        return (
            Measured(c.family, factory, c.reason, setting, nan, nan, nan, nan, nan, memory, build_s, "over budget"),
            method,
        )

    def bound_at(value: int | None) -> float:
        _, found = method.search(val.vectors, k, {**({c.sweep: value} if c.sweep else {}), **c.fixed} or None)
        return recall_lower_bound(recall_per_query(found, truth, k))

    # the first setting that clears the target
    chosen = cheapest_reaching(sweep_values(method, c.sweep), bound_at, target_recall)
    setting, bound = {**({c.sweep: chosen.value} if c.sweep else {}), **c.fixed}, chosen.score
    lat, acc = evaluate(method, val, truth, gallery_labels, k, setting or None, single_queries)
    # Measured again after searching: a memory-mapped method's page-cache working set counts, since its latency relied
    # on it.
    memory = method.memory_bytes()
    cold = cold_latency(method, val.vectors, k, setting or None)
    status = "meets target" if bound >= target_recall else "below target"
    if max_memory_bytes is not None and memory > max_memory_bytes:
        status = "over budget"
    return (
        Measured(
            c.family,
            factory,
            c.reason,
            setting,
            acc.recall,
            bound,
            acc.precision,
            lat.single_ms,
            lat.batch_ms,
            memory,
            build_s,
            status,
            cold,
        ),
        method,
    )


@dataclass(frozen=True)
class TuneConfig:
    """What `tune` searches for: a recall target, a latency to minimise, a memory budget, the candidates allowed."""

    target_recall: float = 0.95
    k: int = 10
    max_memory_bytes: int | None = None
    latency: str = "single"  # "single" or "batch"
    metric: str = "ip"
    max_queries: int = 1000
    families: tuple[str, ...] | None = None
    single_queries: int = 200
    save_as: str | None = "tuned"
    hnsw_max_n: int = HNSW_MAX_N
    train_points_per_list: int | None = None


def tune(gallery: Gallery, config: TuneConfig | None = None, **options: Any) -> TuneResult:
    """Measure every candidate on validation queries, keep the fastest that meets the target, confirm it on test
    queries, save it.

    `options` (TuneConfig's fields) build the config when none is given.
    """
    c = config if config is not None else TuneConfig(**options)
    target_recall, k, max_memory_bytes, latency, metric, max_queries = (
        c.target_recall,
        c.k,
        c.max_memory_bytes,
        c.latency,
        c.metric,
        c.max_queries,
    )
    families, single_queries, save_as, hnsw_max_n, train_points_per_list = (
        c.families,
        c.single_queries,
        c.save_as,
        c.hnsw_max_n,
        c.train_points_per_list,
    )
    if not 0 < target_recall <= 1:
        raise LookalikeError(f"--target-recall must be in (0, 1], got {target_recall}")
    if families is not None and (unknown := [f for f in families if f not in CANDIDATE_FAMILIES]):
        raise LookalikeError(f"unknown candidate family {unknown[0]!r}; use some of {', '.join(CANDIDATE_FAMILIES)}")
    queries = held_out_queries(gallery, max_queries)
    val, test = split_queries(queries)
    n, d = len(queries.database_ids), gallery.dim
    truth_val = exact_neighbours(gallery, val.database_ids, val.vectors, k, metric)
    truth_test = exact_neighbours(gallery, test.database_ids, test.vectors, k, metric)
    labels = gallery.labels
    vectors = database_vectors(gallery, queries.database_ids)
    candidates, notes = candidate_configs(n, d, max_memory_bytes, families, hnsw_max_n)
    if train_points_per_list is not None:  # k-means training size for IVF candidates (benchmarks set it at 1M)
        candidates = [
            (
                replace(c, options={**c.options, "train_points_per_list": train_points_per_list})
                if c.sweep == "nprobe"
                else c
            )
            for c in candidates
        ]
    if not candidates:
        raise LookalikeError("no candidate index fits these limits; raise --max-memory or widen --families")

    measured: list[Measured] = []
    best: tuple[float, int, SearchMethod, dict] | None = None
    for c in candidates:
        result, method = measure_candidate(
            c,
            vectors,
            queries.database_ids,
            val,
            truth_val,
            labels,
            k,
            metric,
            target_recall,
            max_memory_bytes,
            single_queries,
        )
        measured.append(result)
        if result.status == "over budget":
            notes.append(
                f"{c.label()}: real size {result.memory_bytes / 2**20:.1f} MiB exceeds the"
                f" {max_memory_bytes / 2**20:.1f} MiB budget"
            )
        cost = result.single_ms if latency == "single" else result.batch_ms
        if result.status == "meets target" and (best is None or cost < best[0]):
            best = (cost, len(measured) - 1, method, result.setting)
        del method  # only the best so far stays alive: at 1M each index is gigabytes

    chosen = test_acc = test_lat = saved = None
    if best is not None:
        _, chosen, method, setting = best
        measured[chosen] = replace(measured[chosen], status="chosen")
        test_lat, test_acc = evaluate(method, test, truth_test, labels, k, setting or None, single_queries)
        if setting:
            method.set_params(**setting)
        if save_as:
            method.name = save_as
            saved = str(save_method(gallery, method))
    return TuneResult(
        gallery=str(gallery.path),
        provenance=gallery.provenance(),
        real=gallery.is_real,
        k=k,
        metric=metric,
        target_recall=target_recall,
        latency=latency,
        max_memory_bytes=max_memory_bytes,
        n_database=n,
        validation=val.how,
        test=test.how,
        candidates=measured,
        notes=notes,
        chosen=chosen,
        test_accuracy=test_acc,
        test_latency=test_lat,
        saved_to=saved,
        environment=runtime.environment(),
    )


# --- the default for a server: which loaded method answers when a request names none ---

DEFAULT_SWEPT = ("nprobe", "efSearch")  # the search parameter raised until the target is met, where a method has one


@dataclass(frozen=True)
class MethodCheck:
    """One loaded method measured for `default_method`: its cheapest setting reaching the target, or its widest."""

    name: str
    exact: bool  # an exact family (brute, flat, exact-lowp): the fallback that always meets the target
    params: dict[str, int]  # the search setting measured (empty: the method has none)
    recall: float  # mean recall@k over the queries, against exact search over the method's own rows
    recall_bound: float  # one-sided 95% lower bound of `recall`
    single_ms: float  # median, one query per call
    status: str  # "meets target", "below target", "chosen"


@dataclass(frozen=True)
class DefaultChoice:
    """The method and search parameters to answer with by default, and what every loaded method measured."""

    method: str
    params: dict[str, int]  # pass to the method's set_params (or per call); empty when it has none
    target_recall: float
    k: int
    queries: str  # which queries measured it
    checks: list[MethodCheck]
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def default_method(
    gallery: Gallery,
    methods: Mapping[str, SearchMethod],
    target_recall: float = 0.95,
    k: int = 10,
    max_queries: int = 200,
    single_queries: int = 50,
) -> DefaultChoice:
    """The fastest (single query) of the already built or loaded `methods` whose recall@k, on this gallery's own
    held-out queries against exact search over the method's own rows, reaches `target_recall` with 95% confidence,
    at the cheapest setting of its search parameter (nprobe, efSearch) that does.

    Why measured here and not taken from a list: which methods collapse depends on the gallery. On
    embeddings whose scores bunch together (all pairs above 0.9) 8-bit codes cap recall well below
    any target (hnsw-sq8 0.69, usearch i8 0.013 on real ResNet-18 embeddings) while the same methods
    lead on spread-out data. A method that reaches the target at no setting is never the default;
    when none but the exact ones do, the fastest exact one is. The methods' own parameters are not
    changed: every search here passes its setting per call.

    A method may hold the query rows themselves (a server that searches every row): each query's
    own id is then dropped from both its results and the exact ones, before the first k are compared,
    as if it were held out.
    """
    from ..search.registry import METHODS as REGISTRY

    if not methods:
        raise LookalikeError("no search method is loaded; build one (or use brute) before choosing a default")
    if not 0 < target_recall <= 1:
        raise LookalikeError(f"the default's target recall must be in (0, 1], got {target_recall}")
    partition = gallery.partition(max_queries=max_queries)
    query_ids = np.asarray(partition.query_ids, dtype=np.int64)
    vectors = np.ascontiguousarray(gallery.embeddings[query_ids], dtype=np.float32)
    how = f"{len(query_ids)} held-out queries ({partition.how})"
    truths: dict[tuple[bytes, str], np.ndarray] = {}
    checks: list[MethodCheck] = []
    for name, method in methods.items():
        spec = REGISTRY.get(name) or REGISTRY.get(getattr(method, "kind", ""))
        exact = bool(spec and spec.exact) or method.kind in ("brute", "exact-lowp")
        rows = (method.ids.tobytes(), method.metric)
        if rows not in truths:  # methods over the same rows share one exact search
            truths[rows] = exact_top_k(database_vectors(gallery, method.ids), vectors, k + 1, method.metric, method.ids)
        truth = _without_self(truths[rows], query_ids, k)
        ranges = method.search_param_ranges()
        swept = next((p for p in DEFAULT_SWEPT if p in ranges), None)
        values = [None] if swept is None else [v for v in sweep_values(method, swept) if v <= ranges[swept][1]]
        if swept is not None and (not values or values[-1] < ranges[swept][1]):
            values.append(ranges[swept][1])

        def measured(value: int | None, method: SearchMethod = method, swept: str | None = swept, truth=truth):
            setting = {} if value is None else {swept: value}
            found = method.search(vectors, k + 1, setting or None)[1]
            return recall_per_query(_without_self(found, query_ids, k), truth, k)

        reached = cheapest_reaching(values, lambda v: recall_lower_bound(measured(v)), target_recall)
        setting = {} if reached.value is None else {swept: int(reached.value)}
        per_query = measured(reached.value)
        checks.append(
            MethodCheck(
                name,
                exact,
                setting,
                round(float(per_query.mean()), 4),
                round(recall_lower_bound(per_query), 4),
                round(_single_ms(method, vectors, k, setting, single_queries), 4),
                "meets target" if reached.reached else "below target",
            )
        )
    meeting = [c for c in checks if c.status == "meets target"] or [c for c in checks if c.exact]
    if not meeting:
        raise LookalikeError(
            f"none of {', '.join(methods)} reaches recall@{k} ≥ {target_recall} on this gallery's held-out queries;"
            " load an exact method (brute) as well"
        )
    best = min(meeting, key=lambda c: c.single_ms)
    checks = [replace(c, status="chosen") if c is best else c for c in checks]
    below = [c for c in checks if c.status == "below target"]
    reason = (
        f"{best.name} {format_params(best.params)}: the fastest single query ({best.single_ms:.3f} ms) of the"
        f" {len(meeting)} loaded method(s) whose recall@{k} reaches {target_recall} with 95% confidence"
        f" (measured {best.recall:.4f}, bound {best.recall_bound:.4f}) on {how}"
        + (
            "; never the default here: "
            + ", ".join(f"{c.name} (at most {c.recall:.3f} at {format_params(c.params)})" for c in below)
            if below
            else ""
        )
    )
    return DefaultChoice(best.name, best.params, target_recall, k, how, checks, reason)


def _without_self(found: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row of `found` (k + 1 wide) other than the query's own id."""
    own = found == np.asarray(query_ids, dtype=np.int64)[:, None]
    order = np.argsort(own, axis=1, kind="stable")  # the own id (if any) moves last, the rest keep their order
    return np.take_along_axis(found, order, axis=1)[:, :k]


def _single_ms(method: SearchMethod, queries: np.ndarray, k: int, setting: dict[str, int], count: int) -> float:
    """Median ms of one query per call, the setting passed per call so the method's own parameters stay as they
    were."""
    method.search(queries[:1], k, setting or None)  # warm-up
    times = []
    for q in queries[: max(1, min(count, len(queries)))]:
        t = time.perf_counter()
        method.search(q[None], k, setting or None)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """'512MB', '1GB', '1.5GiB' or a plain number of bytes; K/M/G/T are powers of 1024, as in autofaiss."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise LookalikeError(f"cannot read memory size {text!r}; write it like 512MB or 1GB")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def write_tune(result: TuneResult, folder: Path) -> dict[str, Path]:
    """tune.md and tune.json beside the saved index."""
    return write_outputs(folder, "tune", "# lookalike tune\n\n" + result.to_markdown(), result.to_dict())
