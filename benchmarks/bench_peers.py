"""lookalike's search methods beside hnswlib and usearch: same data, same queries, same threads, one run (issue 9).

Three galleries:
- GENERATED: `write_generated_gallery(n=100_000, d=512, val=1000)` — 99,000 database vectors and
  1,000 held-out queries (the clustered generator of the other sections; no model, no images);
- GENERATED-bunched: the same mixture moved onto one common direction (`make_bunched_embeddings`),
  same sizes, so nearly every pair scores above 0.9 as a random-weight CNN's embeddings of one
  kind of photograph do: 8-bit codes (hnsw-sq8, usearch-i8) cap recall there, where the clustered
  data flatters them (issue 22);
- EXTRACTED: GENERATED images (`lookalike.data.synthetic`) embedded by the project's own resnet18
  with RANDOM weights — real model code on generated pictures, so its neighbours mean nothing,
  but its vectors have a CNN's structure rather than the generator's.
Every method answers the gallery's held-out queries; recall@10 is against exact search (flat).
Under each gallery, a list says where each method loses there: an exact one where it is more than
10% slower than brute, an approximate one where its recall caps below a target or where it reaches
the target only slower than brute.
Each curve sweeps its search breadth (efSearch / expansion_search / nprobe). Single-query
latency: the median over the timed queries, one per call; batched: all queries in one call.
Peers are built with the same graph parameters as lookalike's HNSW (M 32, efConstruction 40)
and run with the same thread count. lookalike's `hnswlib` method is the peer's own library behind
lookalike's interface (M 32, efConstruction 40, as the peer): the gap between the two is what that
interface costs per call; `hnswlib-m16` is the same library with a lighter graph built more carefully
(M 16, efConstruction 100), as are FAISS's `hnsw16-sq8` and `hnsw16-fp16`: the peers keep the
issue's settings, and the peer library's own lighter graph is measured through lookalike's
interface (its build time is in the table). Memory is each
index's own size (FAISS's serialised bytes, hnswlib's saved file, usearch's `memory_usage`).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BUNCHED_LABEL,
    DOC,
    GENERATOR,
    ROOT,
    TARGETS,
    bunched_line,
    environment_markdown,
    generator_line,
    load_watch,
    markdown_table,
    parser,
    should_write,
    where_methods_lose,
    write_bunched_gallery,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.gallery import Gallery, open_gallery  # noqa: E402
from lookalike.search import database_vectors, make_method  # noqa: E402
from lookalike.study.metrics import exact_neighbours, recall_at_k  # noqa: E402

SECTION = "Peers: hnswlib and usearch side by side (issue 9)"
K = 10
M, EF_CONSTRUCTION = 32, 40
EF_VALUES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_VALUES = (1, 2, 4, 8, 16, 32, 64, 128)
HEAD_TO_HEAD_ROUNDS = 6
CONTENDER_WITHIN = 2.0  # a curve's point joins the head-to-head if the sweep timed it within this factor of the fastest
# every graph method sweeps EF_VALUES (hnsw, usearch-*, hnswlib*), IVF sweeps NPROBE_VALUES
LOOKALIKE_METHODS = (
    "brute",  # the baseline every method must beat somewhere: "where each method loses" is judged against it
    "exact-lowp",
    "flat",
    "ivf",
    "hnsw",
    "hnsw-sq8",
    "hnsw16-sq8",
    "hnsw16-fp16",
    "usearch-f16",
    "usearch-i8",
    "hnswlib",
    "hnswlib-m16",
)
WORK = ROOT / "runs" / "bench_peers"
DEFAULT = {"n": 100_000, "val": 1000, "images_per_class": 500, "classes": 20, "image_size": 64, "single": 300}
QUICK = {"n": 6_000, "val": 200, "images_per_class": 30, "classes": 5, "image_size": 32, "single": 30}


@dataclass(frozen=True)
class Point:
    library: str  # "lookalike" or the peer's name
    method: str
    setting: str
    recall: float
    single_ms: float
    batch_ms: float  # per query
    build_s: float
    memory_mib: float
    # sets this point's breadth on its (still built) index and returns its one-query search: for the head-to-head
    prepare: Callable[[], Callable[[np.ndarray], Any]] = field(compare=False, repr=False)


class Peer:
    """The calls a peer library offers, wrapped to lookalike's `search(queries, k)` shape; `setting` sets its
    breadth."""

    def __init__(
        self,
        library: str,
        method: str,
        build: Callable[[np.ndarray], Any],
        search: Callable[[Any, np.ndarray, int], np.ndarray],
        set_breadth: Callable[[Any, int], None],
        memory: Callable[[Any], int],
    ):
        self.library, self.method, self._search, self._set, self._memory = library, method, search, set_breadth, memory
        self._build = build
        self.index = None
        self.build_s = 0.0

    def build(self, vectors: np.ndarray) -> None:
        t = time.perf_counter()
        self.index = self._build(vectors)
        self.build_s = time.perf_counter() - t

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._search(self.index, queries, k)

    def set_breadth(self, value: int) -> None:
        self._set(self.index, value)

    def memory_bytes(self) -> int:
        return self._memory(self.index)


def hnswlib_peer(threads: int) -> Peer:
    import hnswlib

    def build(x: np.ndarray):
        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
        index.set_num_threads(threads)
        index.add_items(x, np.arange(len(x)))
        return index

    def memory(index) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            index.save_index(os.path.join(tmp, "h.bin"))
            return os.path.getsize(os.path.join(tmp, "h.bin"))

    return Peer(
        "hnswlib",
        f"HNSW M={M}, efC={EF_CONSTRUCTION}, f32",
        build,
        lambda index, q, k: index.knn_query(q, k=k)[0].astype(np.int64),
        lambda index, ef: index.set_ef(ef),
        memory,
    )


def usearch_peer(threads: int, dtype: str) -> Peer:
    from usearch.index import Index

    def build(x: np.ndarray):
        index = Index(ndim=x.shape[1], metric="ip", dtype=dtype, connectivity=M, expansion_add=EF_CONSTRUCTION)
        index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)
        return index

    def search(index, q: np.ndarray, k: int) -> np.ndarray:
        found = index.search(q, k, threads=threads)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1)
        counts = np.asarray(found.counts).reshape(-1) if hasattr(found, "counts") else np.array([keys.shape[1]])
        return np.where(np.arange(keys.shape[1])[None, :] < counts[:, None], keys, -1)

    def set_breadth(index, ef: int) -> None:
        index.expansion_search = ef

    return Peer(
        "usearch",
        f"HNSW M={M}, efC={EF_CONSTRUCTION}, {dtype}",
        build,
        search,
        set_breadth,
        lambda index: int(index.memory_usage),
    )


def time_it(search: Callable[[np.ndarray], Any], queries: np.ndarray, single: int) -> tuple[float, float, Any]:
    """(median single-query ms, batched ms per query, batched result)."""
    search(queries[:1])
    singles = []
    for q in queries[:single]:
        t = time.perf_counter()
        search(q[None])
        singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    found = search(queries)
    batch = (time.perf_counter() - t) / len(queries)
    return 1000 * statistics.median(singles), 1000 * batch, found


def sweep_lookalike(
    name: str, database: np.ndarray, db_ids: np.ndarray, queries: np.ndarray, truth: np.ndarray, single: int
) -> list[Point]:
    method = make_method(name, len(database), database.shape[1])
    method.build(database, db_ids)
    stats = method.build_stats
    ranges = method.search_param_ranges()
    if "nprobe" in ranges:
        settings = [{"nprobe": v} for v in NPROBE_VALUES if v <= ranges["nprobe"][1]]
    elif "efSearch" in ranges:
        settings = [{"efSearch": v} for v in EF_VALUES]
    else:
        settings = [{}]
    points = []
    for setting in settings:

        def prepare(setting: dict = setting) -> Callable[[np.ndarray], Any]:
            method.set_params(**setting)  # once, as a peer's breadth is set: a tuned method is searched so
            return lambda q: method.search(q, K)

        single_ms, batch_ms, (_, ids) = time_it(prepare(), queries, single)
        built = method.params()
        chosen = (
            f"scans {built['precision']} (batches), {built['few_precision']} (one query)"
            if "few_precision" in built
            else "–"
        )  # exact-lowp's probe
        label = ", ".join(f"{k}={v}" for k, v in setting.items()) or chosen
        points.append(
            Point(
                "lookalike",
                name,
                label,
                recall_at_k(ids, truth, K),
                single_ms,
                batch_ms,
                stats.build_seconds,
                method.memory_bytes() / 2**20,
                prepare,
            )
        )
        print(f"  lookalike {name} {label}: recall {points[-1].recall:.4f}, {single_ms:.3f} ms single", flush=True)
        if points[-1].recall >= 0.999:
            break
    return points


def sweep_peer(
    peer: Peer, database: np.ndarray, db_ids: np.ndarray, queries: np.ndarray, truth: np.ndarray, single: int
) -> list[Point]:
    peer.build(database)
    memory = peer.memory_bytes() / 2**20
    points = []
    for ef in EF_VALUES:

        def prepare(ef: int = ef) -> Callable[[np.ndarray], Any]:
            peer.set_breadth(ef)
            return lambda q: peer.search(q, K)

        single_ms, batch_ms, found = time_it(prepare(), queries, single)
        ids = np.where(found >= 0, db_ids[np.clip(found, 0, None)], -1)
        points.append(
            Point(
                peer.library,
                peer.method,
                f"ef={ef}",
                recall_at_k(ids, truth, K),
                single_ms,
                batch_ms,
                peer.build_s,
                memory,
                prepare,
            )
        )
        print(
            f"  {peer.library} {peer.method} ef={ef}: recall {points[-1].recall:.4f}, {single_ms:.3f} ms single",
            flush=True,
        )
        if points[-1].recall >= 0.999:
            break
    return points


def contenders(points: list[Point], target: float) -> list[Point]:
    """Each curve's first point that reaches `target` (a wider search of the same index costs more, so a later point
    that times faster only drew a quieter moment), unless its sweep time is over CONTENDER_WITHIN × the fastest's."""
    first: dict[tuple[str, str], Point] = {}
    for p in points:  # each curve's points come in order of breadth
        if p.recall >= target:
            first.setdefault((p.library, p.method), p)
    fastest = min((p.single_ms for p in first.values()), default=0.0)
    return [p for p in first.values() if p.single_ms <= CONTENDER_WITHIN * fastest]


def head_to_head(points: list[Point], queries: np.ndarray, single: int) -> list[float]:
    """Median single-query ms of each point, all timed in turn for HEAD_TO_HEAD_ROUNDS rounds (each round starting
    one further along, and every other one in reverse): the sweep times each point once, minutes apart, on a
    machine whose speed drifts, and a few µs decide between close curves."""
    times: list[list[float]] = [[] for _ in points]
    for round_ in range(HEAD_TO_HEAD_ROUNDS):
        order = [(i + round_) % len(points) for i in range(len(points))]
        for i in order if round_ % 2 == 0 else order[::-1]:
            search = points[i].prepare()
            search(queries[:1])
            for q in queries[:single]:
                t = time.perf_counter()
                search(q[None])
                times[i].append(time.perf_counter() - t)
    return [1000 * statistics.median(t) for t in times]


def pareto(points: list[Point]) -> set[int]:
    """Indices of the points no other point beats on both recall and single-query latency."""
    return {
        i for i, p in enumerate(points) if not any(o.recall >= p.recall and o.single_ms < p.single_ms for o in points)
    }


def run_gallery(title: str, gallery: Gallery, threads: int, single: int) -> str:
    partition = gallery.partition()
    database = np.ascontiguousarray(database_vectors(gallery, partition.database_ids), dtype=np.float32)
    queries = np.ascontiguousarray(gallery.embeddings[partition.query_ids], dtype=np.float32)
    truth = exact_neighbours(gallery, partition.database_ids, queries, K)
    print(f"{title}: {len(database):,} × {database.shape[1]}, {len(queries):,} queries", flush=True)
    points: list[Point] = []
    for name in LOOKALIKE_METHODS:
        points += sweep_lookalike(name, database, partition.database_ids, queries, truth, single)
    for peer in (hnswlib_peer(threads), usearch_peer(threads, "f32"), usearch_peer(threads, "f16")):
        points += sweep_peer(peer, database, partition.database_ids, queries, truth, single)
    front = pareto(points)
    rows = [
        [
            p.library,
            p.method,
            p.setting,
            f"{p.recall:.4f}",
            f"{p.single_ms:.3f}",
            f"{p.batch_ms:.4f}",
            f"{p.build_s:.1f}",
            f"{p.memory_mib:.0f}",
            "●" if i in front else "",
        ]
        for i, p in enumerate(points)
    ]
    goal_rows = []
    for target in TARGETS:
        ours, theirs = (
            contenders([p for p in points if p.library == "lookalike"], target),
            contenders([p for p in points if p.library != "lookalike"], target),
        )
        if not (ours and theirs):
            goal_rows.append(
                [
                    f"{target:.2f}",
                    "none reaches it" if not ours else "–",
                    "–",
                    "none reaches it" if not theirs else "–",
                    "–",
                    "–",
                    "–",
                    "✓" if ours else "✗ missed",
                ]
            )
            continue
        timed = dict(zip(map(id, ours + theirs), head_to_head(ours + theirs, queries, single)))
        best_ours, best_theirs = min(ours, key=lambda p: timed[id(p)]), min(theirs, key=lambda p: timed[id(p)])
        ours_ms, theirs_ms = timed[id(best_ours)], timed[id(best_theirs)]
        goal_rows.append(
            [
                f"{target:.2f}",
                f"{best_ours.method} {best_ours.setting}",
                f"{best_ours.single_ms:.3f}",
                f"{best_theirs.library} ({best_theirs.method}) {best_theirs.setting}",
                f"{best_theirs.single_ms:.3f}",
                ", ".join(
                    f"{'' if p.library == 'lookalike' else p.library} {p.method} {p.setting}:"
                    f" {timed[id(p)]:.3f}".strip()
                    for p in ours + theirs
                ),
                f"{ours_ms:.3f} / {theirs_ms:.3f}",
                "✓" if ours_ms <= theirs_ms else "✗ missed",
            ]
        )
    brute = next(p for p in points if p.library == "lookalike" and p.method == "brute")
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for p in points:
        if p is not brute:
            name = p.method if p.library == "lookalike" else f"{p.library} ({p.method})"
            curves.setdefault(name, []).append((p.recall, p.single_ms, p.batch_ms))
    losses = where_methods_lose(curves, (brute.single_ms, brute.batch_ms), exact=("exact-lowp", "flat"))
    return "\n".join(
        [
            f"### {title}",
            "",
            gallery.provenance(),
            "",
            markdown_table(
                [
                    "library",
                    "method",
                    "setting",
                    f"recall@{K}",
                    "single ms",
                    "batched ms/query",
                    "build s",
                    "memory MiB",
                    "Pareto",
                ],
                rows,
            ),
            "",
            (
                "Goal: at each recall target, lookalike's fastest method (single query) is at least as fast as the"
                " faster peer. At each target, every curve (lookalike's methods and the peers alike) puts forward its"
                f" narrowest point that reaches it, if the sweep timed that point within {CONTENDER_WITHIN:g}× the"
                f" fastest such point; the contenders are then timed again in turn ({HEAD_TO_HEAD_ROUNDS} rounds of the"
                " same queries each, each round in another order), and the goal compares the fastest of each side on"
                " those medians."
            ),
            "",
            markdown_table(
                [
                    "recall@10 target",
                    "lookalike's fastest",
                    "sweep ms",
                    "fastest peer",
                    "sweep ms",
                    "every contender, timed in turn (ms)",
                    "head to head ms (lookalike / peer)",
                    "goal",
                ],
                goal_rows,
            ),
            "",
            f"**Where each method loses** on this gallery (against brute, {brute.single_ms:.3f} ms for one query,"
            f" {brute.batch_ms:.4f} ms/query batched; targets {', '.join(f'{t:.2f}' for t in TARGETS)}):",
            "",
            *losses,
        ]
    )


def generated(sizes: dict) -> Gallery:
    from lookalike.gallery.generated import write_generated_gallery

    path = WORK / f"generated-{sizes['n']}"
    try:
        gallery = open_gallery(path)
        if gallery.count == sizes["n"]:
            return gallery
    except Exception:
        pass
    return write_generated_gallery(path, sizes["n"], 512, val=sizes["val"], seed=0, overwrite=True)


def bunched(sizes: dict) -> Gallery:
    path = WORK / f"bunched-{sizes['n']}"
    try:
        gallery = open_gallery(path)
        if gallery.count == sizes["n"]:
            return gallery
    except Exception:
        pass
    return write_bunched_gallery(path, sizes["n"], 512, val=sizes["val"], seed=0)


def extracted(sizes: dict, threads: int) -> Gallery:
    from lookalike.api import extract
    from lookalike.data.synthetic import generate_collection

    data = generate_collection(
        WORK / f"images-{sizes['classes']}x{sizes['images_per_class']}",
        n_classes=sizes["classes"],
        train_per_class=sizes["images_per_class"],
        val_per_class=max(1, sizes["images_per_class"] // 10),
        seed=0,
    )
    return extract(
        data,
        WORK / f"resnet18-{sizes['classes']}x{sizes['images_per_class']}",
        model="resnet18",
        weights="random",
        image_size=sizes["image_size"],
        batch_size=64,
        threads=threads,
    )


def titles(sizes: dict) -> dict[str, str]:
    """Each gallery's `###` title: it opens the gallery's part of the section, and identifies it there."""
    return {
        "generated": "GENERATED vectors",
        "bunched": f"{BUNCHED_LABEL} vectors",
        "extracted": f"Embeddings from resnet18 (RANDOM weights) of GENERATED {sizes['image_size']} px images",
    }


ENVIRONMENT_LINES = ("- Measured ", "- Threads: ", "- Versions: ", "- 1-minute load average ")


def published_part(title: str) -> str | None:
    """The gallery's part as docs/benchmarks.md publishes it now, with the machine and load of the run that measured
    it (parts published before each part carried its own take the section's closing lines), or None.

    So `--only bunched` measures one gallery without dropping the others' figures from the section.
    """
    text = DOC.read_text() if DOC.is_file() else ""
    section = text.find(f"## {SECTION}\n")
    start = text.find(f"### {title}\n", section)
    if section < 0 or start < 0:
        return None
    section_end = text.find("\n## ", section + 1)
    section_end = len(text) if section_end < 0 else section_end
    next_part = text.find("\n### ", start + 1)
    end = section_end if next_part < 0 or next_part > section_end else next_part
    part = text[start:end].rstrip("\n").splitlines()
    if not any(line.startswith(ENVIRONMENT_LINES[0]) for line in part):
        closing = [line for line in text[section:section_end].splitlines() if line.startswith(ENVIRONMENT_LINES)]
        part = [line for line in part if not line.startswith(ENVIRONMENT_LINES)] + ["", *closing]
    return "\n".join(part).rstrip("\n")


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument(
        "--only", default=None, help="comma-separated galleries to measure: generated, bunched, extracted (default all)"
    )
    args = p.parse_args()
    sizes = QUICK if args.quick else DEFAULT
    threads = runtime.set_threads(args.threads)
    import hnswlib  # noqa: F401 (both peers are lookalike dependencies, as its hnswlib and usearch methods)
    import usearch

    named = titles(sizes)
    wanted = args.only.split(",") if args.only else list(named)
    if unknown := set(wanted) - set(named):
        raise SystemExit(f"unknown gallery {sorted(unknown)}; choose from {', '.join(named)}")
    WORK.mkdir(parents=True, exist_ok=True)
    makers = {"generated": generated, "bunched": bunched, "extracted": lambda sizes: extracted(sizes, threads)}
    parts = {}
    for name in wanted:  # each gallery with the machine and load of its own run
        with load_watch() as load:
            gallery = makers[name](sizes)
            runtime.set_threads(threads)
            parts[name] = run_gallery(named[name], gallery, threads, sizes["single"])
        parts[name] += "\n\n" + environment_markdown(load, args.quick)
    import importlib.metadata as md

    kept = {n: published_part(t) for n, t in named.items() if n not in parts and not args.quick}
    doc = "\n\n".join(
        [
            __doc__.split("\n\n", 1)[1].strip(),
            (
                f"Peers: hnswlib {md.version('hnswlib')}, usearch {usearch.__version__}; {threads} threads everywhere. "
                "*Pareto* marks the points no other point beats on both recall and single-query latency. "
                f"Queries timed one per call: the first {sizes['single']} held-out queries. Each gallery was measured"
                " in its own run (`--only` measures some and keeps the others' published figures); the machine and"
                " load of each run are under its table."
            ),
            generator_line(GENERATOR, 0, None),
            bunched_line(GENERATOR, 0),
            *[parts.get(n) or kept.get(n) or f"### {named[n]}\n\nnot measured yet." for n in named],
        ]
    )
    print(doc)
    if should_write(args):
        print(f"\nwrote section '{SECTION}' of {write_section(SECTION, doc)}")


if __name__ == "__main__":
    main()
