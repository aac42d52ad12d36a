"""Beyond memory (issue 21): 10M × 512 GENERATED vectors written, indexed out of core, searched and checked against
exact search on one machine, with a projection to 100M and 1B.

Data: GENERATED unit vectors, no model and no images — `write_generated_gallery_blocks`
(`lookalike.gallery.generated`) with `common.GENERATOR`, the mixture of low-rank Gaussians every
other section uses, seed 0, drawn and written as a gallery of shards one block at a time; 1,000
held-out queries drawn apart from the same mixture (seed 2), 500 to choose a setting on
(validation) and 500 to report it (test). Per size (1M and 10M; `--sizes`), each phase measured
alone (wall time, CPU, peak RssAnon and RssFile of this process and the largest RssAnon of any
child process, sampled from /proc; the 1-minute load before and after):

  write    the gallery, block by block (`write_generated_gallery_blocks`)
  build    `lookalike.build_index(gallery, "ivfpq-ondisk")`: trained on a capped sample, parts added by
           two processes, lists merged into one memory-mapped file, saved in the gallery
  exact    the exact top-10 of every query, streamed over the shards (`metrics.streamed_top_k`)
  search   the saved index loaded; an nprobe × k_factor grid (recall on both query halves, single-query
           p50/p99 on 200); the cheapest setting reaching recall@10 0.90 and 0.95 on validation, then
           measured on test: recall, warm single-query p50/p99, batch, cold (files dropped from the cache)
  fan-out  (the smallest size's gallery, kept until the end and run last, so that Ray's libraries are not in this
           process while the sizes are compared) a local Ray cluster, the index's parts over 2 actors (`fan_out`):
           ids and scores against the single index on every test query, batch throughput beside one process

Then a PROJECTION to 100M and 1B from the measured per-vector and per-query costs (functions below).
Everything is written in a temporary folder (`--work`: outside the repository) and removed at the end.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lookalike  # noqa: E402
from common import (  # noqa: E402
    GENERATOR,
    ROOT,
    environment_markdown,
    load_watch,
    markdown_table,
    median_seconds,
    parser,
    should_write,
    wait_for_quiet,
    write_section,
)
from lookalike import runtime  # noqa: E402
from lookalike.data.vectors import random_cluster_model  # noqa: E402
from lookalike.fileio import require_free_disk  # noqa: E402
from lookalike.gallery import DEFAULT_SHARD_ROWS, Gallery, open_gallery  # noqa: E402
from lookalike.gallery.generated import write_generated_gallery_blocks  # noqa: E402
from lookalike.search import SearchMethod, default_nlist  # noqa: E402
from lookalike.search.faiss_index import MAX_POINTS_PER_CENTROID  # noqa: E402
from lookalike.search.ondisk import LOCAL_WORKERS, MAX_TRAIN_ROWS, PART_ROWS  # noqa: E402
from lookalike.search.rerank import COLD_QUERIES  # noqa: E402
from lookalike.search.searcher import Searcher  # noqa: E402
from lookalike.search.storage import method_dir  # noqa: E402
from lookalike.study.metrics import recall_at_k, streamed_top_k  # noqa: E402
from lookalike.study.resident import Resident, ResidentSampler, available_memory_bytes  # noqa: E402
from lookalike.study.scale import (  # noqa: E402
    DISK_MARGIN,
    METADATA_ROW_BYTES,
    format_size,
    ondisk_index_bytes,
    parse_sizes,
)
from lookalike.study.timing import Latency, measure_latency  # noqa: E402

SECTION = "Beyond memory: 10M out of core (issue 21)"
RETIRED = ("Scale beyond memory (issue 21)",)  # the hand-written methods section this one replaces
METHOD = "ivfpq-ondisk"
SIZES, DIM = (1_000_000, 10_000_000), 512
# --quick: the smaller size holds two parts (PART_ROWS rows each), so the fan-out still has one per actor
QUICK_SIZES, QUICK_DIM = (300_000, 600_000), 128
SEED = 0
QUERY_SEED = SEED + 2  # the gallery's blocks are drawn with [SEED + 1, i]: the queries are other draws
VALIDATION = TEST = 500
K = 10
SINGLES = 200  # single queries timed per grid point
NPROBES = (8, 16, 32, 64, 128, 256)
K_FACTORS = (1, 4, 16)
TARGETS = (0.90, 0.95)
ACTORS = 2
BATCH = 500  # queries per batch call for throughput
QUIET = 1.0  # a phase that began at a higher 1-minute load ran on a busy machine: not valid for a goal
OTHERS_MAX = 0.5  # … as did one during which other processes used more cores than this, on average
GIB = 2**30
GOAL_ANON = 4 * GIB
GOAL_GROWTH = 1.3  # the larger size's anonymous peak within 30% of the smaller's, per phase
GOAL_BUILD_S = 60 * 60
GOAL_RECALL, GOAL_P50_MS = 0.90, 10.0
GOAL_P99_MS = 50.0  # the projection's latency target
PROJECT_TO = (100_000_000, 1_000_000_000)
FAISS_MIN_POINTS = 39  # k-means points per centroid below which FAISS warns that training is too thin
SIZE_PHASES = ("write", "build", "exact", "search")  # measured at every size; "fan-out" at the smallest only

T = TypeVar("T")


# --- measuring a phase ---


@dataclass(frozen=True)
class Phase:
    """One phase at one size: wall and CPU time, peak resident memory, and the 1-minute load around it."""

    name: str
    seconds: float
    cpu_own: float  # CPU seconds of this process (all its threads)
    cpu_children: float  # … of its children that ended during the phase (the build's part processes)
    load_before: float
    load_after: float
    others: float  # cores that other processes used during the phase, on average (the machine's busy CPU less ours)
    memory: Resident

    @property
    def valid(self) -> bool:
        """Quiet at the start and nobody else busy during the phase; the load after includes the phase's own processes,
        so it does not decide."""
        return self.load_before <= QUIET and self.others <= OTHERS_MAX

    @property
    def largest_anon(self) -> int:
        return max(self.memory.anon_bytes, self.memory.workers_anon_bytes)


def cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds so far of this process, of its ended and waited-for children, and of the whole machine (busy, not
    idle, waiting for I/O or stolen by the hypervisor)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, busy


def run_phase(name: str, work: Callable[[], T], wait: bool) -> tuple[Phase, T]:
    """Run `work` as one measured phase, after the machine quietened down from the last one when `wait`."""
    if wait:
        wait_for_quiet()
    load_before = os.getloadavg()[0]
    before = cpu_seconds()
    started = time.perf_counter()
    print(f"  {name} …", flush=True)
    with ResidentSampler() as sampler:
        result = work()
    seconds = time.perf_counter() - started
    own, children, busy = (after - at_start for after, at_start in zip(cpu_seconds(), before))
    phase = Phase(
        name,
        round(seconds, 2),
        round(own, 2),
        round(children, 2),
        load_before,
        os.getloadavg()[0],
        max(0.0, busy - own - children) / seconds,
        sampler.peak,
    )
    print(
        f"  {name}: {seconds:.1f} s, anon {phase.memory.anon_bytes / 2**20:.0f} MiB, file"
        f" {phase.memory.file_bytes / 2**20:.0f} MiB, workers {phase.memory.workers_anon_bytes / 2**20:.0f} MiB, load"
        f" {load_before:.1f} → {phase.load_after:.1f}",
        flush=True,
    )
    return phase, result


# --- the search phase: the grid, the chosen settings, cold latency ---


@dataclass(frozen=True)
class Point:
    """One search setting: recall@10 on the validation and test queries, single-query latency on 200 validation
    queries, and the list entries (PQ codes) scanned per query."""

    nprobe: int
    k_factor: int
    recall_val: float
    recall_test: float
    p50_ms: float
    p99_ms: float
    codes: float

    @property
    def params(self) -> dict[str, int]:
        return {"nprobe": self.nprobe, "k_factor": self.k_factor}

    def label(self) -> str:
        return f"nprobe {self.nprobe}, k_factor {self.k_factor}"


@dataclass(frozen=True)
class Operating:
    """The cheapest grid setting reaching `target` on the validation queries, measured on the test queries."""

    target: float
    point: Point
    latency: Latency  # warm: every test query single, then in one batch
    recall: float  # test recall@10 of the batch
    cold_ms: float  # median single query right after the lists and the shards left the page cache


@dataclass(frozen=True)
class Search:
    curve: tuple[Point, ...]
    operating: tuple[Operating, ...]  # one per target the grid reached
    quantiser_ms: float  # one query's coarse assignment to its lists (the flat quantiser), median


def grid_point(method: SearchMethod, queries: np.ndarray, truth: np.ndarray, nprobe: int, k_factor: int) -> Point:
    """Recall and codes scanned from one batch of every query; latency from single validation queries."""
    params = {"nprobe": nprobe, "k_factor": k_factor}
    faiss.cvar.indexIVF_stats.reset()
    _, found = method.search(queries, K, params)
    codes = faiss.cvar.indexIVF_stats.ndis / len(queries)
    latency, _ = measure_latency(method, queries[:SINGLES], K, params, single_queries=SINGLES, batch_repeats=1)
    return Point(
        nprobe,
        k_factor,
        recall_at_k(found[:VALIDATION], truth[:VALIDATION], K),
        recall_at_k(found[VALIDATION:], truth[VALIDATION:], K),
        latency.single_ms,
        latency.single_p99_ms,
        codes,
    )


def cheapest(curve: Sequence[Point], target: float) -> Point | None:
    """The setting with the lowest single-query p50 whose validation recall reaches `target` (None: none does)."""
    reaching = [p for p in curve if p.recall_val >= target]
    return min(reaching, key=lambda p: p.p50_ms) if reaching else None


def search_phase(gallery: Gallery, queries: np.ndarray, truth: np.ndarray) -> tuple[SearchMethod, Search]:
    """Load the saved index, as a server would; the grid, then each target's cheapest setting on the test queries:
    warm first, cold last (dropping the page cache would make the later warm figures cold)."""
    method = Searcher(gallery).method(METHOD)
    nlist = faiss.extract_index_ivf(method.index).nlist
    curve = tuple(
        grid_point(method, queries, truth, nprobe, k_factor)
        for k_factor in K_FACTORS
        for nprobe in NPROBES
        if nprobe <= nlist
    )
    test, truth_test = queries[VALIDATION:], truth[VALIDATION:]
    warm = []
    for target in TARGETS:
        point = cheapest(curve, target)
        if point is not None:
            latency, found = measure_latency(method, test, K, point.params, single_queries=len(test))
            warm.append((target, point, latency, recall_at_k(found, truth_test, K)))
    operating = tuple(
        Operating(target, point, latency, recall, method.cold_single_ms(test, K, point.params))
        for target, point, latency, recall in warm
    )
    quantizer = faiss.extract_index_ivf(method.index).quantizer
    query = np.ascontiguousarray(test[:1])
    nprobe = operating[0].point.nprobe if operating else NPROBES[0]
    quantiser = 1000 * median_seconds(lambda: quantizer.search(query, nprobe), repeats=SINGLES)
    return method, Search(curve, operating, quantiser)


# --- the Ray fan-out ---


@dataclass(frozen=True)
class FanOut:
    """The index's parts over Ray actors against the single index, at one setting per target."""

    actors: int
    parts: int
    settings: tuple[str, ...]  # compared at each; timed at the first
    compared: int  # test queries × settings compared
    ids_equal: int  # … whose ten ids equal the single index's, in order
    scores_equal: int  # … whose ten scores equal them (relative 1e-6)
    single_ms: float  # p50, one query per call, fanned out
    local_single_ms: float  # … in this process
    qps: float  # batch throughput, fanned out
    local_qps: float  # … in this process, at the run's threads
    local_qps_all_cores: float  # … in this process, one thread per core
    cores: int
    threads: int


def batch_qps(method: SearchMethod, queries: np.ndarray, params: dict[str, int]) -> float:
    """Queries per second of one batch call (median of 3, after one untimed)."""
    return len(queries) / median_seconds(lambda: method.search(queries, K, params), repeats=3)


def fan_out_phase(gallery: Gallery, test: np.ndarray, settings: list[dict], threads: int) -> FanOut:
    """Search the saved index in this process and fanned out over ACTORS actors of a local Ray cluster; the actors
    are released after."""
    from lookalike.distributed import connected, fan_out

    local = Searcher(gallery).method(METHOD)
    with connected():
        fanned = Searcher(gallery, engine=fan_out(actors=ACTORS)).method(METHOD)
        try:
            ids_equal = scores_equal = 0
            for params in settings:
                scores, ids = local.search(test, K, params)
                fanned_scores, fanned_ids = fanned.search(test, K, params)
                ids_equal += int((ids == fanned_ids).all(axis=1).sum())
                scores_equal += int(np.isclose(scores, fanned_scores, rtol=1e-6, atol=0).all(axis=1).sum())
            params = settings[0]
            fanned_latency, _ = measure_latency(fanned, test[:SINGLES], K, params, SINGLES, batch_repeats=1)
            local_latency, _ = measure_latency(local, test[:SINGLES], K, params, SINGLES, batch_repeats=1)
            batch = test[:BATCH]
            qps, local_qps = batch_qps(fanned, batch, params), batch_qps(local, batch, params)
            cores = runtime.set_threads(None)
            local_qps_all = batch_qps(local, batch, params)
            runtime.set_threads(threads)
            actors = len(fanned.actors)
        finally:
            fanned.close()
    return FanOut(
        actors,
        len(local.parts),
        tuple(", ".join(f"{key} {value}" for key, value in params.items()) for params in settings),
        len(test) * len(settings),
        ids_equal,
        scores_equal,
        fanned_latency.single_ms,
        local_latency.single_ms,
        qps,
        local_qps,
        local_qps_all,
        cores,
        threads,
    )


# --- one size ---


@dataclass(frozen=True)
class IndexBytes:
    part_files: int
    ram: int  # what the loaded index holds in RAM: quantiser, codebooks, list offsets, the id map
    lists: int  # the merged lists file (memory-mapped by one process)
    parts: int  # the parts kept beside it (memory-mapped by the fan-out's actors)
    disk: int  # every file of the saved index


@dataclass(frozen=True)
class SizeRun:
    size: int
    dim: int
    phases: dict[str, Phase]
    gallery_bytes: int  # the shards and the manifest on disk
    index: IndexBytes
    nlist: int
    train_seconds: float
    add_seconds: float  # adding the parts and merging their lists
    search: Search
    fan_out: FanOut | None

    @property
    def at_goal(self) -> Operating | None:
        return next((o for o in self.search.operating if o.target == GOAL_RECALL), None)


def held_out_queries(d: int, n: int) -> np.ndarray:
    """`n` queries from the gallery's own mixture, drawn apart from its rows (another seed)."""
    return random_cluster_model(d, SEED, **asdict(GENERATOR)).sample(n, QUERY_SEED)[0]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def index_bytes(gallery: Gallery, method: SearchMethod) -> IndexBytes:
    folder = method_dir(gallery, METHOD)
    return IndexBytes(
        len(method.parts),
        method.memory_bytes(),
        method.file_bytes(),
        sum(p.stat().st_size for p in method.parts),
        folder_bytes(folder),
    )


def measure_size(size: int, d: int, path: Path, queries: np.ndarray, threads: int, wait: bool) -> SizeRun:
    """Every phase but the fan-out at one size, in the gallery folder `path`."""
    runtime.set_threads(None)  # writing, building and exact search are throughput jobs: every core
    write, gallery = run_phase(
        "write",
        lambda: write_generated_gallery_blocks(path, size, d, seed=SEED, overwrite=True, **asdict(GENERATOR)),
        wait,
    )
    build, built = run_phase("build", lambda: lookalike.build_index(gallery, METHOD), wait)
    stats, nlist = built.build_stats, faiss.extract_index_ivf(built.index).nlist
    del built  # the search phase loads the saved index, as a server would
    exact, truth = run_phase("exact", lambda: streamed_top_k(gallery.embeddings, queries, K), wait)
    runtime.set_threads(threads)
    search_run, (local, search) = run_phase("search", lambda: search_phase(gallery, queries, truth), wait)
    return SizeRun(
        size,
        d,
        {p.name: p for p in (write, build, exact, search_run)},
        sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        index_bytes(gallery, local),
        nlist,
        stats.train_seconds,
        stats.build_seconds,
        search,
        None,
    )


def with_fan_out(run: SizeRun, path: Path, queries: np.ndarray, threads: int, wait: bool) -> SizeRun:
    """The fan-out phase on a size measured before, run last: Ray's libraries then never sit in this process's memory
    while the sizes' phases are compared."""
    # each target's setting; the best-recall one when none was reached (identity does not depend on recall)
    curve, operating = run.search.curve, run.search.operating
    settings = [o.point.params for o in operating] or [max(curve, key=lambda p: p.recall_val).params]
    phase, fanned = run_phase(
        "fan-out", lambda: fan_out_phase(open_gallery(path), queries[VALIDATION:], settings, threads), wait
    )
    return replace(run, phases={**run.phases, phase.name: phase}, fan_out=fanned)


# --- the projection ---


@dataclass(frozen=True)
class Costs:
    """What the projection multiplies out, each measured: per row at the largest size, or at both sizes where a cost
    grows with N (a straight line through the two), and per query at the recall@10 0.90 setting."""

    sizes: tuple[int, int]  # (smallest, largest)
    dim: int
    disk_per_row: float  # the gallery on disk: shards (4·d bytes a row) and metadata
    index_disk_per_row: float  # the saved index's files: parts and merged lists (a code and an id, twice)
    parts_per_row: float  # the parts alone: what the actors' page cache holds
    anon: tuple[int, int]  # the largest anonymous peak of any process over every phase, at each size
    ram_index: tuple[int, int]  # the loaded index's RAM part at each size (the id map grows 8 bytes a row)
    actor_anon: int  # the largest anonymous peak of a Ray process while fanned out
    add_cpu_per_row: tuple[float, float]  # the part processes' CPU seconds per row at each size
    nlist: tuple[int, int]
    driver_cpu: float  # the build's own process at the largest size: training (the sample is capped), merge, save
    nprobe: tuple[int, int]  # the 0.90 setting's nprobe at each size
    fixed_ms: float  # single-query p50 at zero codes scanned (quantiser, re-rank, call), fitted at the largest size
    ms_per_code: float  # … and per code scanned: the slope of the fit
    imbalance: float  # codes scanned per query against nprobe × N / nlist (queries land in the big lists)
    tail: float  # p99 / p50 of single queries at the 0.90 setting
    quantiser_ms_per_list: float
    fan_out_ms: float  # what a fanned-out query costs above the same query in one process
    node_memory: int  # a node like this machine: its memory and cores
    node_cores: int


def along(sizes: tuple[int, int], values: tuple[float, float], x: float) -> float:
    """A figure at `x`, on the straight line through its values at the two measured sizes; a figure that fell between
    them (noise: nothing here shrinks as N grows) is held at the larger size's value."""
    (x0, x1), (y0, y1) = sizes, values
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return y1 + slope * (x - x1)


def scan_fit(curve: Sequence[Point], k_factor: int) -> tuple[float, float]:
    """(fixed ms, ms per code) of single queries at one k_factor, by least squares over the grid's nprobe values;
    a fit whose slope is not positive (noise) counts every millisecond as scanning."""
    points = [p for p in curve if p.k_factor == k_factor]
    slope, intercept = np.polyfit([p.codes for p in points], [p.p50_ms for p in points], 1)
    if slope <= 0:
        middle = points[len(points) // 2]
        return 0.0, middle.p50_ms / middle.codes
    return max(0.0, float(intercept)), float(slope)


def costs(runs: Sequence[SizeRun]) -> Costs | None:
    """The measured costs, or None when a size missed recall 0.90 or the fan-out was not measured."""
    small, big = runs[0], runs[-1]
    fanned = next((r.fan_out for r in runs if r.fan_out), None)
    if len(runs) < 2 or small.at_goal is None or big.at_goal is None or fanned is None:
        return None
    at = big.at_goal.point
    fixed, per_code = scan_fit(big.search.curve, at.k_factor)
    return Costs(
        sizes=(small.size, big.size),
        dim=big.dim,
        disk_per_row=big.gallery_bytes / big.size,
        index_disk_per_row=big.index.disk / big.size,
        parts_per_row=big.index.parts / big.size,
        anon=(max_anon(small), max_anon(big)),
        ram_index=(small.index.ram, big.index.ram),
        actor_anon=next(r.phases["fan-out"].memory.workers_anon_bytes for r in runs if r.fan_out),
        add_cpu_per_row=tuple(r.phases["build"].cpu_children / r.size for r in (small, big)),
        nlist=(small.nlist, big.nlist),
        driver_cpu=big.phases["build"].cpu_own,
        nprobe=(small.at_goal.point.nprobe, at.nprobe),
        fixed_ms=fixed,
        ms_per_code=per_code,
        imbalance=at.codes / (at.nprobe * big.size / big.nlist),
        tail=big.at_goal.latency.single_p99_ms / big.at_goal.latency.single_ms,
        quantiser_ms_per_list=big.search.quantiser_ms / big.nlist,
        fan_out_ms=max(0.0, fanned.single_ms - fanned.local_single_ms),
        node_memory=int(psutil.virtual_memory().total),
        node_cores=runtime.default_threads(),
    )


def max_anon(run: SizeRun) -> int:
    """The largest anonymous peak of any process over the phases every size has (the fan-out runs at one)."""
    return max(run.phases[name].largest_anon for name in SIZE_PHASES)


def projected_nprobe(c: Costs, n: int) -> int:
    """nprobe for recall@10 0.90 at n rows: the measured growth from the smaller to the larger size, as a power of N
    (between 0 and 1), continued; at most nlist."""
    (n0, n1), (p0, p1) = c.sizes, c.nprobe
    power = min(1.0, max(0.0, math.log(p1 / p0) / math.log(n1 / n0)))
    return min(default_nlist(n), math.ceil(p1 * (n / n1) ** power))


def codes_per_query(c: Costs, n: int) -> float:
    """Codes one query scans at n rows: nprobe lists of N / nlist entries (nlist = √N), times the measured
    imbalance."""
    return c.imbalance * projected_nprobe(c, n) * n / default_nlist(n)


def fixed_ms(c: Costs, n: int) -> float:
    """The part of a fanned-out query that actors do not share: the measured fixed cost, the quantiser's growth with
    nlist, and the Ray call."""
    return c.fixed_ms + c.quantiser_ms_per_list * (default_nlist(n) - c.nlist[1]) + c.fan_out_ms


def p99_ms(c: Costs, n: int, actors: int) -> float:
    """Single-query p99 at n rows over `actors` actors (one core each): the fixed part plus the scan split evenly
    over the actors, times the measured p99/p50."""
    return c.tail * (fixed_ms(c, n) + c.ms_per_code * codes_per_query(c, n) / actors)


def actors_for(c: Costs, n: int, target_ms: float = GOAL_P99_MS) -> int | None:
    """The fewest actors for a p99 of `target_ms` at n rows (None: the fixed part alone exceeds it)."""
    room = target_ms / c.tail - fixed_ms(c, n)
    if room <= 0:
        return None
    return max(1, math.ceil(c.ms_per_code * codes_per_query(c, n) / room))


@dataclass(frozen=True)
class Projection:
    rows: int
    vectors_disk: float  # the gallery: shards and metadata
    index_disk: float  # parts and merged lists
    driver_anon: float  # the largest anonymous peak of the single-process phases (the id map grows with N)
    nprobe: int
    p99_one_actor_ms: float
    actors: int | None
    nodes: int | None  # for the p99 target and for the parts to stay in the page cache
    node_ram: float | None  # one node: its actors' anonymous peaks and the page cache of its share of the parts
    build_core_hours: float


def project(c: Costs, n: int) -> Projection:
    """The cluster for n rows, from the measured costs (`Costs`)."""
    nlist = default_nlist(n)
    parts = c.parts_per_row * n
    actors = actors_for(c, n)
    # a node's page cache: its memory less one actor's anonymous peak per core
    cache_room = c.node_memory - c.node_cores * c.actor_anon
    nodes = None if actors is None else max(math.ceil(actors / c.node_cores), math.ceil(parts / cache_room))
    add = n * along(c.nlist, c.add_cpu_per_row, nlist)  # assigning a row to its list costs ∝ nlist
    train = c.driver_cpu * nlist / c.nlist[1]  # k-means on a capped sample: ∝ nlist
    return Projection(
        rows=n,
        vectors_disk=c.disk_per_row * n,
        index_disk=c.index_disk_per_row * n,
        driver_anon=along(c.sizes, c.anon, n),
        nprobe=projected_nprobe(c, n),
        p99_one_actor_ms=p99_ms(c, n, 1),
        actors=actors,
        nodes=nodes,
        node_ram=None if nodes is None else c.node_cores * c.actor_anon + parts / nodes,
        build_core_hours=(add + train) / 3600,
    )


def rows_label(n: int) -> str:
    return f"{n / 1e9:g}B" if n >= 1_000_000_000 else format_size(n)


# --- the report ---


def gib(n: float) -> str:
    return f"{n / GIB:.2f}" if n < 100 * GIB else f"{n / GIB:,.0f}"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def verdict(met: bool, valid: bool) -> str:
    """Met or not, and whether the figures may count for a goal at all."""
    text = "**met** ✓" if met else "**not met** ✗"
    return (
        text
        if valid
        else f"{text}, but **NOT VALID FOR A GOAL** (a phase began at 1-minute load > {QUIET}, or other processes"
        f" used more than {OTHERS_MAX} core during it)"
    )


def phase_table(runs: Sequence[SizeRun]) -> str:
    rows = [
        [
            format_size(r.size),
            p.name,
            f"{p.seconds:,.1f}",
            f"{p.cpu_own:,.0f} + {p.cpu_children:,.0f}",
            f"{p.load_before:.1f} → {p.load_after:.1f}",
            f"{p.others:.2f}" + ("" if p.valid else " ✗"),
            mib(p.memory.anon_bytes),
            mib(p.memory.file_bytes),
            mib(p.memory.workers_anon_bytes) if p.memory.workers_anon_bytes else "–",
        ]
        for r in runs
        for p in r.phases.values()
    ]
    return markdown_table(
        [
            "size",
            "phase",
            "wall s",
            "CPU s (this + children)",
            "load before → after",
            "others' cores",
            "anon MiB (this process)",
            "file MiB (this process)",
            "anon MiB (largest child)",
        ],
        rows,
    )


def size_table(runs: Sequence[SizeRun]) -> str:
    rows = []
    for r in runs:
        built = [
            format_size(r.size),
            gib(r.gallery_bytes),
            f"{r.nlist} / {r.index.part_files}",
            f"{r.train_seconds:,.0f} / {r.add_seconds:,.0f}",
            f"{mib(r.index.ram)} + {mib(r.index.lists)} + {mib(r.index.parts)}",
        ]
        rows += [
            [
                *built,
                f"≥ {o.target:.2f}: {o.point.label()}",
                f"{o.recall:.4f}",
                f"{o.latency.single_ms:.2f} / {o.latency.single_p99_ms:.2f}",
                f"{o.cold_ms:.1f}",
                f"{o.latency.batch_ms:.3f}",
            ]
            for o in r.search.operating
        ] or [[*built, f"none reached {TARGETS[0]:.2f}", "–", "–", "–", "–"]]
    return markdown_table(
        [
            "size",
            "gallery GiB",
            "nlist / parts",
            "train / add + merge s",
            "index MiB: RAM + lists + parts",
            "cheapest setting (validation recall)",
            "test recall@10",
            "warm single ms p50 / p99",
            "cold single ms p50",
            "batch ms/query",
        ],
        rows,
    )


def goal_lines(runs: Sequence[SizeRun]) -> list[str]:
    small, big = runs[0], runs[-1]
    lines = []
    worst = max(((r, p) for r in runs for p in r.phases.values()), key=lambda rp: rp[1].largest_anon)
    lines.append(
        f"- **Memory ≤ {GOAL_ANON // GIB} GiB anonymous per process, every phase**: the largest is"
        f" {gib(worst[1].largest_anon)} GiB ({worst[1].name} at {format_size(worst[0].size)});"
        f" file-backed pages apart (up to {gib(max(p.memory.file_bytes for r in runs for p in r.phases.values()))} GiB,"
        f" the page cache's) — {verdict(worst[1].largest_anon <= GOAL_ANON, all_valid(runs))}"
    )
    if len(runs) > 1:
        for name in big.phases:
            if name not in small.phases:
                continue
            a, b = small.phases[name], big.phases[name]
            pairs = [("this process", a.memory.anon_bytes, b.memory.anon_bytes)]
            if a.memory.workers_anon_bytes and b.memory.workers_anon_bytes:
                pairs.append(("largest child", a.memory.workers_anon_bytes, b.memory.workers_anon_bytes))
            text = "; ".join(f"{who} {mib(x)} → {mib(y)} MiB ({y / x:.2f}×)" for who, x, y in pairs)
            met = all(y <= GOAL_GROWTH * x for _, x, y in pairs)
            lines.append(
                f"- **{name}: {format_size(big.size)} within {100 * (GOAL_GROWTH - 1):.0f}% of"
                f" {format_size(small.size)}** (anonymous): {text} — {verdict(met, a.valid and b.valid)}"
            )
    build = big.phases["build"]
    lines.append(
        f"- **Build ≤ {GOAL_BUILD_S // 60} min at {format_size(big.size)}**: {build.seconds / 60:.1f} min (train"
        f" {big.train_seconds / 60:.1f}, add + merge {big.add_seconds / 60:.1f}, the rest saving) —"
        f" {verdict(build.seconds <= GOAL_BUILD_S, build.valid)}"
    )
    at = big.at_goal
    search = big.phases["search"]
    if at is None:
        lines.append(
            f"- **Recall@10 ≥ {GOAL_RECALL:.2f} at p50 ≤ {GOAL_P50_MS:g} ms**: no grid setting reached"
            f" {GOAL_RECALL:.2f} at {format_size(big.size)} — {verdict(False, search.valid)}"
        )
    else:
        met = at.recall >= GOAL_RECALL and at.latency.single_ms <= GOAL_P50_MS
        lines.append(
            f"- **Recall@10 ≥ {GOAL_RECALL:.2f} at single-query p50 ≤ {GOAL_P50_MS:g} ms, warm, at"
            f" {format_size(big.size)}**: {at.point.label()} gives test recall {at.recall:.4f} at p50"
            f" {at.latency.single_ms:.2f} ms (p99 {at.latency.single_p99_ms:.2f}; cold {at.cold_ms:.1f} ms) —"
            f" {verdict(met, search.valid)}"
        )
    return lines


def all_valid(runs: Sequence[SizeRun]) -> bool:
    return all(p.valid for r in runs for p in r.phases.values())


def curve_section(run: SizeRun) -> str:
    rows = [
        [
            p.nprobe,
            p.k_factor,
            f"{p.recall_val:.4f}",
            f"{p.recall_test:.4f}",
            f"{p.p50_ms:.2f}",
            f"{p.p99_ms:.2f}",
            f"{p.codes:,.0f}",
        ]
        for p in run.search.curve
    ]
    table = markdown_table(
        ["nprobe", "k_factor", "recall@10 validation", "recall@10 test", "single ms p50", "p99", "codes scanned/query"],
        rows,
    )
    picks = []
    for target in TARGETS:
        o = next((o for o in run.search.operating if o.target == target), None)
        picks.append(
            f"- Cheapest reaching {target:.2f} on validation: "
            + (
                f"**{o.point.label()}** — p50 {o.point.p50_ms:.2f} ms; on test: recall {o.recall:.4f}, p50"
                f" {o.latency.single_ms:.2f} ms warm, {o.cold_ms:.1f} ms cold"
                if o
                else "none in the grid"
            )
        )
    return "\n".join(
        [
            f"### nprobe × k_factor at {format_size(run.size)} (one built index, parameters per call)",
            "",
            f"nlist {run.nlist}. Recall on {VALIDATION} validation and {TEST} test queries (one batch each);"
            f" single-query latency over {SINGLES} validation queries, one per call, page cache warm; codes scanned per"
            " query from FAISS's `indexIVF_stats`. The cheapest setting is the lowest p50 whose validation recall"
            " reaches the target.",
            "",
            table,
            "",
            *picks,
            f"- The coarse assignment alone (the flat quantiser over {run.nlist} centroids):"
            f" {run.search.quantiser_ms:.2f} ms per query.",
        ]
    )


def fan_out_section(run: SizeRun) -> str:
    f = run.fan_out
    settings = "; ".join(f.settings)
    equal = f.ids_equal == f.compared and f.scores_equal == f.compared
    return "\n".join(
        [
            f"### Ray fan-out at {format_size(run.size)}",
            "",
            f"- A local Ray cluster (`lookalike.distributed.connected()`, {f.cores} CPUs), the saved index's {f.parts}"
            f" parts over {f.actors} actors (`Searcher(gallery, engine=fan_out(actors={ACTORS}))`).",
            f"- **Identical to the single index**: ids equal on {f.ids_equal} of {f.compared} and scores (relative"
            f" 1e-6) on {f.scores_equal} of {f.compared} test queries × settings ({settings}) —"
            f" {verdict(equal, run.phases['fan-out'].valid)}",
            f"- **Batch throughput** ({BATCH} queries per call, {f.settings[0]}): fanned out"
            f" **{f.qps:,.0f} queries/s**; one process {f.local_qps:,.0f} queries/s at {f.threads} thread(s),"
            f" {f.local_qps_all_cores:,.0f} at {f.cores} ({f.qps / f.local_qps:.2f}× and"
            f" {f.qps / f.local_qps_all_cores:.2f}×). Both actors share this machine's {f.cores} cores with the driver,"
            " so this measures what the fan-out costs, not how it scales across nodes.",
            f"- Single query: {f.single_ms:.2f} ms fanned out against {f.local_single_ms:.2f} ms in one process: the"
            f" Ray round trip costs {max(0.0, f.single_ms - f.local_single_ms):.2f} ms a query.",
            f"- Memory while fanned out: driver anonymous {mib(run.phases['fan-out'].memory.anon_bytes)} MiB, the"
            f" largest Ray process {mib(run.phases['fan-out'].memory.workers_anon_bytes)} MiB anonymous. The actors"
            " were released after.",
        ]
    )


def projection_section(c: Costs | None) -> str:
    heading = (
        f"### PROJECTION to {', '.join(map(rows_label, PROJECT_TO))} (not measured: the measured per-vector costs"
        " multiplied out)"
    )
    if c is None:
        return f"{heading}\n\nNot projected: it needs two sizes that reach recall@10 {GOAL_RECALL:.2f} and the fan-out."
    big = c.sizes[1]
    projections = [project(c, n) for n in (big, *PROJECT_TO)]
    rows = [
        [
            rows_label(p.rows) + (" (model at the measured size)" if p.rows == big else " PROJECTION"),
            gib(p.vectors_disk),
            gib(p.index_disk),
            gib(p.driver_anon),
            p.nprobe,
            f"{p.p99_one_actor_ms:,.0f}",
            "–" if p.actors is None else f"{p.actors:,}",
            "unreachable" if p.nodes is None else f"{p.nodes:,}",
            "–" if p.node_ram is None else gib(p.node_ram),
            f"{p.build_core_hours:,.1f}",
        ]
        for p in projections
    ]
    table = markdown_table(
        [
            "rows",
            "gallery on disk GiB",
            "index on disk GiB",
            "driver anon GiB",
            "nprobe (0.90)",
            "p99 ms fanned out to one actor",
            f"actors for p99 ≤ {GOAL_P99_MS:g} ms",
            "nodes",
            "RAM per node GiB (actors + page cache)",
            "build core-hours",
        ],
        rows,
    )
    (n0, n1) = c.sizes
    sparse = MAX_TRAIN_ROWS // FAISS_MIN_POINTS  # the nlist beyond which the capped sample is too thin
    inputs = [
        f"- Disk: {c.disk_per_row:,.0f} bytes a row for the gallery ({4 * c.dim} of them the float32 vector, the rest"
        f" metadata), {c.index_disk_per_row:,.0f} for the index's files (the parts, {c.parts_per_row:,.0f} bytes a row:"
        " a code and an id, and the merged lists again), measured at " + format_size(n1) + ".",
        f"- Driver RAM: the largest anonymous peak of the phases measured at both sizes ({', '.join(SIZE_PHASES)}),"
        f" {mib(c.anon[0])} MiB at {format_size(n0)} and {mib(c.anon[1])} MiB at {format_size(n1)}, continued along"
        f" that line ({along(c.sizes, c.anon, n1 + 1) - c.anon[1]:.1f} bytes a row; a fall is held flat). What grows"
        f" is the driver's: the loaded index's RAM part ({mib(c.ram_index[0])} → {mib(c.ram_index[1])} MiB) is mostly"
        " the id map, 8 bytes a row, in the process that loads the index and re-ranks.",
        f"- Node RAM: a node is this machine ({c.node_cores} cores, {gib(c.node_memory)} GiB), one actor per core, each"
        f" {mib(c.actor_anon)} MiB anonymous (the largest Ray process measured; actors map their parts, so this does"
        " not grow with N), plus the page cache that keeps the node's share of the parts warm. Re-ranking reads"
        " k × k_factor rows a query from the shards (on shared storage): the warm figures assume those pages cached on"
        " the driver's node; the cold column above shows the other case.",
        f"- Build: the part processes' CPU, {1e6 * c.add_cpu_per_row[0]:.1f} and {1e6 * c.add_cpu_per_row[1]:.1f} µs a"
        f" row at nlist {c.nlist[0]} and {c.nlist[1]}, continued as a line in nlist (assigning a row to its list costs"
        f" ∝ nlist); the build process's own CPU ({c.driver_cpu:,.0f} s at {format_size(n1)}: training, merging,"
        f" saving) grows ∝ nlist, the training sample being capped at {MAX_TRAIN_ROWS:,} rows. At nlist above"
        f" {sparse:,} (N > {format_size(round(sparse**2, -5))}) that cap leaves k-means fewer than FAISS's minimum of"
        f" {FAISS_MIN_POINTS} points per list, which this projection does not price.",
        f"- Search: nlist = √N; nprobe for recall 0.90 grows as measured from {c.nprobe[0]} at {format_size(n0)} to"
        f" {c.nprobe[1]} at {format_size(n1)} (a power of N, continued); a query scans nprobe × N / nlist codes ×"
        f" {c.imbalance:.2f} (the measured imbalance: queries land in the larger lists). Single-query p50 ="
        f" {c.fixed_ms:.2f} ms fixed + {1e6 * c.ms_per_code:.2f} ns per code (least squares over the grid at"
        f" {format_size(n1)}), + {1e3 * c.quantiser_ms_per_list:.2f} µs per extra list for the quantiser, +"
        f" {c.fan_out_ms:.2f} ms for the Ray call (measured at {format_size(n0)}); the scan splits evenly over the"
        f" actors, one core each; p99 = {c.tail:.2f} × p50 (measured in one process: the slowest of many actors makes"
        " the real tail longer, so the node counts are a floor). Nodes = the more of the actors ÷ cores and the parts ÷"
        " page cache per node.",
    ]
    return "\n".join([heading, "", table, "", *inputs])


def intro(sizes: Sequence[int], d: int) -> str:
    return "\n".join(
        [
            f"`benchmarks/bench_outofcore.py`: {', '.join(format_size(s) for s in sizes)} × {d} **GENERATED** vectors"
            " (not real embeddings, no images): `write_generated_gallery_blocks` with `GeneratorParams("
            + ", ".join(f"{k}={v}" for k, v in asdict(GENERATOR).items())
            + f")`, seed {SEED}, drawn and written as a gallery of shards ({DEFAULT_SHARD_ROWS:,} rows each) one"
            f" block at a time; {VALIDATION + TEST} held-out queries drawn from the same mixture with seed"
            f" {QUERY_SEED}, half to choose a setting (validation), half to report it (test). Each size is written,"
            " indexed, checked and searched in its own folder, removed after (the smallest after the fan-out, run"
            " last).",
            "",
            f'- **Build**: `lookalike.build_index(gallery, "{METHOD}")` — trained on a seeded sample of at most'
            f" {MAX_TRAIN_ROWS:,} rows ({MAX_POINTS_PER_CENTROID} a list), each part of {PART_ROWS:,} rows added by one"
            f" of {LOCAL_WORKERS} processes that"
            " maps its rows from the shards, the parts' lists merged into one memory-mapped file, saved in the gallery"
            " (parts kept for the fan-out). Writing, building and exact search use every core; searching uses the"
            " run's threads.",
            "- **Recall** is against exact search streamed over the shards (`metrics.streamed_top_k`: one block of"
            " scores and a running top-k per query in memory, ties to the lower id), never against an approximation.",
            "- **Memory per phase** is the peak of `RssAnon` and of `RssFile` in `/proc/<pid>/status`, sampled every"
            " 50 ms by a thread (`study.resident.ResidentSampler`), for this process and, apart, the largest"
            " `RssAnon` of its child processes (the build's part processes, Ray's processes and actors). File-backed"
            " pages (mapped shards, lists and parts, and the libraries) are the page cache's, which the kernel"
            f" reclaims, so the goal of ≤ {GOAL_ANON // GIB} GiB is on the anonymous columns. CPU seconds are this"
            " process's and its ended children's (`getrusage`).",
            "- **Index bytes**: what the loaded index holds in RAM (quantiser, codebooks, list offsets, the id map),"
            " the merged lists file, and the parts kept beside it.",
            "- **Latency**: warm = the test queries searched once in a batch first, then one per call (median, p99);"
            f" cold = the median of {COLD_QUERIES} single queries, each right after the lists file and every shard"
            " were dropped from the page cache (`madvise(MADV_DONTNEED)` on the mappings, then"
            " `posix_fadvise(POSIX_FADV_DONTNEED)`).",
            f"- **Load**: the 1-minute load average before and after each phase (the run waits for it to fall under"
            " 0.6 first), and the cores other processes used during it (the machine's busy CPU time in /proc/stat"
            f" less this process's and its children's). A phase that began above {QUIET}, or beside others using more"
            f" than {OTHERS_MAX} core, ran on a busy machine: its figures are not valid for a goal (✗). The load"
            " after includes the phase's own processes, so it does not decide. The same measurements for a real"
            ' gallery: `lookalike scale --out-of-core` (README, "The scale study beyond memory").',
        ]
    )


def markdown(runs: Sequence[SizeRun], load: dict, quick: bool) -> str:
    big = runs[-1]
    parts = [
        intro([r.size for r in runs], big.dim),
        "### Phases",
        phase_table(runs),
        "### Index and search (the cheapest setting per recall target, measured on the test queries)",
        size_table(runs),
        "### Goals",
        "\n".join(goal_lines(runs)),
        curve_section(big),
    ]
    parts += [fan_out_section(r) for r in runs if r.fan_out]
    parts += [projection_section(costs(runs)), environment_markdown(load, quick)]
    return "\n\n".join(parts)


# --- the run ---


def work_folder(parent: str | None) -> Path:
    """A fresh folder for the galleries, outside the repository (20 GB must not land in a checkout)."""
    base = Path(parent or tempfile.gettempdir()).resolve()
    if base.is_relative_to(ROOT):
        raise SystemExit(f"--work {base} is inside the repository {ROOT}; point it at a folder outside")
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="lookalike-bench-outofcore-", dir=base))


def check_disk(folder: Path, sizes: Sequence[int], d: int) -> None:
    """Stop before writing anything when the galleries on disk at once would not fit: the smallest, kept for the
    fan-out, and the largest (the others are removed after their phases)."""
    at_once = {sizes[0], sizes[-1]}
    need = int(DISK_MARGIN * sum(n * (4 * d + METADATA_ROW_BYTES) + ondisk_index_bytes(n, d) for n in at_once))
    shown = " and ".join(format_size(n) for n in sorted(at_once))
    require_free_disk(folder, need, f"the {shown} × {d} galleries and their {METHOD} indexes (--work)")


def gallery_path(folder: Path, size: int) -> Path:
    return folder / f"gallery-{format_size(size)}"


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma-separated rows per size, e.g. 1M,10M (default: 1M,10M)")
    p.add_argument("--dim", type=int, default=None, help=f"vector dimension (default {DIM}; --quick {QUICK_DIM})")
    p.add_argument("--work", default=None, help="parent folder of the temporary work folder (default: the temp dir)")
    # one thread for searching, as the scale section: FAISS's second OpenMP thread waits at a barrier on one query
    p.set_defaults(threads=1)
    args = p.parse_args()
    sizes = parse_sizes(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    d = args.dim or (QUICK_DIM if args.quick else DIM)
    threads = runtime.set_threads(args.threads)
    folder = work_folder(args.work)
    try:
        check_disk(folder, sizes, d)
        print(
            f"sizes {', '.join(map(format_size, sizes))} × {d} in {folder}; {available_memory_bytes() / GIB:.1f} GiB"
            " available",
            flush=True,
        )
        queries = held_out_queries(d, VALIDATION + TEST)
        runs = []
        wait = not args.quick
        with load_watch() as load:
            for size in sizes:
                print(f"== {format_size(size)} × {d}", flush=True)
                runs.append(measure_size(size, d, gallery_path(folder, size), queries, threads, wait))
                if size != sizes[0]:
                    shutil.rmtree(gallery_path(folder, size))
            print(f"== fan-out at {format_size(sizes[0])}", flush=True)
            runs[0] = with_fan_out(runs[0], gallery_path(folder, sizes[0]), queries, threads, wait)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = markdown(runs, load, args.quick)
    print(text)
    if should_write(args):
        write_section(SECTION, text, retire=RETIRED)
        print(f"written to docs/benchmarks.md ## {SECTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
