"""Accuracy vs speed on generated galleries of the study's sizes, and the tuner's pick (issues 3, 22).

Galleries: 100k × 512, 100k × 1280 and 1M × 512 GENERATED unit vectors (no model, no image):
a mixture of low-rank Gaussians on the sphere (`lookalike.gallery.generated.write_generated_gallery`
with `common.GENERATOR`, the same generator bench_scale uses), so there is cluster structure as
in real embeddings, not uniform noise; and 100k × 512 GENERATED-bunched vectors, the same mixture
moved onto one common direction (`make_bunched_embeddings`) so that nearly every pair scores above
0.9, as a random-weight CNN's embeddings of one kind of photograph do: clustered data alone
flatters the methods whose error is absolute (8-bit codes). The held-out queries are drawn from the
same mixture and are not in the database. Each section prints the generator parameters and the IVF
training size, and says where each family loses on its data: where its recall caps below a target,
or where it reaches the target only slower than brute force.

For each gallery: `run_tradeoff` (every family swept, trained once per build), then `tune` for
recall@10 ≥ 0.95 on validation queries, reported on test queries. At 1M the exact baselines
are timed on a sample of queries, IVF k-means trains on `common.TRAIN_POINTS_PER_LIST` points
per list (as in bench_scale), and HNSW is swept and offered to the tuner only if its build time,
measured at 100k, 250k and 500k and extrapolated to 1M (fit t = c·N·log N), fits
HNSW_BUILD_BUDGET_S; every such choice is printed with the figures.

Goals checked at 1M: recall@10 ≥ 0.95 at a single-query latency ≥ 20× below flat's; IVF-Flat
memory ≤ 1.2× the raw vectors; a PQ or SQ setting ≥ 4× smaller than raw with recall@10 ≥ 0.9.

Each gallery's figures are kept in runs/bench_tradeoff/<name>.md, so galleries can be run one
at a time (`--only 1M-512`); the docs section is assembled from every fragment present, and a gallery
with no fragment in runs/ keeps the figures docs/benchmarks.md already publishes for it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BUNCHED_LABEL,
    DOC,
    GENERATOR,
    ROOT,
    TARGETS,
    TRAIN_POINTS_PER_LIST,
    bunched_line,
    environment_markdown,
    generator_line,
    goal_mark,
    load_watch,
    markdown_table,
    parser,
    should_write,
    wait_for_quiet,
    where_methods_lose,
    write_bunched_gallery,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.data.vectors import COMMON_WEIGHT, make_clustered_embeddings  # noqa: E402
from lookalike.errors import GalleryError  # noqa: E402
from lookalike.gallery import Gallery, open_gallery  # noqa: E402
from lookalike.gallery.generated import write_generated_gallery  # noqa: E402
from lookalike.search import make_method  # noqa: E402
from lookalike.study.tradeoff import FAMILIES, Point, TradeoffResult, run_tradeoff, write_tradeoff  # noqa: E402
from lookalike.study.tune import HNSW_M, TuneResult, parse_bytes, tune  # noqa: E402

SECTION = "Accuracy vs speed (issue 3)"
WORK = ROOT / "runs" / "bench_tradeoff"
FIGURES = ROOT / "docs" / "figures"
K = 10
SEED = 0
HNSW_BUILD_BUDGET_S = 1800.0  # an index a user waits more than 30 min for on 2 cores is left out of the study
GOAL_SPEEDUP = 20.0
GOAL_IVF_MEMORY = 1.2
GOAL_COMPRESSION = 4.0


@dataclass(frozen=True)
class Config:
    name: str
    n: int  # database vectors
    d: int
    queries: int  # held-out queries (the val split)
    families: tuple[str, ...] = FAMILIES
    nlist_factors: tuple[int, ...] = (1, 4, 16)
    exact_queries: int = 200
    single_queries: int = 200
    stop_recall: float = 1.0
    train_points_per_list: int | None = None
    tune_budget: str | None = None
    tune_families: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    goals: bool = False
    hnsw_sizes: tuple[
        int, ...
    ] = ()  # measure HNSW builds at these sizes; HNSW joins this config only if the extrapolation fits the budget
    bunched: bool = False  # GENERATED-bunched rows (make_bunched_embeddings) instead of the clustered mixture


CONFIGS = {
    "100k-512": Config("100k-512", 100_000, 512, 1000),
    "100k-1280": Config("100k-1280", 100_000, 1280, 1000),
    "100k-512-bunched": Config(
        "100k-512-bunched",
        100_000,
        512,
        1000,
        families=(*FAMILIES, "hnsw-sq8", "usearch-i8"),
        bunched=True,
        notes=("hnsw-sq8 and usearch-i8 swept beside the study's families: the 8-bit graphs whose recall caps here",),
    ),
    "1M-512": Config(
        "1M-512",
        1_000_000,
        512,
        500,
        families=("ivf", "ivfpq-mmap"),
        nlist_factors=(1, 4),
        exact_queries=100,
        single_queries=100,
        stop_recall=0.995,
        train_points_per_list=TRAIN_POINTS_PER_LIST,
        tune_budget="1GB",
        hnsw_sizes=(100_000, 250_000, 500_000),
        notes=(
            (
                "exact baselines timed on a sample of 100 queries (their recall is 1 by definition); approximate points"
                " on all 500"
            ),
            (
                f"IVF k-means trained on {TRAIN_POINTS_PER_LIST} points per list (FAISS's floor is 39) so 4000 lists"
                " train in minutes on 2 cores"
            ),
            (
                "nlist = 16√N = 16000 not built (not measured here: 16000 lists × 64 points is the whole database in"
                " k-means)"
            ),
            (
                "SQ8 and SQfp16 (flat) not swept at 1M: they scan 1M codes per query; both are measured at 100k above,"
                " and IVF-SQ8 is a tuner candidate here"
            ),
            "curves end at recall 0.995: beyond it, doubling nprobe only costs time",
            "tuned under a 1 GiB budget (the raw vectors take 1.9 GiB), so the tuner must pick a compressed index",
        ),
        goals=True,
    ),
}
QUICK = {
    "quick": Config(
        "quick",
        5000,
        64,
        200,
        families=("ivf", "ivfpq-mmap"),
        nlist_factors=(1, 4),
        exact_queries=50,
        single_queries=20,
        tune_budget="1MB",
        goals=True,
        train_points_per_list=TRAIN_POINTS_PER_LIST,
        hnsw_sizes=(1000, 2000, 4000),
    ),
    "quick-bunched": Config(
        "quick-bunched",
        5000,
        64,
        200,
        families=("ivf", "hnsw", "sq8", "hnsw-sq8", "usearch-i8"),
        nlist_factors=(1,),
        exact_queries=50,
        single_queries=20,
        bunched=True,
    ),
}


def generated_gallery(config: Config) -> Gallery:
    """The config's GENERATED gallery under runs/, made once and reused while its parameters match."""
    path = WORK / f"gallery-{config.n}x{config.d}-c{GENERATOR.n_clusters}{'-bunched' if config.bunched else ''}"
    expected = {**asdict(GENERATOR), "seed": SEED, **({"common_weight": COMMON_WEIGHT} if config.bunched else {})}
    try:
        gallery = open_gallery(path)
        made_by = gallery.manifest.data.generator or {}
        same = all(made_by.get(key) == value for key, value in expected.items())
        if gallery.count == config.n + config.queries and gallery.dim == config.d and same:
            return gallery
    except GalleryError:
        pass
    t = time.perf_counter()
    if config.bunched:
        gallery = write_bunched_gallery(path, config.n + config.queries, config.d, val=config.queries, seed=SEED)
    else:
        gallery = write_generated_gallery(
            path,
            config.n + config.queries,
            config.d,
            val=config.queries,
            seed=SEED,
            overwrite=True,
            **asdict(GENERATOR),
        )
    print(f"generated {path} in {time.perf_counter() - t:.0f} s", flush=True)
    return gallery


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def point_row(p: Point, result: TradeoffResult, flat_ms: float) -> list[str]:
    return [
        p.setting() + (" (exact)" if p.exact else ""),
        f"{p.recall:.4f}",
        f"{p.precision:.4f}",
        f"{p.single_ms:.3f}",
        "–" if p.cold_single_ms is None else f"{p.cold_single_ms:.3f}",
        f"{flat_ms / p.single_ms:.1f}×",
        f"{p.batch_ms:.4f}",
        mib(p.memory_bytes),
        f"{p.memory_bytes / result.raw_bytes:.2f}",
        f"{p.build_seconds:.1f}",
    ]


HEADERS = [
    "setting",
    "recall@10",
    "label P@10",
    "single ms/query",
    "cold-cache single ms",
    "vs flat",
    "batched ms/query",
    "memory MiB",
    "× raw",
    "build s",
]


def curve_table(result: TradeoffResult) -> str:
    """The exact references, the Pareto frontier, and each family's cheapest setting per recall target."""
    flat_ms = next(p.single_ms for p in result.points if p.curve == "flat")
    keep = [p for p in result.points if p.exact or p.pareto]
    for family in dict.fromkeys(p.family for p in result.points if not p.exact):
        for target in (0.9, 0.95, 0.99):
            reached = [p for p in result.points if p.family == family and p.recall >= target]
            if reached:
                keep.append(min(reached, key=lambda p: p.single_ms))
    seen, rows = set(), []
    for p in sorted(keep, key=lambda p: (not p.exact, p.single_ms)):
        if id(p) not in seen:
            seen.add(id(p))
            rows.append(point_row(p, result, flat_ms) + ["●" if p.pareto else ""])
    return markdown_table(HEADERS + ["Pareto"], rows)


def goals(result: TradeoffResult, load: dict | None) -> list[list[str]]:
    flat = next(p for p in result.points if p.curve == "flat")
    approx = [p for p in result.points if not p.exact]
    fast = [p for p in approx if p.recall >= 0.95]
    best = min(fast, key=lambda p: p.single_ms) if fast else None
    ivf = [p for p in approx if p.family == "ivf"]
    ivf_ratio = max(p.memory_bytes / result.raw_bytes for p in ivf) if ivf else float("nan")
    small = [p for p in approx if p.memory_bytes * GOAL_COMPRESSION <= result.raw_bytes and p.recall >= 0.9]
    lean = min(small, key=lambda p: p.single_ms) if small else None
    rows = []
    if best:
        speedup = flat.single_ms / best.single_ms
        rows.append(
            [
                f"recall@10 ≥ 0.95 at ≥ {GOAL_SPEEDUP:.0f}× below flat single-query",
                (
                    f"{best.setting()}: recall {best.recall:.4f}, "
                    f"{best.single_ms:.3f} ms vs flat {flat.single_ms:.3f} ms = **{speedup:.1f}×**"
                ),
                goal_mark(speedup >= GOAL_SPEEDUP, load),
            ]
        )
    else:
        rows.append([f"recall@10 ≥ 0.95 at ≥ {GOAL_SPEEDUP:.0f}× below flat", "no setting reached 0.95", "✗ missed"])
    rows.append(
        [
            f"IVF-Flat memory ≤ {GOAL_IVF_MEMORY}× raw",
            f"**{ivf_ratio:.3f}×** (largest nlist; serialised index + id map vs N·d·4)",
            goal_mark(ivf_ratio <= GOAL_IVF_MEMORY, load),
        ]
    )
    if lean:
        rows.append(
            [
                f"PQ/SQ ≥ {GOAL_COMPRESSION:.0f}× smaller with recall@10 ≥ 0.9",
                (
                    f"{lean.setting()}: recall {lean.recall:.4f}, {mib(lean.memory_bytes)} MiB = "
                    f"**{result.raw_bytes / lean.memory_bytes:.1f}× smaller**, {lean.single_ms:.3f} ms"
                ),
                goal_mark(True, load),
            ]
        )
    else:
        rows.append([f"PQ/SQ ≥ {GOAL_COMPRESSION:.0f}× smaller with recall@10 ≥ 0.9", "no such setting", "✗ missed"])
    return rows


def tune_table(result: TuneResult) -> str:
    rows = [
        [
            m.method,
            ", ".join(f"{k}={v}" for k, v in m.setting.items()) or "–",
            f"{m.val_recall:.4f}",
            f"{m.val_recall_bound:.4f}",
            f"{m.single_ms:.3f}",
            "–" if m.cold_single_ms is None else f"{m.cold_single_ms:.3f}",
            f"{m.batch_ms:.4f}",
            mib(m.memory_bytes),
            f"{m.build_seconds:.1f}",
            "**chosen**" if m.status == "chosen" else m.status,
        ]
        for m in result.candidates
    ]
    return (
        markdown_table(
            [
                "candidate",
                "setting",
                "val recall",
                "95% bound",
                "single ms",
                "cold-cache single ms",
                "batched ms",
                "memory MiB",
                "build s",
                "status",
            ],
            rows,
        )
        + "\n\nMemory of a memory-mapped re-ranking index (ivfpq-mmap) = its codes + the pages of the mapped gallery"
        " its queries read (the page cache its warm latency relies on); cold-cache = the gallery file dropped from"
        " the page cache before each single query."
    )


def flat_thread_check(gallery: Gallery, threads: int, n_queries: int = 50) -> dict[int, float]:
    """flat's single-query median (ms) at 1 and 2 threads, side by side, then back to `threads`.

    On a shared machine a multi-threaded single query waits at every OpenMP barrier for a
    descheduled thread, so the thread count changes flat's latency far more than IVF's (whose
    single queries run on one thread anyway); this shows by how much, in this run.
    """
    from lookalike.search import database_vectors, make_method
    from lookalike.study.timing import measure_latency

    partition = gallery.partition(max_queries=n_queries)
    flat = make_method("flat", len(partition.database_ids), gallery.dim)
    flat.build(database_vectors(gallery, partition.database_ids))
    queries = np.asarray(gallery.embeddings[partition.query_ids])
    out = {}
    for t in (1, 2):
        runtime.set_threads(t)
        out[t] = measure_latency(flat, queries, K, single_queries=n_queries, batch_repeats=1)[0].single_ms
    runtime.set_threads(threads)
    return out


@dataclass(frozen=True)
class HnswBuilds:
    """HNSW build times measured at a few sizes, and the fit t = c·N·log2 N extrapolated to the size that matters."""

    d: int
    measured: list[tuple[int, float]]  # (N, build seconds)
    c: float  # seconds per N·log2 N
    target_n: int

    def predict(self, n: int) -> float:
        return self.c * n * np.log2(n)

    @property
    def included(self) -> bool:
        return self.predict(self.target_n) <= HNSW_BUILD_BUDGET_S

    def max_n(self) -> int:
        """The largest N whose predicted build fits the budget (what the tuner is allowed to build)."""
        lo, hi = 1, 10**9
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.predict(mid) <= HNSW_BUILD_BUDGET_S else (lo, mid - 1)
        return lo

    def markdown(self) -> str:
        rows = [[f"{n:,}", f"{s:.1f}", f"{self.predict(n):.1f}"] for n, s in self.measured]
        rows.append([f"**{self.target_n:,}** (extrapolated)", "–", f"**{self.predict(self.target_n):.0f}**"])
        verdict = (
            f"fits the {HNSW_BUILD_BUDGET_S / 60:.0f}-min budget, so HNSW is swept and offered to the tuner at"
            f" {self.target_n:,}"
            if self.included
            else (
                f"exceeds the {HNSW_BUILD_BUDGET_S / 60:.0f}-min budget, so HNSW is left out of the {self.target_n:,}"
                f" sweep and the tuner builds it only up to N = {self.max_n():,}"
            )
        )
        return "\n".join(
            [
                (
                    f"**HNSW build time** (`HNSW{HNSW_M},Flat`, d = {self.d}, same generator, measured here, then t ="
                    f" c·N·log₂N fitted by least squares, c = {self.c:.3g} s): the predicted"
                    f" {self.predict(self.target_n) / 60:.1f} min at {self.target_n:,} {verdict}."
                ),
                "",
                markdown_table(["N", "build s (measured)", "build s (fit)"], rows),
            ]
        )


def measure_hnsw_builds(config: Config) -> HnswBuilds:
    measured = []
    for n in config.hnsw_sizes:
        x, _ = make_clustered_embeddings(n, config.d, seed=SEED, **asdict(GENERATOR))
        method = make_method("hnsw", n, config.d, m=HNSW_M)
        stats = method.build(x)
        measured.append((n, stats.build_seconds))
        print(f"  HNSW{HNSW_M} build at {n:,}: {stats.build_seconds:.1f} s", flush=True)
        del method, x
    f = np.array([n * np.log2(n) for n, _ in measured])
    t = np.array([s for _, s in measured])
    return HnswBuilds(config.d, measured, float(f @ t / (f @ f)), config.n)


def where_families_lose(result: TradeoffResult) -> list[str]:
    """Each curve's losses on this gallery (`common.where_methods_lose`), against brute force timed in the same run."""
    brute = next(p for p in result.points if p.curve == "brute")
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for p in result.points:
        if p is not brute:
            curves.setdefault(p.curve, []).append((p.recall, p.single_ms, p.batch_ms))
    exact = [p.curve for p in result.points if p.exact]
    return where_methods_lose(curves, (brute.single_ms, brute.batch_ms), exact=exact)


def heading(config: Config) -> str:
    """The `###` line that opens a gallery's fragment of the docs section (and identifies it there)."""
    data = (
        f"{BUNCHED_LABEL} embeddings: the {GENERATOR.n_clusters}-cluster mixture moved onto one common direction,"
        " nearly all pairs above 0.9"
        if config.bunched
        else f"GENERATED embeddings: {GENERATOR.n_clusters}-cluster low-rank Gaussian mixture"
    )
    return f"### {config.n:,} × {config.d} ({data}; no model, no images)"


def published_fragment(config: Config) -> str | None:
    """The gallery's fragment as docs/benchmarks.md publishes it now, or None.

    A run of some galleries (`--only`) on a machine without the others' runs/ fragments keeps the others' published
    figures, each still with the machine, load and date of its own run, instead of dropping them from the section.
    """
    text = DOC.read_text() if DOC.is_file() else ""
    start = text.find(heading(config) + "\n")
    if start < 0:
        return None
    ends = [i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i >= 0]
    return text[start : min(ends) + 1 if ends else len(text)].rstrip("\n") + "\n"


def run_config(config: Config, write: bool, threads: int, quick: bool = False) -> str:
    gallery = generated_gallery(config)
    hnsw = measure_hnsw_builds(config) if config.hnsw_sizes else None
    if hnsw is not None and hnsw.included and "hnsw" not in config.families:
        config = replace(config, families=(*config.families, "hnsw"))
    if not quick:  # a smoke run's figures mean nothing: it need not wait (up to 5 min) for a quiet machine
        wait_for_quiet()  # generating the gallery and timing HNSW builds loaded the cores: let that pass first
    with load_watch() as load:
        by_threads = flat_thread_check(gallery, threads)
        t = time.perf_counter()
        result = run_tradeoff(
            gallery,
            k=K,
            families=config.families,
            max_queries=config.queries,
            single_queries=config.single_queries,
            exact_queries=config.exact_queries,
            nlist_factors=config.nlist_factors,
            stop_recall=config.stop_recall,
            train_points_per_list=config.train_points_per_list,
        )
        paths = write_tradeoff(result, WORK / f"tradeoff-{config.name}")
        sweep_s = time.perf_counter() - t
        t = time.perf_counter()
        tuned = tune(
            gallery,
            target_recall=0.95,
            k=K,
            max_memory_bytes=parse_bytes(config.tune_budget) if config.tune_budget else None,
            max_queries=config.queries,
            single_queries=config.single_queries,
            families=config.tune_families,
            save_as="tuned",
            **({"hnsw_max_n": hnsw.max_n()} if hnsw is not None else {}),
            train_points_per_list=config.train_points_per_list,
        )
        tune_s = time.perf_counter() - t
    figure = FIGURES / f"tradeoff-{config.name}.png"
    if write:
        FIGURES.mkdir(parents=True, exist_ok=True)
        figure.write_bytes(paths["png"].read_bytes())
    lines = [
        heading(config),
        "",
        f"**{result.provenance}**",
        "",
        generator_line(GENERATOR, SEED, config.train_points_per_list),
        *([bunched_line(GENERATOR, SEED)] if config.bunched else []),
        (
            f"Sweep: {len(result.points)} points in **{sweep_s:.0f} s** (builds and ground truth included); tuning:"
            f" **{tune_s:.0f} s**. Queries: {result.queries}; exact methods timed on {result.exact_queries}. Raw"
            f" vectors: {mib(result.raw_bytes)} MiB. Peak RSS {mib(result.peak_rss_bytes)} MiB."
        ),
        (
            f"- {threads} thread(s) for every figure below. Side by side in this run, flat's single-query median was"
            f" {by_threads[1]:.2f} ms at 1 thread and {by_threads[2]:.2f} ms at 2 threads: on this shared machine a"
            " 2-thread query waits at OpenMP barriers for a descheduled thread."
        ),
        *[f"- {note}" for note in config.notes],
        *[f"- skipped: {s}" for s in result.skipped],
        "",
        curve_table(result),
        "",
        *[f"- {line}" for line in result.cheapest_lines()],
        "",
        f"**Where each family loses** on this gallery (recall targets {', '.join(f'{t:.2f}' for t in TARGETS)};"
        " against brute force, timed in the same run):",
        "",
        *where_families_lose(result),
        "",
        (
            f"![recall@10 vs latency, {config.name}](figures/{figure.name}) — full table:"
            f" `{paths['md'].relative_to(ROOT)}` (CSV and JSON beside it)."
        ),
        "",
        "**Tuner's pick** (`lookalike tune --target-recall 0.95 --k 10"
        + (f" --max-memory {config.tune_budget}" if config.tune_budget else "")
        + "`):",
        "",
        tune_table(tuned),
        "",
        tuned.explanation(),
    ]
    lines += [f"- {note}" for note in tuned.notes]
    if hnsw is not None:
        lines += ["", hnsw.markdown()]
    if config.goals:
        lines += ["", "**Goals at this size:**", "", markdown_table(["goal", "measured", ""], goals(result, load))]
    lines += ["", environment_markdown(load)]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help=f"comma-separated galleries to run: {', '.join(CONFIGS)}")
    p.add_argument(
        "--assemble",
        action="store_true",
        help="run nothing; rebuild the docs section from the fragments in runs/bench_tradeoff/",
    )
    args = p.parse_args()
    threads = runtime.set_threads(args.threads)
    configs = QUICK if args.quick else CONFIGS
    names = [] if args.assemble else args.only.split(",") if args.only else list(configs)
    WORK.mkdir(parents=True, exist_ok=True)
    for name in names:
        text = run_config(configs[name], should_write(args), threads, args.quick)
        if should_write(args):
            (WORK / f"{name}.md").write_text(text)
    if should_write(args):
        fragments = [
            text
            for name, config in CONFIGS.items()
            if (
                text := (WORK / f"{name}.md").read_text()
                if (WORK / f"{name}.md").is_file()
                else published_fragment(config)
            )
        ]
        intro = (
            "`benchmarks/bench_tradeoff.py`: recall@10 against exact search vs per-query latency for every index"
            " family, on **GENERATED** unit vectors (not embeddings of real images), and the tuner's pick. Rows: the"
            " exact references, the Pareto frontier (●), and each family's cheapest setting reaching recall 0.9 / 0.95"
            " / 0.99. \"vs flat\" is flat's single-query latency divided by the row's, measured in the same run."
            " ivfpq-mmap's memory counts its codes plus the pages of the memory-mapped gallery its queries read, and"
            " its cold-cache column times single queries with that file dropped from the page cache first. Each gallery"
            " below was measured in its own run; its machine and load are listed under it. The issue's goals are"
            " checked under the 1M gallery. Recall at a given nprobe or efSearch depends on how clustered the vectors"
            " are (compare 512-d with 1280-d below), so it does not carry over to real embeddings as is; the shape of"
            " the curves, the memory figures and the latency ratios are what carry over, and `lookalike tradeoff`"
            " measures the real thing on a real gallery."
        )
        write_section(SECTION, intro + "\n\n" + "\n".join(fragments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
