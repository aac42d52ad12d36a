"""The option vocabulary shared by every command, so one word means one thing everywhere.

--gallery G [G …]       the gallery folder(s) a command reads
-k, --k N               neighbours per query
--queries N             how many held-out queries measure accuracy
--query-list FILE       a text file of query image paths (the study's all_img_list)
--timing-queries N      how many of those queries are timed one at a time per method or point
--exact-timing-queries N  the sample that times the exact baselines (brute, flat) in a sweep
--decode-threads N      local extraction: threads decoding images beside the model
--actors N              Ray: model actors (extract), or actors holding index parts (search, serve)
--database all|heldout  the rows search, index and serve use: every image (default) or the study's database
"""

from __future__ import annotations

import argparse

from ..embed.registry import MODEL_NAMES
from ..search.registry import METHODS, PARAMS

SEARCH_PARAM_FLAGS = {
    "nprobe": "--nprobe",
    "efSearch": "--ef-search",
    "k_factor": "--k-factor",
}  # registry name → option

METHOD_HELP = f"{', '.join(METHODS)}, a FAISS index_factory string, or the name of an index saved in the gallery"


def gallery(p: argparse.ArgumentParser, several: bool = False, help: str | None = None) -> None:
    if several:
        p.add_argument(
            "--gallery", dest="gallery", required=True, nargs="+", help=help or "one or more gallery folders"
        )
    else:
        p.add_argument("--gallery", required=True, help=help or "gallery folder made by `lookalike extract`")


def k(p: argparse.ArgumentParser, default: int = 10) -> None:
    p.add_argument("-k", "--k", dest="k", type=int, default=default, help=f"neighbours per query (default {default})")


def queries(p: argparse.ArgumentParser, default: int = 1000) -> None:
    p.add_argument(
        "--queries", type=int, default=default, help=f"held-out queries that measure accuracy (default {default})"
    )


def timing_queries(p: argparse.ArgumentParser, default: int = 200) -> None:
    p.add_argument(
        "--timing-queries",
        dest="timing_queries",
        type=int,
        default=default,
        help=f"queries timed one at a time per method (default {default})",
    )


def model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", choices=MODEL_NAMES, help="embedding model (default resnet18)")


def method(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--method", default=default, help=f"{METHOD_HELP} (default {default})")


def metric(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric",
        choices=["ip", "l2"],
        default="ip",
        help="ip: inner product (cosine); l2: squared distance (2 − 2·cos)",
    )


def search_params(p: argparse.ArgumentParser) -> None:
    """Search-time parameters for one call (ranges and meanings from search.registry.PARAMS; the method checks them)."""
    for name, flag in SEARCH_PARAM_FLAGS.items():
        spec = PARAMS[name]
        p.add_argument(
            flag,
            dest=name,
            type=int,
            default=None,
            help=f"{spec.meaning} (default: the method's own, {spec.default} when built)",
        )


def chosen_search_params(args: argparse.Namespace) -> dict[str, int]:
    """The search-time parameters given on the command line, by their registry names."""
    return {name: getattr(args, name) for name in SEARCH_PARAM_FLAGS if getattr(args, name, None) is not None}


def threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS/BLAS threads (default: one per core)")


def database(p: argparse.ArgumentParser) -> None:
    """Which rows a command searches or indexes (see search.storage.DATABASES)."""
    p.add_argument(
        "--database",
        choices=["all", "heldout"],
        default="all",
        help=(
            "rows searched: all (every image, the default) or heldout (the study's database: its held-out queries"
            " left out)"
        ),
    )


def search_actors(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actors",
        type=int,
        default=None,
        help="ray engine: actors that each hold a group of the index's parts (default: one per cluster CPU)",
    )
