"""`lookalike tradeoff | tune | scale | report`: the study's accuracy-vs-speed and scale experiments.

Each command parses its options here and hands them to its experiment module's `cli_main`.
"""

from __future__ import annotations

import argparse

from ..study.tradeoff import FAMILIES
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tradeoff", help="accuracy vs speed: sweep nprobe/nlist and every index family against exact search")
    opt.gallery(p)
    opt.metric(p)
    opt.k(p)
    p.add_argument("--query-list", default=None, help="text file of query image paths (the study's all_img_list); default: held-out gallery queries")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated index families to sweep ('' for none)")
    p.add_argument("--index", action="append", default=[], help="an extra FAISS index_factory string to measure (repeatable)")
    opt.queries(p, old="--max-queries", legacy_list=True)
    opt.timing_queries(p, old="--single-queries")
    p.add_argument("--exact-timing-queries", type=int, default=200, help="query sample that times the exact baselines (brute, flat)")
    opt.deprecated(p, "--exact-queries", "--exact-timing-queries", "exact_timing_queries", type=int)
    p.add_argument("--nlist-factors", default="1,4,16", help="IVF nlist values as multiples of √N")
    p.add_argument("--stop-recall", type=float, default=1.0, help="end a curve once its recall@k reaches this")
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/tradeoff)")
    opt.threads(p)
    p.set_defaults(func=_run("tradeoff"))

    p = sub.add_parser("tune", help="pick the fastest index that reaches a recall target on held-out queries")
    opt.gallery(p)
    p.add_argument("--target-recall", type=float, default=0.95)
    opt.k(p)
    p.add_argument("--max-memory", default=None, help="memory budget, e.g. 512MB or 1GB")
    p.add_argument("--latency", choices=["single", "batch"], default="single", help="which latency to minimise")
    opt.metric(p)
    opt.queries(p, old="--max-queries")
    p.add_argument("--families", default=None, help="only consider these candidate families (default: all the rules allow)")
    p.add_argument("--name", default="tuned", help="name to save the chosen index under (search it with --method NAME)")
    opt.threads(p)
    p.set_defaults(func=_run("tune"))

    p = sub.add_parser("scale", help="latency profile as the gallery grows (e.g. 10k, 100k, 1M)")
    opt.gallery(p)
    p.add_argument("--sizes", default="10k,100k,1M", help="comma-separated sizes; k and M suffixes allowed")
    p.add_argument("--extra-embeddings", default=None, help="real embeddings of the same model (an (N, d) .npy, or a larger gallery folder) to grow the gallery with before synthesising")
    p.add_argument("--target-recall", type=float, default=0.95)
    opt.k(p)
    opt.queries(p)
    opt.timing_queries(p, old="--exact-queries")
    p.add_argument("--methods", default="brute,flat,ivf", help="comma-separated methods (names or FAISS factory strings)")
    opt.metric(p)
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/scale)")
    opt.threads(p)
    p.set_defaults(func=_run("scale"))

    p = sub.add_parser("report", help="bench + tradeoff + scale for one or more galleries, as one Markdown report")
    opt.gallery(p, several=True, old="--galleries")
    p.add_argument("--out", default="report")
    p.add_argument("--sizes", default="100k,1M", help="sizes for the scale section (question ii: 100k → 1M; synthetic extension above the gallery's size)")
    opt.k(p)
    opt.threads(p)
    p.set_defaults(func=_run("report"))


def _run(command: str):
    """Import the experiment only when its command runs, so `lookalike --help` stays fast."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(f"lookalike.study.{command}")
        return module.cli_main(args)

    return run
