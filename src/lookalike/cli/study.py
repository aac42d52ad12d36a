"""`lookalike tradeoff | tune | scale | report`: the study's accuracy-vs-speed and scale experiments.

Each command parses its options here and hands them to its experiment module's `cli_main`.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tradeoff", help="accuracy vs speed: sweep nprobe/nlist and every index family against exact search")
    p.add_argument("--gallery", required=True)
    p.add_argument("--metric", choices=["ip", "l2"], default="ip")
    p.add_argument("--k", "-k", type=int, default=10)
    p.add_argument("--queries", default=None, help="text file of query image paths (the study's all_img_list); default: held-out gallery queries")
    p.add_argument("--families", default="ivf,hnsw,ivfpq,ivfpq-mmap,sq8,sqfp16", help="comma-separated index families to sweep ('' for none)")
    p.add_argument("--index", action="append", default=[], help="an extra FAISS index_factory string to measure (repeatable)")
    p.add_argument("--max-queries", type=int, default=1000)
    p.add_argument("--single-queries", type=int, default=200, help="queries timed one at a time per point")
    p.add_argument("--exact-queries", type=int, default=200, help="query sample that times the exact methods (brute, flat)")
    p.add_argument("--nlist-factors", default="1,4,16", help="IVF nlist values as multiples of √N")
    p.add_argument("--stop-recall", type=float, default=1.0, help="end a curve once its recall@k reaches this")
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/tradeoff)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run("tradeoff"))

    p = sub.add_parser("tune", help="pick the fastest index that reaches a recall target on held-out queries")
    p.add_argument("--gallery", required=True)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--k", "-k", type=int, default=10)
    p.add_argument("--max-memory", default=None, help="memory budget, e.g. 512MB or 1GB")
    p.add_argument("--latency", choices=["single", "batch"], default="single", help="which latency to minimise")
    p.add_argument("--metric", choices=["ip", "l2"], default="ip")
    p.add_argument("--max-queries", type=int, default=1000, help="held-out queries, split in half: validation (tuned on) and test (reported)")
    p.add_argument("--families", default=None, help="only consider these candidate families (default: all the rules allow)")
    p.add_argument("--name", default="tuned", help="name to save the chosen index under (search it with --method NAME)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run("tune"))

    p = sub.add_parser("scale", help="latency profile as the gallery grows (e.g. 10k, 100k, 1M)")
    p.add_argument("--gallery", required=True)
    p.add_argument("--sizes", default="10k,100k,1M", help="comma-separated sizes; k and M suffixes allowed")
    p.add_argument("--extra-embeddings", default=None, help="real embeddings of the same model (an (N, d) .npy, or a larger gallery folder) to grow the gallery with before synthesising")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--k", "-k", type=int, default=10)
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for recall and label precision")
    p.add_argument("--timing-queries", "--exact-queries", dest="exact_queries", type=int, default=200, help="a sample of the queries timed per method, one by one and as one batch (keeps exact search at 1M affordable)")
    p.add_argument("--methods", default="brute,flat,ivf", help="comma-separated methods (names or FAISS factory strings)")
    p.add_argument("--metric", choices=["ip", "l2"], default="ip")
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/scale)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run("scale"))

    p = sub.add_parser("report", help="bench + tradeoff + scale for one or more galleries, as one Markdown report")
    p.add_argument("--galleries", required=True, nargs="+")
    p.add_argument("--out", default="report")
    p.add_argument("--sizes", default="100k,1M", help="sizes for the scale section (question ii: 100k → 1M; synthetic extension above the gallery's size)")
    p.add_argument("--k", "-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run("report"))


def _run(command: str):
    """Import the experiment only when its command runs, so `lookalike --help` stays fast."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(f"lookalike.study.{command}")
        return module.cli_main(args)

    return run
