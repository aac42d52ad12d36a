"""`lookalike fetch | extract | index | search | bench | demo | models`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data.images import DEFAULT_MAX_PIXELS
from ..embed.registry import BACKENDS, PRECISIONS, TEXT_MODEL_NAMES
from ..errors import LookalikeError
from ..gallery import DEFAULT_SHARD_ROWS
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download a reference data set (tiny-ImageNet-200)")
    p.add_argument("dataset", choices=["tiny-imagenet"])
    p.add_argument("--dest", default="data", help="folder to put tiny-imagenet-200/ in (default: ./data)")
    p.add_argument("--url", default=None, help="a mirror of tiny-imagenet-200.zip (default: the official Stanford URL)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("extract", help="embed every image of a collection into a gallery folder (resumable)")
    p.add_argument(
        "--data",
        required=True,
        help=(
            "tiny-ImageNet root, class-folder tree, a text file of image paths, or webdataset shards"
            " ('shards/{00000..00009}.tar' or a folder of .tar files)"
        ),
    )
    p.add_argument("--out", required=True, help="gallery folder to write")
    opt.model(p)
    p.add_argument(
        "--weights",
        default="pretrained",
        help="pretrained (default), random (explicit, seeded) or PATH to a state dict",
    )
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own, 224)")
    p.add_argument(
        "--bs",
        type=int,
        default=None,
        help=(
            "images per model call (default: the gallery's own when updating or resuming; else measured on this"
            " machine for jobs large enough, 16 on a CPU and 64 on a GPU otherwise; Ray: 16 / 64)"
        ),
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        help="images per resumable chunk (rounded up to a multiple of --bs when given)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_ROWS,
        help=f"rows per gallery shard: one memory-mappable .npy and .parquet each (default {DEFAULT_SHARD_ROWS:,})",
    )
    p.add_argument(
        "--backend",
        choices=["auto", *BACKENDS],
        default="auto",
        help="inference backend; auto: the fastest measured on the job's first images (see --precision)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", *PRECISIONS],
        default="auto",
        help=(
            "auto: measured with the backend; a precision is kept only within cosine 0.999 of fp32 torch (fp16: CUDA"
            " only; int8: openvino, quantised once per model and weights)"
        ),
    )
    p.add_argument("--splits", default=None, help="comma-separated splits to embed (default: all), e.g. train,val")
    p.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help=(
            "local engine: threads decoding images beside the model (default: the cores split between decoding and"
            " inference by measurement)"
        ),
    )
    p.add_argument(
        "--actors",
        type=int,
        default=None,
        help="ray engine: model actors (default: one per CPU of the cluster, or per GPU)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    opt.threads(p)
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--overwrite", action="store_true", help="replace a gallery built with other arguments")
    p.add_argument(
        "--update",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "update a gallery built with these arguments to the folder: embed only new and changed files, drop removed"
            " ones (the default); --update also fails if the gallery cannot be updated, --no-update refuses a changed"
            " folder"
        ),
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=(
            "skip images over this many pixels (width × height) as possible decompression bombs (default"
            f" {DEFAULT_MAX_PIXELS:,}, PIL's own threshold); raise it for legitimate large images"
        ),
    )
    _engine_args(p)
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per model actor")
    p.add_argument(
        "--staging",
        default=None,
        help=(
            "ray: fsspec URL where workers write shards (e.g. s3://bucket/job) when they do not share --out's"
            " filesystem"
        ),
    )
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("index", help="build and save a search index for a gallery")
    opt.gallery(p)
    opt.method(p, "ivf")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default round(√N))")
    p.add_argument("--nprobe", type=int, default=None, help="default nprobe stored with the index")
    opt.metric(p)
    opt.database(p)
    opt.threads(p)
    _engine_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find the nearest gallery images to one image, or to a text with a CLIP gallery")
    opt.gallery(p)
    p.add_argument(
        "--image", action="append", default=[], help="query image file; repeat it to search by several examples"
    )
    p.add_argument(
        "--text",
        help=(
            f'a text query, e.g. "a red car" (galleries of {", ".join(TEXT_MODEL_NAMES)} only); with --image, both'
            ' are examples ("this image, but at night")'
        ),
    )
    p.add_argument(
        "--not",
        dest="negative",
        action="append",
        default=[],
        help="an image the results should not look like (repeatable); with --image or --text",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="weight of the --not examples: normalise(mean(examples) − alpha × mean(--not)) (default 0.5)",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "search only the rows that match (repeatable, all must hold): label=A[,B] (label or label name),"
            " split=val, path=GLOB, mtime=LO..HI (ISO dates or epoch seconds, either side open), ids=1,2,3"
        ),
    )
    opt.method(p, "brute")
    opt.k(p)
    opt.metric(p)
    opt.database(p)
    opt.search_params(p)
    p.add_argument(
        "--compare",
        action="store_true",
        help=(
            "also search exactly over the same rows: recall@k of this query, the neighbours the method missed, both"
            " latencies"
        ),
    )
    opt.threads(p)
    _engine_args(p, "ray: an ivfpq-ondisk index's parts searched by Ray actors, each query fanned out to all")
    opt.search_actors(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("bench", help="the timing table: extraction and per-query search for brute, flat and ivf")
    opt.gallery(p, several=True, help="one or more galleries (one per model gives the combined table)")
    p.add_argument("--methods", default="brute,flat,ivf", help="comma-separated methods")
    opt.k(p)
    opt.metric(p)
    opt.queries(p)
    opt.timing_queries(p)
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    opt.threads(p)
    p.add_argument("--out", default=None, help="also write the combined table (Markdown) here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the built-in default job: generate a collection, extract with every model, bench")
    p.add_argument("--out", default="runs/demo", help="folder for the generated data, galleries and table")
    p.add_argument("--images", type=int, default=2000, help="about how many images to generate")
    p.add_argument("--models", default="resnet18,mobilenet,clip")
    p.add_argument(
        "--weights",
        default="auto",
        help="auto (pretrained where cached/downloadable, else random), pretrained or random",
    )
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the models, their dimensions and where their pretrained weights come from")
    p.set_defaults(func=cmd_models)


def _engine_args(p: argparse.ArgumentParser, ray: str = "a Ray cluster") -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local", help=f"local (default), or {ray}")
    p.add_argument(
        "--address", default=None, help="ray: cluster address (auto, ray://host:port); default starts a local cluster"
    )


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import TINY_IMAGENET_URL, fetch_tiny_imagenet

    path = fetch_tiny_imagenet(Path(args.dest), url=args.url or TINY_IMAGENET_URL)
    print(f"tiny-ImageNet-200 is ready at {path}")
    print(f"next: lookalike extract --data {path} --out galleries/resnet18 --model resnet18")
    return 0


def extract_config(args: argparse.Namespace):
    from ..embed.extract import ExtractConfig

    return ExtractConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.bs,
        chunk_size=args.chunk_size,
        shard_size=args.shard_size,
        precision=args.precision,
        backend=args.backend,
        splits=tuple(args.splits.split(",")) if args.splits else None,
        seed=args.seed,
        decode_threads=args.decode_threads if args.engine == "local" else None,
        device=args.device,
        threads=args.threads,
        overwrite=args.overwrite,
        update=args.update,
        **({"max_pixels": _positive(args.max_pixels, "--max-pixels")} if args.max_pixels is not None else {}),
    )


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise LookalikeError(f"{option} must be a positive number of pixels, got {value}")
    return value


def cmd_extract(args: argparse.Namespace) -> int:
    from ..api import extract

    config = extract_config(args)
    options = {k: v for k, v in config.__dict__.items() if k not in ("data", "out", "model", "weights")}
    gallery = extract(
        config.data,
        config.out,
        config.model,
        config.weights,
        engine=args.engine,
        progress=True,
        address=args.address,
        actors=args.actors,
        gpus_per_worker=args.gpus_per_worker,
        staging=args.staging,
        **options,
    )
    print_gallery_summary(gallery)
    return 0


def print_gallery_summary(gallery) -> None:
    m = gallery.manifest
    t = m.timings
    inference = m.model.inference
    print(f"gallery: {gallery.path}")
    print(f"  {gallery.provenance()}")
    if inference:
        print(f"  inference: {inference.describe()}")
        for c in inference.candidates:
            rate = f"{c.images_per_second:7.1f} img/s" if c.images_per_second else "        –    "
            cosine = f"cosine min {c.cosine_min:.5f}" if c.cosine_min is not None else ""
            print(
                f"    {'*' if (c.backend, c.precision) == (inference.backend, inference.precision) else ' '}"
                f" {c.backend:9} {c.precision:5} {rate}  {cosine}  {c.note}".rstrip()
            )
        if inference.split:
            streams = f"; {inference.streams} OpenVINO streams at once" if (inference.streams or 1) > 1 else ""
            print(f"  cores: {inference.split}{streams}")
        if inference.batch_size:
            print(f"  batch: {inference.batch_size} ({inference.batching})")
        if inference.decoder:
            print(f"  JPEG decoder: {inference.decoder} ({inference.decoding})")
        pace = t.get("decode_pace") or {}
        if pace.get("max"):
            print(
                f"  decode threads: {pace['start']} at first, {pace['min']}–{pace['max']} as the stage times asked,"
                f" {pace['final']} at the end"
            )
    else:
        print(f"  precision: {m.model.precision_name}")
    print(f"  extraction: {t['ms_per_image']:.2f} ms/image ({t['images_per_second']} images/s)")
    if m.update is not None:
        from ..embed.incremental import describe_update

        for line in describe_update(m.update):
            print(f"  {line}")
    if m.skipped:
        print(f"  skipped {len(m.skipped)} unreadable file(s):")
        for f in m.skipped[:20]:
            print(f"    {f['reason']}")
        if len(m.skipped) > 20:
            print(f"    … and {len(m.skipped) - 20} more (see manifest.json)")


def cmd_index(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..api import build_index
    from ..gallery import open_gallery
    from ..search import method_dir
    from ..search.storage import describe_database

    runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    params = {"nprobe": args.nprobe} if args.nprobe else {}
    method = build_index(
        gallery,
        args.method,
        metric=args.metric,
        database=args.database,
        nlist=args.nlist,
        engine=args.engine,
        address=args.address,
        **params,
    )
    stats = method.build_stats
    print(f"{gallery.provenance()}")
    print(
        f"index {method.name}: {method.params()} over {method.ntotal} vectors"
        f" ({describe_database(gallery, args.database)})"
    )
    print(
        f"  train {stats.train_seconds:.2f} s (on {stats.train_size} vectors), add {stats.add_seconds:.2f} s, memory"
        f" {method.memory_bytes() / 2**20:.2f} MiB"
    )
    print(f"  saved to {method_dir(gallery, method.name, method.metric)}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import open_gallery
    from ..search.searcher import searcher_for

    runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    if args.engine == "ray":
        from ..distributed import connected, fan_out
        from ..search.searcher import Searcher

        with connected(args.address):
            return _search(args, gallery, Searcher(gallery, database=args.database, engine=fan_out(args.actors)))
    return _search(args, gallery, searcher_for(gallery, args.database))


def _search(args: argparse.Namespace, gallery, searcher) -> int:
    from ..search.filters import Where
    from ..search.searcher import NEGATIVE_WEIGHT, Text

    if not args.image and args.text is None:
        raise LookalikeError("give a query: --image FILE (repeatable) or --text TEXT")
    where = Where.from_cli(args.where)  # a malformed filter fails before any image is embedded
    t = time.perf_counter()
    positives = [*args.image, *([Text(args.text)] if args.text is not None else [])]
    if len(positives) == 1 and not args.negative:
        vector = searcher.vector(args.image[0] if args.image else None, args.text)
    else:
        alpha = NEGATIVE_WEIGHT if args.alpha is None else args.alpha
        vector, _ = searcher.examples_vector(positives, args.negative, alpha)
    embed_ms = 1000 * (time.perf_counter() - t)
    loaded = searcher.loaded(args.method, args.metric)
    method, built_now = loaded.method, not loaded.saved and args.method != "brute"
    params = opt.chosen_search_params(args)
    t = time.perf_counter()
    if args.compare:
        comparison = searcher.compare(vector, args.k, args.method, args.metric, where=where, **params)
        hits = list(comparison.hits)
    else:
        hits = searcher.search(vector, args.k, args.method, args.metric, where=where, **params)
    search_ms = 1000 * (time.perf_counter() - t)
    tag = "" if gallery.is_real else "  ⚠ random weights/generated data"
    print(gallery.provenance())
    for warning in gallery.manifest.warnings():
        print(f"⚠ {warning}")
    query = " + ".join([*args.image, *([f"text {args.text!r}"] if args.text is not None else [])])
    if args.negative:
        query += " − " + " − ".join(args.negative)
    print(
        f"query: {query}   method: {method.name} {method.params()}   metric: {args.metric}"
        + (f"   this call: {params}" if params else "")
    )
    print(f"searched: {searcher.describe_database()}" + (f", where {where.describe()}" if where else ""))
    if loaded.note:
        print(f"note: {loaded.note}")
    print(f"{'rank':>4}  {'score':>8}  {'label':<24}  path")
    marks = comparison.in_exact if args.compare else [None] * len(hits)
    for hit, in_exact in zip(hits, marks):
        print(hit_line(hit, tag, in_exact))
    step = "tokenize+embed text" if args.text is not None else "decode+preprocess+embed"
    built = (
        f" (index built now in {1000 * loaded.load_seconds:.0f} ms; save it with `lookalike index"
        f"{' --database heldout' if args.database == 'heldout' else ''}`)"
        if built_now
        else ""
    )
    if args.compare:
        print(comparison.summary())
        if comparison.missed:
            print(f"missed by {method.name} (in the exact top {args.k}, at their exact rank):")
            for hit in comparison.missed_hits:
                print(hit_line(hit, tag))
        print(f"time: {step} {embed_ms:.1f} ms{built}")
    else:
        print(f"time: {step} {embed_ms:.1f} ms, search {search_ms:.2f} ms{built}")
    if args.text is not None and searcher.embedder.text_inference is not None:
        text = searcher.embedder.text_inference.inference
        print(f"text tower: {text.backend} {text.precision} ({text.reason})")
    return 0


def hit_line(hit, tag: str = "", in_exact: bool | None = None) -> str:
    """One result row of `lookalike search`; with --compare, a mark for results outside the exact top k."""
    label = hit.label_name or hit.label or "-"
    mark = "" if in_exact is None else ("  (exact)" if in_exact else "  (NOT in exact top k)")
    return f"{hit.rank:>4}  {hit.score:8.4f}  {label[:24]:<24}  {hit.path}{mark}{tag}"


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import atomic_write_bytes, open_gallery
    from ..study.bench import combined_table, run_bench, write_bench

    threads = runtime.set_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    results = []
    for path in args.gallery:
        gallery = open_gallery(path)
        result = run_bench(
            gallery, methods, args.k, args.metric, args.queries, args.timing_queries, args.nlist, args.nprobe
        )
        write_bench(result, gallery.path)
        print(result.to_markdown())
        print(f"(written to {gallery.path / 'bench.md'} and bench.json; {threads} threads)\n")
        results.append(result)
    if len(results) > 1 or args.out:
        table = combined_table(results)
        print("## Combined table\n")
        print(table)
        if args.out:
            atomic_write_bytes(Path(args.out), ("# lookalike combined timing table\n\n" + table).encode())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..study.demo import DemoConfig, run_demo

    if args.weights not in ("auto", "pretrained", "random"):
        raise LookalikeError(f"--weights for the demo is auto, pretrained or random, not {args.weights!r}")
    run_demo(
        DemoConfig(
            out=Path(args.out),
            images=args.images,
            models=tuple(args.models.split(",")),
            weights=args.weights,
            image_size=args.image_size,
            threads=args.threads,
        )
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..embed.models import MODELS, weights_hint

    for name, spec in MODELS.items():
        print(
            f"{name:<10} {spec.dim:>5}-d  {spec.family}:{spec.arch} ({spec.pretrained})  input"
            f" {spec.preprocess.image_size}"
        )
        print(f"{'':<10} pretrained weights: {weights_hint(name)}")
    return 0
