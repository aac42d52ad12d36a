"""The study's leakage check (issue 23): held-out queries that have a copy in the database.

A held-out query whose copy sits in the database finds that copy among its nearest neighbours,
with the query's own label: precision@k then counts a copy of the query as a correct answer, and
the study's figures measure memory rather than search. Two tiers, as `search.dupes` has them:

- **identical content** (same sha256): `Gallery.partition` already leaves such database rows out,
  so they do not inflate the figures; they are counted so the reader knows the collection holds them.
- **similarity** (normalised score at least LEAKAGE_THRESHOLD): near-copies
  (re-encoded, resized, lightly edited) stay in the database and do inflate precision@k.

It runs on the embeddings the study measures, so a gallery whose files changed since extraction is
checked as it is, not refused.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..gallery import Gallery
from ..search.dupes import find_duplicates

# Leakage is a query whose very picture is in the database: re-encoded, resized, re-saved. Stricter than the `exact`
# preset, because queries are scored against the database's neighbourhoods: on the tests' generated drawings,
# re-encoded copies scored 0.985–0.997 there while different drawings of one class reached 0.94.
LEAKAGE_THRESHOLD = 0.95

EXAMPLES = 3  # pairs shown per split and tier
WHY = (
    "A held-out query with a copy in the database finds it among its nearest neighbours, with its own label, so"
    " precision@k counts the copy as a correct answer and comes out too high."
)


@dataclass(frozen=True)
class LeakPair:
    query: str  # paths relative to the collection
    database: str
    score: float  # normalised score (1 for identical content)


@dataclass(frozen=True)
class SplitLeakage:
    """The held-out queries of one split and how many of them have a copy in the database, by tier."""

    split: str
    queries: int
    identical: int | None  # queries with a byte-identical copy (left out of the database); None: no content hashes
    similar: int  # queries with a near-copy that stays in the database
    identical_examples: tuple[LeakPair, ...]
    similar_examples: tuple[LeakPair, ...]


@dataclass(frozen=True)
class Leakage:
    gallery: str
    partition: str  # Partition.how: which rows are queries, which the database
    preset: str | None
    threshold: float
    identical_tier: str  # "checked (sha256 of each file)" or why it was skipped
    splits: tuple[SplitLeakage, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gallery": self.gallery,
            "partition": self.partition,
            "preset": self.preset,
            "threshold": self.threshold,
            "identical_tier": self.identical_tier,
            "splits": [
                {
                    "split": s.split,
                    "queries": s.queries,
                    "identical": s.identical,
                    "similar": s.similar,
                    "identical_examples": [vars(p) for p in s.identical_examples],
                    "similar_examples": [vars(p) for p in s.similar_examples],
                }
                for s in self.splits
            ],
        }


def check_leakage(gallery: Gallery, examples: int = EXAMPLES) -> Leakage:
    """Per split of the held-out queries: how many have an identical copy or a near-copy in the database, with examples.

    Near-copies come from `find_duplicates(..., queries_only=True)` at LEAKAGE_THRESHOLD; identical
    copies from the rows the partition left out of the database (`Partition.copy_ids`).
    """
    part = gallery.partition()
    report = find_duplicates(gallery, None, LEAKAGE_THRESHOLD, queries_only=True, check_files=False)
    show = gallery.manifest.data.shown_path
    paths, splits = gallery.paths, gallery.splits
    queries = set(part.query_ids.tolist())

    near: dict[int, LeakPair] = {}  # query row → the database member of its group it is scored against
    for group in report.groups:
        members = {m.id: m for m in group.members}
        database = [m for m in group.members if m.id not in queries]
        for q in (r for r in members if r in queries):
            if group.keep in queries:  # the query keeps: its nearest copy is the database member scored highest
                best = max(database, key=lambda m: m.score)
                score = best.score
            else:  # a database row keeps: the query's own score is against it
                best, score = members[group.keep], members[q].score
            near[q] = LeakPair(show(paths[q]), show(paths[best.id]), float(score))

    identical: dict[int, LeakPair] | None = None
    hashes = gallery.content_hashes
    if hashes is not None:
        by_hash: dict[str, list[int]] = defaultdict(list)
        for q in part.query_ids.tolist():
            if hashes[q]:
                by_hash[hashes[q]].append(q)
        identical = {}
        for c in part.copy_ids.tolist():  # set whenever the gallery has content hashes
            for q in by_hash.get(hashes[c], []):
                identical.setdefault(q, LeakPair(show(paths[q]), show(paths[c]), 1.0))

    by_split: dict[str, list[int]] = defaultdict(list)
    for q in part.query_ids.tolist():
        by_split[splits[q] or "(none)"].append(q)
    per_split = []
    for split, members in sorted(by_split.items()):
        similar = [near[q] for q in members if q in near]
        same = None if identical is None else [identical[q] for q in members if q in identical]
        per_split.append(
            SplitLeakage(
                split,
                len(members),
                None if same is None else len(same),
                len(similar),
                tuple(same[:examples]) if same else (),
                tuple(sorted(similar, key=lambda p: -p.score)[:examples]),
            )
        )
    return Leakage(
        gallery=str(gallery.path),
        partition=part.how,
        preset=report.preset,
        threshold=report.threshold,
        identical_tier=report.identical_tier,
        splits=tuple(per_split),
    )


def leakage_markdown(leaks: list[Leakage]) -> list[str]:
    """The report's section: a table of counts per gallery and split, a few example pairs, and why it matters."""
    first = leaks[0]  # every gallery is checked at LEAKAGE_THRESHOLD
    threshold = f"score ≥ {first.threshold:g}" + (f", preset {first.preset}" if first.preset else "")
    lines = [
        "## Leakage: held-out queries with a copy in the database",
        "",
        WHY + " Identical files are already left out of the study's database (`Gallery.partition`), so they do not"
        " inflate the figures above; near-copies stay in it and do. `lookalike dupes --gallery G --queries` lists"
        " every pair.",
        "",
        f"| gallery | queries | identical content (left out) | near-copy in the database ({threshold}) |",
        "|---|---|---:|---:|",
    ]
    for leak in leaks:
        for s in leak.splits:
            same = "skipped (no content hashes)" if s.identical is None else f"{s.identical} of {s.queries}"
            lines.append(f"| `{leak.gallery}` | {s.split} ({s.queries}) | {same} | {s.similar} of {s.queries} |")
    lines += [""]
    for leak in leaks:
        lines.append(f"- `{leak.gallery}`: {leak.partition}.")
        for s in leak.splits:
            for tier, pairs in (("identical", s.identical_examples), ("near-copy", s.similar_examples)):
                for p in pairs:
                    lines.append(f"  - {s.split}, {tier}: `{p.query}` ↔ `{p.database}` (score {p.score:.3f})")
    return lines + [""]
