"""The option vocabulary shared by every command, so one word means one thing everywhere.

    --gallery G [G …]       the gallery folder(s) a command reads
    -k, --k N               neighbours per query
    --queries N             how many held-out queries measure accuracy
    --query-list FILE       a text file of query image paths (the study's all_img_list)
    --timing-queries N      how many of those queries are timed one at a time per method or point
    --exact-timing-queries N  the sample that times the exact baselines (brute, flat) in a sweep
    --decode-workers N      local extraction: threads decoding images beside the model
    --actors N              Ray extraction: model actors
    --database all|heldout  the rows search, index and serve use: every image (default) or the study's database

Old spellings keep working for one release and print a deprecation warning naming the new one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..embed.registry import MODEL_NAMES
from ..search.registry import METHODS, PARAMS

SEARCH_PARAM_FLAGS = {
    "nprobe": "--nprobe",
    "efSearch": "--ef-search",
    "k_factor": "--k-factor",
}  # registry name → option

METHOD_HELP = f"{', '.join(METHODS)}, a FAISS index_factory string, or the name of an index saved in the gallery"


class Deprecated(argparse.Action):
    """Store like the new option, after a warning on stderr that names it."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; use"
            f" {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def deprecated(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    p.add_argument(old, dest=dest, action=Deprecated, new=new, **kwargs)


def gallery(p: argparse.ArgumentParser, several: bool = False, help: str | None = None, old: str | None = None) -> None:
    if several:
        # with an old spelling beside it, argparse cannot require either: `require` checks after parsing
        p.add_argument(
            "--gallery", dest="gallery", required=old is None, nargs="+", help=help or "one or more gallery folders"
        )
        if old:
            deprecated(p, old, "--gallery", "gallery", nargs="+")
    else:
        p.add_argument("--gallery", required=True, help=help or "gallery folder made by `lookalike extract`")


def k(p: argparse.ArgumentParser, default: int = 10) -> None:
    p.add_argument("-k", "--k", dest="k", type=int, default=default, help=f"neighbours per query (default {default})")


class CountOrLegacyList(argparse.Action):
    """`tradeoff --queries FILE` named a query list before --queries meant a count everywhere: keep it for one
    release."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if str(values).isdigit():
            setattr(namespace, self.dest, int(values))
        else:
            print(
                f"{parser.prog}: warning: --queries FILE is deprecated and will be removed in the next release; use"
                " --query-list FILE (--queries is now a count)",
                file=sys.stderr,
            )
            namespace.query_list = values


def queries(p: argparse.ArgumentParser, default: int = 1000, old: str | None = None, legacy_list: bool = False) -> None:
    action = CountOrLegacyList if legacy_list else "store"
    p.add_argument(
        "--queries",
        dest="queries",
        type=None if legacy_list else int,
        action=action,
        default=default,
        help=f"held-out queries that measure accuracy (default {default})",
    )
    if old:
        deprecated(p, old, "--queries", "queries", type=int)


def require(args: argparse.Namespace, dest: str, option: str) -> None:
    from ..errors import LookalikeError

    if getattr(args, dest, None) is None:
        raise LookalikeError(f"{option} is required")


def timing_queries(p: argparse.ArgumentParser, default: int = 200, old: str | None = None) -> None:
    p.add_argument(
        "--timing-queries",
        dest="timing_queries",
        type=int,
        default=default,
        help=f"queries timed one at a time per method (default {default})",
    )
    if old:
        deprecated(p, old, "--timing-queries", "timing_queries", type=int)


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
