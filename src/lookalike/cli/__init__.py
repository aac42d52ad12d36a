"""`lookalike` command line: one sub-module per group of commands, each with few options.

core   fetch, extract, index, search, bench, demo, models
dupes  dupes
study  study (the whole study, resumable), tradeoff, tune, scale, report, map
web    serve
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import textwrap
import warnings

from ..errors import LookalikeError
from . import core, dupes, study, web


class HelpFormatter(argparse.HelpFormatter):
    """Wraps help text between words only: a method name such as ivfpq-ondisk is never cut at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike",
        description="Image similarity search: embeddings, FAISS indexes and the study of their trade-offs.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter),
    )
    for module in (core, dupes, study, web):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")  # the CLI states it loudly itself
    try:
        return int(args.func(args) or 0)
    except LookalikeError as exc:
        print(f"lookalike {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lookalike {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
