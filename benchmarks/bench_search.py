"""Exact search (brute, flat) against the machine's sgemm roofline, and ivf latency and recall (issue 2).

Exact search of Q queries against N gallery vectors of dimension d is one matrix product,
2·Q·N·d floating-point operations, plus a top-k selection. Its floor on this machine is that
count divided by the machine's own measured sgemm rate (torch.mm and numpy matmul on large
square fp32 matrices, at the same thread count): the roofline. Each round times the sgemm
rates and every exact method back to back, so load from other work falls on all of them
alike; figures are medians over rounds, and each method's distance from the roofline is the
median of its per-round ratios.

Data: GENERATED unit vectors (no model, no image). Exact search uses uniform random unit
vectors; ivf also runs on a generated Gaussian mixture with 1000 centres
(`experiments.synthetic_gallery.random_cluster_model`), because uniform vectors have no
cluster structure and so give ivf its worst case. Queries are drawn apart from the gallery,
never gallery members searched for themselves.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment_markdown, load_watch, markdown_table, median_seconds, parser, should_write, write_section  # noqa: E402

from lookalike import runtime  # noqa: E402
from lookalike.experiments.synthetic_gallery import random_cluster_model  # noqa: E402
from lookalike.experiments.timing import measure_latency  # noqa: E402
from lookalike.metrics import recall_at_k  # noqa: E402
from lookalike.search import DEFAULT_NPROBE, SearchMethod, default_nlist, make_method  # noqa: E402

SECTION = "Exact and IVF search (issue 2)"
GOAL_ROOFLINE = 1.5
K = 10
DEFAULT = {"n": 100_000, "queries": 10_000, "d": 512, "sgemm_n": 3072, "single": 200}  # Q = tiny-ImageNet's val
QUICK = {"n": 10_000, "queries": 500, "d": 512, "sgemm_n": 512, "single": 20}
EXACT = [("brute (torch)", "brute", "torch"), ("brute (numpy)", "brute", "numpy"), ("flat (faiss)", "flat", None)]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sgemm_flops(n: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an n×n fp32 matrix product, torch and numpy (the median of `repeats` calls)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flop = 2.0 * n**3
    return {
        "torch": flop / median_seconds(lambda: torch.mm(ta, tb), repeats),
        "numpy": flop / median_seconds(lambda: a @ b, repeats),
    }


@dataclass(frozen=True)
class ExactFigures:
    label: str
    batch_s: float  # all queries in one call, median over rounds
    ratio: float  # batch_s / roofline_s, median of per-round ratios
    single_ms: float  # one query per call, median
    single_p99_ms: float

    def row(self, queries: int) -> list[object]:
        ok = "✓" if self.ratio <= GOAL_ROOFLINE else "✗ missed"
        return [self.label, f"{self.batch_s:.2f}", f"{queries / self.batch_s:,.0f}", f"**{self.ratio:.2f}×** {ok}",
                f"{self.single_ms:.2f}", f"{self.single_p99_ms:.2f}"]


def build(name: str, backend: str | None, vectors: np.ndarray) -> SearchMethod:
    method = make_method(name, len(vectors), vectors.shape[1], **({"backend": backend} if backend else {}))
    method.build(vectors)
    return method


def exact_search(gallery: np.ndarray, queries: np.ndarray, sizes: dict, rounds: int) -> tuple[list[ExactFigures], dict[str, float]]:
    """Rounds of: sgemm rates, then each exact method on every query at once and on single queries."""
    methods = {label: build(name, backend, gallery) for label, name, backend in EXACT}
    flop = 2.0 * len(queries) * len(gallery) * gallery.shape[1]
    batch = {label: [] for label in methods}
    ratio = {label: [] for label in methods}
    single = {label: [] for label in methods}
    p99 = {label: [] for label in methods}
    rates: dict[str, list[float]] = {"torch": [], "numpy": []}
    for r in range(rounds):
        for lib, rate in sgemm_flops(sizes["sgemm_n"], repeats=3).items():
            rates[lib].append(rate)
        roofline_s = flop / max(rates["torch"][-1], rates["numpy"][-1])
        for label, method in methods.items():
            t = time.perf_counter()
            method.search(queries, K)
            batch[label].append(time.perf_counter() - t)
            ratio[label].append(batch[label][-1] / roofline_s)
            latency, _ = measure_latency(method, queries[: sizes["single"]], K, single_queries=sizes["single"], batch_repeats=1)
            single[label].append(latency.single_ms)
            p99[label].append(latency.single_p99_ms)
            print(f"  round {r + 1} {label}: {batch[label][-1]:.2f} s batched ({ratio[label][-1]:.2f}× roofline {roofline_s:.2f} s), "
                  f"{latency.single_ms:.2f} ms single", flush=True)
    figures = [
        ExactFigures(label, statistics.median(batch[label]), statistics.median(ratio[label]),
                     statistics.median(single[label]), statistics.median(p99[label]))
        for label in methods
    ]
    sgemm = {lib: statistics.median(v) for lib, v in rates.items()}
    return figures, sgemm


@dataclass(frozen=True)
class IvfFigures:
    data: str
    nlist: int
    nprobe: int
    train_s: float
    add_s: float
    recall: float  # recall@10 against flat on the same data
    single_ms: float
    single_p99_ms: float
    batch_ms: float  # per query, all queries in one call
    flat_single_ms: float
    flat_batch_ms: float

    def row(self) -> list[object]:
        return [self.data, self.nlist, self.nprobe, f"{self.train_s:.1f} / {self.add_s:.1f}", f"**{self.recall:.3f}**",
                f"{self.single_ms:.3f} ({self.single_p99_ms:.3f})", f"{self.batch_ms:.4f}",
                f"{self.flat_single_ms / self.single_ms:.1f}× / {self.flat_batch_ms / self.batch_ms:.1f}×"]


def ivf_search(data: str, gallery: np.ndarray, queries: np.ndarray, sizes: dict) -> IvfFigures:
    """ivf at the default nlist and nprobe, timed with flat on the same data, which also gives the ground truth."""
    flat, ivf = build("flat", None, gallery), build("ivf", None, gallery)
    flat_latency, truth = measure_latency(flat, queries, K, single_queries=sizes["single"], batch_repeats=1)
    latency, found = measure_latency(ivf, queries, K, single_queries=sizes["single"], batch_repeats=3)
    params = ivf.params()
    print(f"  ivf on {data}: recall@{K} {recall_at_k(found, truth, K):.3f}, {latency.single_ms:.3f} ms single, "
          f"{latency.batch_ms:.4f} ms/query batched", flush=True)
    return IvfFigures(
        data, params["nlist"], params["nprobe"], ivf.build_stats.train_seconds, ivf.build_stats.add_seconds,
        recall_at_k(found, truth, K), latency.single_ms, latency.single_p99_ms, latency.batch_ms,
        flat_latency.single_ms, flat_latency.batch_ms,
    )


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of sgemm + exact methods (default 3)")
    args = p.parse_args()
    sizes = QUICK if args.quick else DEFAULT
    rounds = 1 if args.quick else args.rounds
    threads = runtime.set_threads(args.threads)
    n, q, d = sizes["n"], sizes["queries"], sizes["d"]
    rng = np.random.default_rng(0)
    with load_watch() as load:
        gallery, queries = unit_rows(rng, n, d), unit_rows(rng, q, d)
        print(f"exact search: {q:,} queries × {n:,} × {d} generated uniform unit vectors, k={K}, {threads} threads, {rounds} rounds", flush=True)
        exact, sgemm = exact_search(gallery, queries, sizes, rounds)
        print("ivf: uniform and clustered generated vectors", flush=True)
        ivf = [ivf_search("uniform unit vectors", gallery, queries, sizes)]
        del gallery
        mixture = random_cluster_model(d, n_clusters=1000, seed=0)
        clustered, _ = mixture.sample(n, seed=1)
        clustered_queries, _ = mixture.sample(q, seed=2)
        ivf.append(ivf_search("Gaussian mixture, 1000 centres", clustered, clustered_queries, sizes))
    flop = 2.0 * q * n * d
    best = max(sgemm.values())
    exact_table = markdown_table(
        ["method", "all queries, s", "queries/s", f"× roofline (goal ≤ {GOAL_ROOFLINE:g}×)", "single query ms (median)", "single p99 ms"],
        [f.row(q) for f in exact],
    )
    sgemm_line = (
        f"Measured sgemm ({sizes['sgemm_n']}×{sizes['sgemm_n']} fp32, {threads} threads): torch.mm {sgemm['torch'] / 1e9:.0f} GFLOP/s, "
        f"numpy matmul {sgemm['numpy'] / 1e9:.0f} GFLOP/s. Roofline for 2·Q·N·d = {flop / 1e12:.2f} TFLOP at the faster rate: "
        f"**{flop / best:.2f} s** ({q / (flop / best):,.0f} queries/s)."
    )
    ivf_table = markdown_table(
        ["data", "nlist", "nprobe", "train / add s", f"recall@{K}", "single query ms (p99)", "batched ms/query", "speed-up over flat single / batched"],
        [f.row() for f in ivf],
    )
    print("\n" + sgemm_line + "\n" + exact_table + "\n\n" + ivf_table)
    doc = [
        f"**Generated data, no model**: a gallery of N = {n:,} uniform random unit vectors of d = {d} and Q = {q:,} separate "
        f"query vectors (tiny-ImageNet's val size), k = {K}, {threads} threads for torch, FAISS and BLAS. "
        f"*All queries*: one `search` call with every query (brute works through them in blocks that keep the score "
        f"matrix under {64} MiB); median over {rounds} rounds. *Single query*: one query per call, as the study timed it "
        f"(`experiments.timing.measure_latency`, {sizes['single']} queries per round). The roofline is 2·Q·N·d divided by "
        "the machine's own sgemm rate, measured in the same rounds; *× roofline* is the median of per-round ratios.",
        "",
        sgemm_line,
        "",
        exact_table,
        "",
        f"**ivf** (`IndexIVFFlat`, inner product) at the defaults: nlist = round(√N) = {default_nlist(n)}, "
        f"nprobe = `lookalike.search.DEFAULT_NPROBE` = {DEFAULT_NPROBE}; recall@{K} against flat on the same data and queries. "
        "Uniform unit vectors have no cluster structure, so ivf's recall on them is its worst case; the Gaussian-mixture "
        "rows (1000 random centres, `experiments.synthetic_gallery.random_cluster_model`, queries drawn from the same "
        "mixture) are closer to how real embeddings cluster — both are GENERATED, not image embeddings. "
        "Single-query times are medians (p99 in brackets); the speed-up compares with flat measured on the same data in the same run.",
        "",
        ivf_table,
        "",
        environment_markdown(load, args.quick),
    ]
    if should_write(args):
        print(f"\nwrote section '{SECTION}' of {write_section(SECTION, chr(10).join(doc))}")


if __name__ == "__main__":
    main()
