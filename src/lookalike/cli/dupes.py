"""`lookalike dupes`: near-duplicate groups in a gallery, across two galleries, or between its queries and database."""

from __future__ import annotations

import argparse

from . import options as opt

SHOWN_GROUPS = 10  # groups printed in full; --out writes them all


def register(sub: argparse._SubParsersAction) -> None:
    from ..search.dupes import METHODS, PRESETS

    p = sub.add_parser("dupes", help="groups of identical and near-duplicate images, with a suggested keeper each")
    opt.gallery(p)
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="near",
        help=(
            "threshold on the normalised score: "
            + ", ".join(f"{name} {value:g}" for name, value in PRESETS.items())
            + " (default near; measured by benchmarks/bench_dupes.py, see docs/benchmarks.md)"
        ),
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="a threshold in (0, 1] on the normalised score (1: the same vector); overrides --preset",
    )
    p.add_argument(
        "--method",
        choices=list(METHODS),
        default="auto",
        help="exact (numpy scan in blocks), ivf (FAISS range_search, pair recall stated), auto (exact up to 50k rows)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--against", default=None, help="another gallery of the same model: copies across the two")
    mode.add_argument(
        "--queries",
        action="store_true",
        help="check the held-out queries against the database (the study's leakage check)",
    )
    p.add_argument(
        "--no-check-files",
        action="store_true",
        help=(
            "skip the check that every file is as extracted (same size and mtime); for a collection moved elsewhere,"
            " whose embeddings still hold: the output names the files where they were"
        ),
    )
    p.add_argument("--out", default=None, help="write every group to FILE.json or FILE.csv (one row per member)")
    opt.threads(p)
    p.set_defaults(func=cmd_dupes)


def cmd_dupes(args: argparse.Namespace) -> int:
    from .. import runtime
    from ..gallery import open_gallery
    from ..search.dupes import find_duplicates

    runtime.set_threads(args.threads)
    gallery = open_gallery(args.gallery)
    against = open_gallery(args.against) if args.against else None
    preset = None if args.threshold is not None else args.preset
    report = find_duplicates(
        gallery, preset, args.threshold, args.method, against, args.queries, check_files=not args.no_check_files
    )
    print(report.summary())
    for number, group in enumerate(report.groups[:SHOWN_GROUPS]):
        print(f"group {number}: {len(group.members)} images, lowest pairwise score {group.min_similarity:.3f}")
        for m in group.members:
            where = f" [{m.gallery}]" if report.against else ""
            print(f"  {m.id:>8}  {m.score:7.3f}  {m.reason:<17}  {m.path}{where}")
    if len(report.groups) > SHOWN_GROUPS:
        print(f"… {len(report.groups) - SHOWN_GROUPS} more groups" + ("" if args.out else " (--out writes them all)"))
    if args.out:
        print(f"wrote {report.write(args.out)}")
    return 0
