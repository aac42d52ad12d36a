"""Exact search (brute, flat, exact-lowp) against the machine's rooflines, and ivf latency and recall (issues 2, 9).

Exact search of Q queries against N gallery vectors of dimension d is one matrix product,
2·Q·N·d floating-point operations, plus a top-k selection. Its fp32 floor on this machine is that
count divided by the machine's own measured sgemm rate (torch.mm and numpy matmul on large
square fp32 matrices, at the same thread count): the fp32 roofline. The bf16 roofline divides by
the measured bf16 matrix-product rate instead (torch.mm on bf16; AMX where the CPU has it).
One query at a time reads the whole gallery once, so its floor is the gallery's bytes over the
memory bandwidth, measured in the same run (torch.sum over a 1 GiB array).

On a shared machine the load changes by the second, so nothing is timed in one long stretch:
the queries go in chunks, and for each chunk the sgemm rates and every method are measured
back to back (batched: the chunk in one call; single: a few of its queries one per call).
Each chunk's ratio to the roofline uses the sgemm rate measured beside it; figures are
medians over chunks (batched totals are sums over chunks).

Data: GENERATED unit vectors (no model, no image). Exact search runs on the generated Gaussian
mixture of `write_generated_gallery` (issue 9's data; its goals are judged there), on uniform
random unit vectors (every score near every other), and on GENERATED-bunched vectors
(`make_bunched_embeddings`: the mixture moved onto one common direction, so nearly every pair
scores above 0.9, as a random-weight CNN's embeddings of one kind of photograph do: the case where
exact-lowp's bound prunes almost nothing, issue 22). ivf also runs on all three: the mixture
(`lookalike.gallery.generated.random_cluster_model` with `common.GENERATOR`, the generator of the
other sections; the section prints its parameters and the IVF training size), because uniform
vectors have no cluster structure and so give ivf its worst case. Queries are drawn apart from the gallery,
never gallery members searched for themselves.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BUNCHED_LABEL,
    GENERATOR,
    bunched_line,
    environment_markdown,
    generator_line,
    load_watch,
    markdown_table,
    median_seconds,
    parser,
    should_write,
    where_methods_lose,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.data.vectors import bunched_cluster_model, random_cluster_model  # noqa: E402
from lookalike.search import DEFAULT_NPROBE, SearchMethod, default_nlist, make_method  # noqa: E402
from lookalike.search.brute import SCORE_BLOCK_BYTES  # noqa: E402
from lookalike.search.exact_lowp import FEW_QUERIES  # noqa: E402
from lookalike.study.metrics import recall_at_k  # noqa: E402
from lookalike.study.timing import measure_latency  # noqa: E402

SECTION = "Exact and IVF search (issues 2, 9)"
GOAL_ROOFLINE = 1.5  # issue 2: brute and flat within 1.5× the fp32 roofline
GOAL_LOWP = 0.5  # issue 9: exact-lowp batched at least 2× faster than the fp32 roofline
GOAL_SINGLE_MS = 3.5  # issue 9: exact-lowp one query ≤ 3.5 ms at 100k × 512
K = 10
# Q = tiny-ImageNet's val size; chunks of 1,000 queries, 20 of them also timed one per call (200 in all).
DEFAULT = {"n": 100_000, "queries": 10_000, "d": 512, "sgemm_n": 3072, "chunk": 1_000, "single_per_chunk": 20}
QUICK = {"n": 10_000, "queries": 500, "d": 512, "sgemm_n": 512, "chunk": 100, "single_per_chunk": 4}
CHECK_CHUNKS = 3  # chunks measured again at one thread
FLAT_BLAS_ALWAYS = "flat (faiss, BLAS threshold 1)"
EXACT = [
    ("exact-lowp", "exact-lowp", None),
    ("brute (torch)", "brute", "torch"),
    ("brute (numpy)", "brute", "numpy"),
    (FLAT_BLAS_ALWAYS, "flat", None),
    ("flat (faiss)", "flat", None),
]
# FAISS settings in force while one row is timed (the rest run with runtime.FAISS_SETTINGS, which keeps
# FAISS's default threshold of 20: fewer queries are scanned without BLAS). The BLAS-always row measures that choice.
ROW_FAISS_SETTINGS = {FLAT_BLAS_ALWAYS: {"distance_compute_blas_threshold": 1}}


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sgemm_flops(n: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an n×n matrix product: fp32 in torch and numpy, and bf16 in torch (the median of `repeats` calls)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ha, hb = ta.bfloat16(), tb.bfloat16()
    flop = 2.0 * n**3
    return {
        "torch": flop / median_seconds(lambda: torch.mm(ta, tb), repeats),
        "numpy": flop / median_seconds(lambda: a @ b, repeats),
        "bf16": flop / median_seconds(lambda: torch.mm(ha, hb), repeats),
    }


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes/s of reading memory: torch.sum over a 1 GiB float32 array (all threads), median of `repeats`."""
    x = torch.ones(2**28, dtype=torch.float32)
    return x.numel() * 4 / median_seconds(lambda: torch.sum(x), repeats)


@dataclass(frozen=True)
class Timed:
    """One method's figures over all chunks."""

    label: str
    batch_s: float  # all queries, batched per chunk, summed over chunks
    ratio: float  # chunk time / chunk fp32 roofline, median over chunks (exact methods only)
    ratio_bf16: float  # chunk time / chunk bf16 roofline, median over chunks (exact methods only)
    single_ms: float  # one query per call: median over chunks of the chunk's median
    single_p99_ms: float  # median over chunks of the chunk's p99
    ids: np.ndarray  # (Q, K) results of the batched calls

    def row(self, queries: int) -> list[object]:
        goal = GOAL_LOWP if self.label == "exact-lowp" else GOAL_ROOFLINE
        ok = f"✓ (goal ≤ {goal:g}×)" if self.ratio <= goal else f"✗ missed (goal ≤ {goal:g}×)"
        return [
            self.label,
            f"{self.batch_s:.2f}",
            f"{queries / self.batch_s:,.0f}",
            f"**{self.ratio:.2f}×** {ok}",
            f"{self.ratio_bf16:.2f}×",
            f"{self.single_ms:.2f}",
            f"{self.single_p99_ms:.2f}",
        ]


def build(name: str, backend: str | None, vectors: np.ndarray) -> SearchMethod:
    method = make_method(name, len(vectors), vectors.shape[1], **({"backend": backend} if backend else {}))
    method.build(vectors)
    return method


def interleaved(
    methods: dict[str, SearchMethod],
    queries: np.ndarray,
    n: int,
    sizes: dict,
    sgemm_rates: dict[str, list[float]] | None,
) -> list[Timed]:
    """Chunk by chunk: (optionally) the sgemm rates, then each method batched and on single queries."""
    chunk, singles = sizes["chunk"], sizes["single_per_chunk"]
    batch = {label: [] for label in methods}
    ratio = {label: [] for label in methods}
    ratio_bf16 = {label: [] for label in methods}
    single = {label: [] for label in methods}
    p99 = {label: [] for label in methods}
    ids = {label: [] for label in methods}
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        roofline_s = roofline_bf16_s = None
        if sgemm_rates is not None:
            for lib, rate in sgemm_flops(sizes["sgemm_n"], repeats=1).items():
                sgemm_rates[lib].append(rate)
            flop = 2.0 * len(q) * n * queries.shape[1]
            roofline_s = flop / max(sgemm_rates["torch"][-1], sgemm_rates["numpy"][-1])
            roofline_bf16_s = flop / sgemm_rates["bf16"][-1]
        for label, method in methods.items():
            runtime.configure_faiss({**runtime.FAISS_SETTINGS, **ROW_FAISS_SETTINGS.get(label, {})})
            latency, found = measure_latency(method, q, K, single_queries=singles, batch_repeats=1)
            runtime.configure_faiss()
            batch[label].append(latency.batch_ms * len(q) / 1000)
            single[label].append(latency.single_ms)
            p99[label].append(latency.single_p99_ms)
            ids[label].append(found)
            if roofline_s:
                ratio[label].append(batch[label][-1] / roofline_s)
                ratio_bf16[label].append(batch[label][-1] / roofline_bf16_s)
        line = ", ".join(
            f"{label} {batch[label][-1]:.2f} s" + (f" ({ratio[label][-1]:.2f}×)" if roofline_s else "")
            for label in methods
        )
        print(
            f"  queries {start:,}–{start + len(q):,}: "
            + line
            + (f"; roofline {roofline_s:.2f} s" if roofline_s else ""),
            flush=True,
        )
    return [
        Timed(
            label,
            sum(batch[label]),
            statistics.median(ratio[label]) if ratio[label] else float("nan"),
            statistics.median(ratio_bf16[label]) if ratio_bf16[label] else float("nan"),
            statistics.median(single[label]),
            statistics.median(p99[label]),
            np.concatenate(ids[label]),
        )
        for label in methods
    ]


@dataclass(frozen=True)
class ExactRun:
    data: str
    threads: int
    queries: int
    sgemm: dict[str, float]  # FLOP/s, median over chunks
    bandwidth: float  # bytes/s read, measured in this run
    gallery_bytes: int  # N·d·4
    timed: list[Timed]  # flat last
    lowp: str  # the precisions exact-lowp's build-time probe chose

    def rows(self) -> list[list[object]]:
        truth = self.timed[-1].ids

        def same(f) -> str:
            return "identical ids" if np.array_equal(f.ids, truth) else f"{recall_at_k(f.ids, truth, K):.4f}"

        return [
            [self.data, f.label, self.threads, f"{self.queries:,}", *f.row(self.queries)[1:], same(f)]
            for f in self.timed
        ]

    def single_limits_ms(self) -> dict[str, float]:
        """One query's floor: the gallery's bytes (fp32, and 16-bit and 8-bit scan copies) over the measured
        bandwidth."""
        return {
            "fp32": 1000 * self.gallery_bytes / self.bandwidth,
            "16-bit": 500 * self.gallery_bytes / self.bandwidth,
            "8-bit": 250 * self.gallery_bytes / self.bandwidth,
        }


def exact_search(
    data: str, methods: dict[str, SearchMethod], n: int, queries: np.ndarray, sizes: dict, threads: int
) -> ExactRun:
    runtime.set_threads(threads)
    rates: dict[str, list[float]] = {"torch": [], "numpy": [], "bf16": []}
    bandwidth = read_bandwidth()
    timed = interleaved(methods, queries, n, sizes, rates)
    chosen = methods["exact-lowp"].params()
    lowp = f"{chosen['precision']} for batches, {chosen['few_precision']} for ≤ {FEW_QUERIES} queries"
    return ExactRun(
        data,
        threads,
        len(queries),
        {lib: statistics.median(v) for lib, v in rates.items()},
        bandwidth,
        n * queries.shape[1] * 4,
        timed,
        lowp,
    )


@dataclass(frozen=True)
class IvfFigures:
    data: str
    n: int  # gallery size
    nlist: int
    nprobe: int
    train_s: float
    add_s: float
    recall: float  # recall@10 against flat on the same data
    imbalance: float  # FAISS's list imbalance factor (1 = equal lists)
    scanned: float  # gallery vectors compared per query (FAISS indexIVF_stats.ndis / nq)
    ivf: Timed
    flat: Timed

    def row(self) -> list[object]:
        return [
            self.data,
            self.nlist,
            self.nprobe,
            f"{self.train_s:.1f} / {self.add_s:.1f}",
            f"{self.imbalance:.2f}",
            f"{self.scanned:,.0f} ({100 * self.scanned / self.n:.1f}%)",
            f"**{self.recall:.3f}**",
            f"{self.ivf.single_ms:.3f} ({self.ivf.single_p99_ms:.3f})",
            f"{1000 * self.ivf.batch_s / len(self.ivf.ids):.4f}",
            f"{self.flat.single_ms / self.ivf.single_ms:.1f}× / {self.flat.batch_s / self.ivf.batch_s:.1f}×",
        ]


def ivf_search(data: str, gallery: np.ndarray, queries: np.ndarray, sizes: dict) -> IvfFigures:
    """ivf at the default nlist and nprobe, timed beside flat on the same data, which also gives the ground truth."""
    ivf = build("ivf", None, gallery)
    faiss.cvar.indexIVF_stats.reset()
    flat_timed, ivf_timed = interleaved(
        {"flat": build("flat", None, gallery), "ivf": ivf}, queries, len(gallery), sizes, None
    )
    stats = faiss.cvar.indexIVF_stats
    scanned = stats.ndis / max(1, stats.nq)
    params = ivf.params()
    recall = recall_at_k(ivf_timed.ids, flat_timed.ids, K)
    print(
        f"  ivf on {data}: recall@{K} {recall:.3f}, {ivf_timed.single_ms:.3f} ms single, "
        f"{1000 * ivf_timed.batch_s / len(queries):.4f} ms/query batched",
        flush=True,
    )
    imbalance = faiss.extract_index_ivf(ivf.index).invlists.imbalance_factor()
    return IvfFigures(
        data,
        len(gallery),
        params["nlist"],
        params["nprobe"],
        ivf.build_stats.train_seconds,
        ivf.build_stats.add_seconds,
        recall,
        imbalance,
        scanned,
        ivf_timed,
        flat_timed,
    )


def where_they_lose(runs: list[ExactRun], ivf: list[IvfFigures]) -> str:
    """Per data set: each exact method against `brute` (torch, its default backend), timed side by side (issue 22's
    goal: exact-lowp never more than 10% slower, batched or single), and ivf at its defaults against flat."""
    parts = ["**Where each method loses**, per data set:"]
    for run in runs:
        truth = run.timed[-1].ids
        brute = next(f for f in run.timed if f.label == "brute (torch)")
        curves = {
            f.label: [
                (
                    1.0 if np.array_equal(f.ids, truth) else recall_at_k(f.ids, truth, K),
                    f.single_ms,
                    1000 * f.batch_s / run.queries,
                )
            ]
            for f in run.timed
            if f is not brute
        }
        lines = where_methods_lose(
            curves, (brute.single_ms, 1000 * brute.batch_s / run.queries), exact=list(curves), baseline="brute (torch)"
        )
        parts += ["", f"*{run.data}, {run.threads} thread{'s' if run.threads > 1 else ''}* (exact-lowp {run.lowp}):"]
        parts += lines
    for f in ivf:
        name = f"ivf nlist={f.nlist}, nprobe={f.nprobe}"
        point = [(f.recall, f.ivf.single_ms, 1000 * f.ivf.batch_s / len(f.ivf.ids))]
        flat = (f.flat.single_ms, 1000 * f.flat.batch_s / len(f.flat.ids))
        parts += ["", f"*{f.data}, ivf at its defaults against flat:*"]
        parts += where_methods_lose({name: point}, flat, baseline="flat", swept=False)
    return "\n".join(parts)


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    sizes = QUICK if args.quick else DEFAULT
    threads = runtime.set_threads(args.threads)
    n, q, d = sizes["n"], sizes["queries"], sizes["d"]
    rng = np.random.default_rng(0)
    with load_watch() as load:
        mixture = random_cluster_model(d, seed=0, **asdict(GENERATOR))
        clustered, _ = mixture.sample(n, seed=1)
        clustered_queries, _ = mixture.sample(q, seed=2)
        gallery, queries = unit_rows(rng, n, d), unit_rows(rng, q, d)
        bunched_model = bunched_cluster_model(d, seed=0, **asdict(GENERATOR))
        bunched, _ = bunched_model.sample(n, seed=1)
        bunched_queries, _ = bunched_model.sample(CHECK_CHUNKS * sizes["chunk"], seed=2)
        mixture_label = f"Gaussian mixture, {GENERATOR.n_clusters} centres"
        runs = []
        for data, rows, asked, count in (
            (mixture_label, clustered, clustered_queries, q),
            ("uniform unit vectors", gallery, queries, CHECK_CHUNKS * sizes["chunk"]),
            (BUNCHED_LABEL, bunched, bunched_queries, CHECK_CHUNKS * sizes["chunk"]),
        ):
            print(f"exact search: {count:,} queries × {n:,} × {d} ({data}), k={K}, {threads} threads", flush=True)
            methods = {label: build(name, backend, rows) for label, name, backend in EXACT}
            runs.append(exact_search(data, methods, n, asked[:count], sizes, threads))
            # the same at one thread, where other work's load disturbs least
            if threads > 1 and not args.quick and data == mixture_label:
                check = asked[: CHECK_CHUNKS * sizes["chunk"]]
                print(f"exact search again at 1 thread: {len(check):,} queries", flush=True)
                runs.append(exact_search(data, methods, n, check, sizes, 1))
                runtime.set_threads(threads)
            del methods
        print("ivf beside flat: uniform, clustered, then bunched generated vectors", flush=True)
        ivf = [ivf_search("uniform unit vectors", gallery, queries, sizes)]
        del gallery
        ivf.append(ivf_search(mixture_label, clustered, clustered_queries, sizes))
        ivf.append(ivf_search(BUNCHED_LABEL, bunched, bunched_queries, sizes))
    exact_table = markdown_table(
        [
            "data",
            "method",
            "threads",
            "queries",
            "all queries, s",
            "queries/s",
            "× fp32 roofline",
            "× bf16 roofline",
            "single query ms (median)",
            "single p99 ms",
            f"recall@{K} vs flat",
        ],
        [row for run in runs for row in run.rows()],
    )
    sgemm_line = "\n\n".join(
        f"{run.data}, measured ({sizes['sgemm_n']}×{sizes['sgemm_n']} matrices, {run.threads}"
        f" thread{'s' if run.threads > 1 else ''}, median over chunks): fp32 torch.mm {run.sgemm['torch'] / 1e9:.0f}"
        f" GFLOP/s, numpy matmul {run.sgemm['numpy'] / 1e9:.0f} GFLOP/s, bf16 torch.mm {run.sgemm['bf16'] / 1e9:.0f}"
        f" GFLOP/s; roofline for 2·Q·N·d = {2.0 * run.queries * n * d / 1e12:.2f} TFLOP:"
        f" **{2.0 * run.queries * n * d / max(run.sgemm['torch'], run.sgemm['numpy']):.2f} s** in fp32,"
        f" **{2.0 * run.queries * n * d / run.sgemm['bf16']:.2f} s** in bf16. Memory read bandwidth"
        f" {run.bandwidth / 1e9:.1f} GB/s: one query's floor is **{run.single_limits_ms()['fp32']:.2f} ms** for the"
        f" fp32 gallery, **{run.single_limits_ms()['8-bit']:.2f} ms** for an 8-bit copy and"
        f" **{run.single_limits_ms()['16-bit']:.2f} ms** for a 16-bit copy. exact-lowp scanned {run.lowp}; one query:"
        f" **{next(f.single_ms for f in run.timed if f.label == 'exact-lowp'):.2f} ms**"
        f" ({'✓' if next(f.single_ms for f in run.timed if f.label == 'exact-lowp') <= GOAL_SINGLE_MS else '✗ missed'},"
        f" goal ≤ {GOAL_SINGLE_MS} ms at 100k × 512)."
        for run in runs
    )
    ivf_table = markdown_table(
        [
            "data",
            "nlist",
            "nprobe",
            "train / add s",
            "list imbalance",
            "scanned per query",
            f"recall@{K}",
            "single query ms (p99)",
            "batched ms/query",
            "speed-up over flat single / batched",
        ],
        [f.row() for f in ivf],
    )
    losses = where_they_lose(runs, ivf)
    print(
        "\n"
        + sgemm_line
        + "\n"
        + exact_table
        + "\n\n"
        + ivf_table
        + "\n\n"
        + losses
        + "\n"
        + generator_line(GENERATOR, 0, None)
    )
    chunks = -(-q // sizes["chunk"])
    doc = [
        (
            f"**Generated data, no model**: galleries of N = {n:,} vectors of d = {d}: the Gaussian mixture of"
            f" `write_generated_gallery` (issue 9's data) with Q = {q:,} separate query vectors drawn from it"
            f" (tiny-ImageNet's val size), uniform random unit vectors with {CHECK_CHUNKS * sizes['chunk']:,}"
            f" separate uniform queries, and {BUNCHED_LABEL} vectors (the mixture moved onto one common direction:"
            " nearly every pair scores above 0.9, as with real CNN embeddings of one kind of photograph, so"
            f" exact-lowp's bound prunes least there) with {CHECK_CHUNKS * sizes['chunk']:,} separate queries drawn"
            f" from them, k = {K}, {threads} threads for"
            f" torch, FAISS and BLAS. The queries go in {chunks} chunks of {sizes['chunk']:,}; for each chunk the sgemm"
            " rates and every method are measured back to back, so all share the same load. *All queries*: each chunk"
            " in one `search` call (brute works through it in blocks that keep the score matrix under"
            f" {SCORE_BLOCK_BYTES // 2**20} MiB), summed over chunks. *× roofline*: a chunk's time over 2·chunk·N·d"
            " divided by the faster sgemm rate measured beside it, median over chunks. *Single query*: one query per"
            f" call, as the study timed it (`lookalike.study.timing.measure_latency`, {sizes['single_per_chunk']}"
            " queries per chunk), median over chunks of each chunk's median (and of its p99). The one-thread rows"
            f" repeat the first {CHECK_CHUNKS} chunks with torch, FAISS and BLAS at one thread: a single thread is"
            " barely slowed by other work's threads, while two threads that must wait for each other are, so they show"
            " the methods' own efficiency. *exact-lowp* scans an int8, bf16 or fp16 copy of the gallery and re-ranks"
            " in fp32 every row whose approximate score lies within the proven error bound of the k-th, or, where"
            " that bound would keep too many rows, scans fp32 directly (brute force itself); a probe at build, on"
            f" the gallery's own rows, chooses separately for batches and for ≤ {FEW_QUERIES} queries. Its results"
            " are fp32 brute force's by construction, and the last column checks them against flat."
            f" *{FLAT_BLAS_ALWAYS}*"
            " sends even a single query to BLAS (`distance_compute_blas_threshold` = 1); *flat (faiss)* keeps FAISS's"
            " default of 20 (fewer queries are scanned without BLAS), lookalike's setting"
            " (`lookalike.runtime.FAISS_SETTINGS`), chosen from this comparison."
        ),
        "",
        sgemm_line,
        "",
        exact_table,
        "",
        (
            f"**ivf** (`IndexIVFFlat`, inner product) at the defaults: nlist = round(√N) = {default_nlist(n)}, nprobe ="
            f" `lookalike.search.DEFAULT_NPROBE` = {DEFAULT_NPROBE}, timed chunk by chunk beside flat on the same data;"
            f" recall@{K} against flat's results. Uniform unit vectors have no cluster structure, so ivf's recall on"
            f" them is its worst case; the Gaussian-mixture rows ({GENERATOR.n_clusters} random centres,"
            " `lookalike.gallery.generated.random_cluster_model`, queries drawn from the same mixture) are closer to"
            " how real embeddings cluster, and the {BUNCHED_LABEL} rows add how their scores bunch — all three are"
            " GENERATED, not image embeddings. *List imbalance* is FAISS's"
            " imbalance factor (1 = equal lists); *scanned per query* counts the gallery vectors each query is"
            " compared with (FAISS `indexIVF_stats`): on the mixture, k-means leaves uneven lists and the queries,"
            " drawn where the data is dense, land in the big ones, so ivf scans more than nprobe/nlist of the gallery"
            " — and scans it without BLAS, so batched there ivf can even be slower than flat, whose scan is one matrix"
            " product; one query at a time (the study's mode, and an interactive user's) it stays far ahead."
            " Single-query times are medians (p99 in brackets)."
        ),
        "",
        ivf_table,
        "",
        losses,
        "",
        generator_line(GENERATOR, 0, None) + " The uniform rows are `numpy.random.default_rng(0)` normals, normalised.",
        bunched_line(GENERATOR, 0),
        "",
        environment_markdown(load, args.quick),
    ]
    if should_write(args):
        print(f"\nwrote section '{SECTION}' of {write_section(SECTION, chr(10).join(doc))}")


if __name__ == "__main__":
    main()
