"""`lookalike study | tradeoff | tune | scale | report | map`: the whole study, and its experiments one by one.

Each command parses its options here, builds the experiment's config and calls it; the
experiments (lookalike.study) know nothing of argparse. They are imported when their command
runs, so `lookalike --help` stays fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..embed.registry import BACKENDS, PRECISIONS
from ..errors import LookalikeError
from ..gallery import DEFAULT_SHARD_ROWS
from ..study.pipeline import STEPS
from ..study.tradeoff import FAMILIES
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the whole study in one resumable command: fetch, extract, index, bench, tradeoff, tune, scale, leakage,"
        " report (report.html)",
    )
    p.add_argument(
        "--data",
        required=True,
        help=(
            "the images: a folder (tiny-ImageNet layout, class folders, a list file or webdataset shards),"
            " tiny-imagenet (downloaded into --dest) or demo (the built-in generated collection, in OUT/data)"
        ),
    )
    p.add_argument("--out", default="runs/study", help="the study's folder (default runs/study); a rerun resumes it")
    p.add_argument("--models", default="resnet18,mobilenet,clip", help="comma-separated models (default all three)")
    p.add_argument(
        "--sizes",
        default="auto",
        help=(
            "gallery sizes for the scale step, e.g. 100k,1M (synthetic rows above the collection's size); auto: the"
            " power of ten at or below the collection and ten times it (100k,1M for tiny-ImageNet)"
        ),
    )
    p.add_argument(
        "--weights",
        default="auto",
        help=(
            "auto (default: pretrained where cached or downloadable, else seeded random weights, said on every"
            " output), pretrained, random, or PATH to a state dict"
        ),
    )
    opt.k(p)
    p.add_argument(
        "--target-recall", type=float, default=0.95, help="recall@k the tuner and the scale step aim at (default 0.95)"
    )
    p.add_argument("--image-size", type=int, default=None, help="model input size (default: the model's own, 224)")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto", help="inference backend (default auto)")
    p.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto", help="precision (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--dest", default="data", help="--data tiny-imagenet: folder to put tiny-imagenet-200/ in")
    p.add_argument("--only", metavar="STEP", default=None, help=f"run only this step again ({', '.join(STEPS)})")
    p.add_argument("--from", dest="start", metavar="STEP", default=None, help="run this step and every later one again")
    opt.threads(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "tradeoff", help="accuracy vs speed: sweep nprobe/nlist and every index family against exact search"
    )
    opt.gallery(p)
    opt.metric(p)
    opt.k(p)
    p.add_argument(
        "--query-list",
        default=None,
        help="text file of query image paths (the study's all_img_list); default: held-out gallery queries",
    )
    p.add_argument(
        "--families", default=",".join(FAMILIES), help="comma-separated index families to sweep ('' for none)"
    )
    p.add_argument(
        "--index", action="append", default=[], help="an extra FAISS index_factory string to measure (repeatable)"
    )
    opt.queries(p)
    opt.timing_queries(p)
    p.add_argument(
        "--exact-timing-queries",
        type=int,
        default=200,
        help="query sample that times the exact baselines (brute, flat)",
    )
    p.add_argument("--nlist-factors", default="1,4,16", help="IVF nlist values as multiples of √N")
    p.add_argument("--stop-recall", type=float, default=1.0, help="end a curve once its recall@k reaches this")
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/tradeoff)")
    opt.threads(p)
    p.set_defaults(func=cmd_tradeoff)

    p = sub.add_parser("tune", help="pick the fastest index that reaches a recall target on held-out queries")
    opt.gallery(p)
    p.add_argument("--target-recall", type=float, default=0.95)
    opt.k(p)
    p.add_argument("--max-memory", default=None, help="memory budget, e.g. 512MB or 1GB")
    p.add_argument("--latency", choices=["single", "batch"], default="single", help="which latency to minimise")
    opt.metric(p)
    opt.queries(p)
    p.add_argument(
        "--families", default=None, help="only consider these candidate families (default: all the rules allow)"
    )
    p.add_argument("--name", default="tuned", help="name to save the chosen index under (search it with --method NAME)")
    opt.threads(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("scale", help="latency profile as the gallery grows (e.g. 10k, 100k, 1M)")
    opt.gallery(p)
    p.add_argument("--sizes", default="10k,100k,1M", help="comma-separated sizes; k and M suffixes allowed")
    p.add_argument(
        "--extra-embeddings",
        default=None,
        help=(
            "real embeddings of the same model (an (N, d) .npy, or a larger gallery folder) to grow the gallery with"
            " before synthesising"
        ),
    )
    p.add_argument("--target-recall", type=float, default=0.95)
    opt.k(p)
    opt.queries(p)
    opt.timing_queries(p)
    p.add_argument(
        "--methods", default="brute,flat,ivf", help="comma-separated methods (names or FAISS factory strings)"
    )
    opt.metric(p)
    p.add_argument("--out", default=None, help="output folder (default: <gallery>/scale)")
    p.add_argument(
        "--out-of-core",
        action="store_true",
        help=(
            "measure every size on the out-of-core path (ivfpq-ondisk built from the pool's shards, exact ground truth"
            " streamed over them), whatever would fit in memory; sizes that would not fit take it anyway"
        ),
    )
    p.add_argument(
        "--work",
        default=None,
        help="folder for the pool gallery (its shards) and the on-disk indexes (default: <out>/work); removed after",
    )
    p.add_argument("--keep-work", action="store_true", help="keep the pool gallery and the on-disk indexes")
    p.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_ROWS,
        help=f"rows per shard of the pool gallery (default {DEFAULT_SHARD_ROWS:,})",
    )
    opt.threads(p)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser(
        "report", help="bench + tradeoff + scale + the leakage check for one or more galleries, as one Markdown report"
    )
    opt.gallery(p, several=True)
    p.add_argument("--out", default="report")
    p.add_argument(
        "--sizes",
        default="100k,1M",
        help="sizes for the scale section (question ii: 100k → 1M; synthetic extension above the gallery's size)",
    )
    opt.k(p)
    opt.threads(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("map", help="a 2-D map of the gallery (PCA, or UMAP), coloured by label, as a PNG")
    opt.gallery(p)
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--method", choices=["pca", "umap"], default="pca", help="pca (default, exact and fast) or umap")
    p.set_defaults(func=cmd_map)


def cmd_study(args: argparse.Namespace) -> int:
    from ..study.pipeline import StudyConfig, parse_models, run_study
    from ..study.scale import parse_sizes

    config = StudyConfig(
        data=args.data,
        out=Path(args.out),
        models=parse_models(args.models),
        sizes=None if args.sizes.strip() == "auto" else parse_sizes(args.sizes),
        weights=args.weights,
        k=args.k,
        target_recall=args.target_recall,
        image_size=args.image_size,
        backend=args.backend,
        precision=args.precision,
        seed=args.seed,
        threads=args.threads,
        dest=args.dest,
    )
    run = run_study(config, only=args.only, start=args.start, echo=lambda line: print(line, flush=True))
    print(
        f"\n{len(run.ran)} step(s) run, {len(run.skipped)} skipped (done) in {run.seconds:.1f} s"
        + (f"; the report: {run.report_html} (and report.md beside it)" if run.report_html else "")
    )
    return 0


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import open_gallery
    from ..study.core import list_queries
    from ..study.tradeoff import TradeoffConfig, parse_int_list, run_tradeoff, write_tradeoff

    threads = runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    if args.k < 1:
        raise LookalikeError(f"--k must be at least 1, got {args.k}")
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    queries = list_queries(gallery, args.query_list, args.queries) if args.query_list else None
    out = Path(args.out) if args.out else gallery.path / "tradeoff"
    print(gallery.provenance())
    config = TradeoffConfig(
        k=args.k,
        metric=args.metric,
        families=families,
        factories=tuple(args.index),
        queries=queries,
        max_queries=args.queries,
        single_queries=args.timing_queries,
        exact_queries=args.exact_timing_queries,
        nlist_factors=parse_int_list(args.nlist_factors, "--nlist-factors"),
        stop_recall=args.stop_recall,
    )
    result = run_tradeoff(gallery, config)
    paths = write_tradeoff(result, out)
    print(result.to_markdown())
    print(f"written: {', '.join(str(p) for p in paths.values())} ({threads} threads)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import open_gallery
    from ..study.tune import TuneConfig, parse_bytes, tune, write_tune

    threads = runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) if args.families else None
    config = TuneConfig(
        target_recall=args.target_recall,
        k=args.k,
        max_memory_bytes=parse_bytes(args.max_memory) if args.max_memory else None,
        latency=args.latency,
        metric=args.metric,
        max_queries=args.queries,
        families=families,
        save_as=args.name,
    )
    result = tune(gallery, config)
    print(result.to_markdown())
    if result.chosen is None:
        raise LookalikeError(result.explanation())
    folder = Path(result.saved_to)
    write_tune(result, folder)
    from ..search.storage import held_rows

    held = held_rows(gallery, args.name, args.metric)  # tuned on the study's database: searched as such
    print(
        f"saved to {folder} (with tune.json and tune.md); search with: lookalike search --gallery {gallery.path}"
        f" --method {args.name}{' --metric l2' if args.metric == 'l2' else ''}"
        f"{' --database heldout' if held == 'heldout' else ''} --image IMG  ({threads} threads)"
    )
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import open_gallery
    from ..study.scale import ScaleConfig, parse_sizes, run_scale, write_scale

    threads = runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    out = Path(args.out) if args.out else gallery.path / "scale"
    config = ScaleConfig(
        sizes=parse_sizes(args.sizes),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        k=args.k,
        metric=args.metric,
        target_recall=args.target_recall,
        max_queries=args.queries,
        timing_queries=args.timing_queries,
        extra_embeddings=args.extra_embeddings,
        out_of_core=args.out_of_core,
        work=args.work or str(out / "work"),
        keep_work=args.keep_work,
        shard_rows=args.shard_size,
    )
    result = run_scale(gallery, config, progress=lambda line: print(line, flush=True))
    paths = write_scale(result, out)
    print(result.to_markdown(plot_name=None))
    print(f"written: {', '.join(str(p) for p in paths.values())} ({threads} threads)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..study.report import ReportConfig, run_report, write_report
    from ..study.scale import parse_sizes

    threads = runtime.set_threads(args.threads)
    if args.k < 1:
        raise LookalikeError(f"--k must be at least 1, got {args.k}")
    config = ReportConfig(galleries=tuple(args.gallery), out=Path(args.out), sizes=parse_sizes(args.sizes), k=args.k)
    started = time.perf_counter()
    reports = run_report(config, progress=lambda line: print(line, flush=True))
    path = write_report(reports, config, time.perf_counter() - started)
    print(f"\nreport written to {path} ({threads} threads); plots and tables under {config.out}/<gallery>/")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from ..gallery import open_gallery
    from ..study.projection import gallery_map, plot_map

    gallery = open_gallery(args.gallery)
    mapped = gallery_map(gallery, args.method)
    print(gallery.provenance())
    for warning in gallery.manifest.warnings():
        print(f"⚠ {warning}")
    print(f"{mapped.note}; wrote {plot_map(gallery, mapped, Path(args.out))}")
    return 0
