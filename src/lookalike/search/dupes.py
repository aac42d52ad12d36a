"""Near-duplicate groups: which images of a gallery are copies of each other (issue 23).

Two tiers, strongest first:

1. **identical content**: rows whose files have the same sha256 (`Gallery.content_hashes`). A gallery
   extracted before that column existed skips this tier, and the report says so (`identical_tier`).
2. **similarity**: pairs whose *normalised score* (below) reaches the threshold, found by a range
   search over the gallery. `method="exact"` scans row blocks with numpy (memory bounded by
   `block_rows × N`, never N²); `method="ivf"` runs FAISS `range_search` on an IVF index for large
   galleries and states its pair recall against the exact scan, measured on a sample of rows.

**Scores mean the same on every gallery.** Raw cosine bunches near 1 for random-weight models and for
collections of one kind (every pair above 0.9), so no raw threshold works everywhere. The score is
cosine rescaled by the gallery's own neighbourhood statistic: b = the median, over rows, of each
row's cosine to its k-th nearest other row (`NEIGHBOUR_K`, on a seeded sample of at most
`BASELINE_SAMPLE_ROWS` rows, against every row), and

    score = (cosine − b) / (1 − b)

so 1 is the same vector, 0 is as alike as a typical k-th neighbour, and negative is less alike. It is
a monotone function of cosine, so one radius serves the range search. Identical content scores 1 by
definition. `DuplicateReport.scoring` records b, k and the sample.

**Groups do not chain.** Connected components would put A and C together when only A~B and B~C.
Groups are built by complete linkage at the threshold: pairs are taken in order of decreasing score
(identical content first), and two groups merge only if *every* pair across them scores at least the
threshold. So every pair inside a group reaches the threshold, and `min_similarity` (the lowest
pairwise score in the group) is never below it. An image joins at most one group.

**The suggested keeper** is, in order: the most pixels (metadata `width`×`height`, when the gallery has
them), the largest file (`size`), the oldest file (`mtime_ns`), the lowest id (this gallery before the
`against` one). Each member's score is against the keeper, with its reason: "keeper", "identical
content" (same sha256 as the keeper) or "similarity".

**Cross-set.** `against=OTHER` finds groups that join rows of this gallery to rows of another gallery
(same model and dimension); `queries_only=True` joins the gallery's held-out queries
(`Gallery.partition`) to its database: the leakage check. Only pairs across the two sets start a
group; the complete-linkage check still covers every pair inside it.

The presets are provisional: chosen by reasoning on the score's definition, not yet measured;
`benchmarks/bench_dupes.py` (issue 23) is to measure and replace them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LookalikeError

if TYPE_CHECKING:
    from ..gallery.store import Gallery

# provisional thresholds on the normalised score (see the module docstring): to be measured by bench_dupes
PRESETS = {"exact": 0.97, "near": 0.85, "similar": 0.6}
METHODS = ("auto", "exact", "ivf")
NEIGHBOUR_K = 10  # the baseline is each row's cosine to its 10th nearest other row
BASELINE_SAMPLE_ROWS = 2_000  # rows whose neighbourhoods give the baseline (all rows when fewer)
EXACT_MAX_ROWS = 50_000  # `auto` scans exactly up to this many rows, then uses an IVF index
BLOCK_BYTES = 128 * 2**20  # similarity block held at once by the exact scan
RECALL_SAMPLE_ROWS = 500  # rows whose pairs measure the IVF method's pair recall against exact
MIN_SCALE = 1e-6  # 1 − b below this (every vector the same) is clamped, so scores stay finite
WHY_KEEPER = "most pixels, then largest file, then oldest file (mtime), then lowest id"


class DuplicatesError(LookalikeError):
    """A duplicate search cannot run on the input given: an empty gallery, a bad threshold or preset, changed files."""


@dataclass(frozen=True)
class DuplicateMember:
    id: int  # row id in its gallery
    path: str
    score: float  # normalised score against the group's keeper (1 for the keeper itself)
    reason: str  # "keeper", "identical content" or "similarity"
    gallery: str  # the gallery folder this row belongs to (differs only with `against`)


@dataclass(frozen=True)
class DuplicateGroup:
    keep: int  # the suggested keeper's id (in `keep_gallery`)
    keep_gallery: str
    min_similarity: float  # the lowest normalised score between any two members
    members: tuple[DuplicateMember, ...]  # the keeper first, then by decreasing score


@dataclass(frozen=True)
class Scoring:
    """How scores were computed: the gallery statistic behind them (see the module docstring)."""

    baseline_cosine: float  # b: the median cosine of a row to its k-th nearest other row
    neighbour_k: int
    sample_rows: int  # rows whose k-th neighbour gave the median
    formula: str = "score = (cosine - b) / (1 - b); identical content scores 1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": self.formula,
            "baseline_cosine": round(self.baseline_cosine, 6),
            "neighbour_k": self.neighbour_k,
            "sample_rows": self.sample_rows,
        }


@dataclass(frozen=True)
class DuplicateReport:
    gallery: str
    provenance: str
    preset: str | None  # None when a threshold was given
    threshold: float  # on the normalised score
    scoring: Scoring
    method: str  # "exact" or "ivf"
    pair_recall: float | None  # the IVF method's recall of exact pairs on a sample; None for exact
    identical_tier: str  # "checked" or why it was skipped
    mode: str  # "all rows", "against OTHER", "held-out queries vs database"
    rows: int  # rows compared (both sides in a cross-set mode)
    groups: tuple[DuplicateGroup, ...]
    against: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def duplicate_count(self) -> int:
        """Members that are not their group's keeper: what removing the copies would remove."""
        return sum(len(g.members) - 1 for g in self.groups)

    def to_json(self) -> dict[str, Any]:
        """The documented output, as a JSON-ready dict (write it with json.dump or `write`)."""
        return {
            "gallery": self.gallery,
            "against": self.against,
            "provenance": self.provenance,
            "mode": self.mode,
            "preset": self.preset,
            "threshold": self.threshold,
            "scoring": self.scoring.to_dict(),
            "method": self.method,
            "pair_recall": self.pair_recall,
            "identical_tier": self.identical_tier,
            "keeper_rule": WHY_KEEPER,
            "rows": self.rows,
            "notes": list(self.notes),
            "groups": [
                {
                    "keep": g.keep,
                    "keep_gallery": g.keep_gallery,
                    "min_similarity": round(g.min_similarity, 6),
                    "members": [
                        {
                            "id": m.id,
                            "path": m.path,
                            "score": round(m.score, 6),
                            "reason": m.reason,
                            "gallery": m.gallery,
                        }
                        for m in g.members
                    ],
                }
                for g in self.groups
            ],
        }

    def to_csv(self) -> str:
        """One row per member: group number, whether it is the keeper, id, path, score, reason, gallery."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["group", "keep", "id", "path", "score", "reason", "gallery", "min_similarity"])
        for number, g in enumerate(self.groups):
            for m in g.members:
                is_keeper = m.id == g.keep and m.gallery == g.keep_gallery
                writer.writerow(
                    [
                        number,
                        int(is_keeper),
                        m.id,
                        m.path,
                        f"{m.score:.6f}",
                        m.reason,
                        m.gallery,
                        f"{g.min_similarity:.6f}",
                    ]
                )
        return out.getvalue()

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON or CSV, chosen by the file's suffix (.json or .csv), atomically."""
        from ..fileio import atomic_write_bytes, atomic_write_json

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            atomic_write_json(path, self.to_json())
        elif suffix == ".csv":
            atomic_write_bytes(path, self.to_csv().encode())
        else:
            raise DuplicatesError(f"cannot write duplicates to {path}: name a .json or .csv file")
        return path

    def summary(self) -> str:
        """A few lines for a terminal: provenance, how scores were computed, the counts."""
        lines = [
            self.provenance,
            f"duplicates ({self.mode}): {len(self.groups)} groups holding"
            f" {sum(len(g.members) for g in self.groups)} images ({self.duplicate_count} beside their keepers),"
            f" among {self.rows} rows",
            f"threshold {self.threshold:g} on the normalised score"
            + (f" (preset {self.preset})" if self.preset else "")
            + f"; baseline cosine b = {self.scoring.baseline_cosine:.4f} (median cosine to the"
            f" {self.scoring.neighbour_k}th nearest row); method {self.method}"
            + (
                f", pair recall {self.pair_recall:.3f} against exact on a sample"
                if self.pair_recall is not None
                else ""
            ),
            f"identical content: {self.identical_tier}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# --- the computation ---


def resolve_threshold(preset: str | None, threshold: float | None) -> tuple[str | None, float]:
    """The threshold on the normalised score: `threshold` when given (it overrides the preset), else the preset's."""
    if threshold is not None:
        value = float(threshold)
        if not np.isfinite(value) or not 0.0 < value <= 1.0:
            raise DuplicatesError(
                f"threshold {threshold} is outside (0, 1]: it is a normalised score (1 = the same vector, 0 = as"
                " alike as a typical 10th neighbour); pick one in that range or a preset (" + ", ".join(PRESETS) + ")"
            )
        return None, value
    preset = preset or "near"
    if preset not in PRESETS:
        raise DuplicatesError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or give a threshold")
    return preset, PRESETS[preset]


def changed_files(gallery: Gallery, rows: np.ndarray, limit: int = 3) -> tuple[int, list[str]]:
    """How many of `rows` have a file whose size or mtime differs from the gallery's record (gone counts), and a few.

    One stat per file (tens of ms for 20k files); rows written from arrays and galleries without
    stored stats are not checked.
    """
    from ..data.datasets import file_stat
    from ..gallery.generated import has_image_file

    stats = gallery.file_stats
    if stats is None:
        return 0, []
    sizes, mtimes = stats
    paths = gallery.paths
    count, examples = 0, []
    for row in rows:
        path = paths[row]
        if not has_image_file(path):
            continue
        if file_stat(path) != (int(sizes[row]), int(mtimes[row])):
            count += 1
            if len(examples) < limit:
                examples.append(path)
    return count, examples


def _check_unchanged(gallery: Gallery, rows: np.ndarray) -> None:
    count, examples = changed_files(gallery, rows)
    if count:
        raise DuplicatesError(
            f"gallery at {gallery.path}: {count} files changed or vanished since extraction (e.g. {examples[0]});"
            " run the same `lookalike extract` again to update the gallery first, or, if the collection only moved,"
            " skip this check (`lookalike dupes --no-check-files`, `check_files=False`)"
        )


def _blocks(n: int, other: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // (4 * max(other, 1)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def neighbour_baseline(
    queries: np.ndarray, database: np.ndarray, same_rows: bool, k: int = NEIGHBOUR_K, seed: int = 0
) -> Scoring:
    """b: the median over (a seeded sample of) `queries` of each one's cosine to its k-th nearest `database` row.

    `same_rows`: queries and database are the same rows, so a row's own match is left out.
    """
    n_q, n_db = len(queries), len(database)
    k = min(k, n_db - 1 if same_rows else n_db)
    if k < 1:  # one row: no neighbour to measure, so scores are plain cosines (and no pair exists anyway)
        return Scoring(0.0, 0, 0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_q, BASELINE_SAMPLE_ROWS, replace=False)) if n_q > BASELINE_SAMPLE_ROWS else None
    rows = np.arange(n_q) if sample is None else sample
    kth = np.empty(len(rows), dtype=np.float64)
    for start, stop in _blocks(len(rows), n_db):
        block = rows[start:stop]
        sims = np.asarray(queries[block], dtype=np.float32) @ np.asarray(database, dtype=np.float32).T
        if same_rows:
            sims[np.arange(len(block)), block] = -np.inf
        kth[start:stop] = np.partition(sims, -k, axis=1)[:, -k]
    return Scoring(float(np.median(kth)), k, len(rows))


def normalise(cosine: np.ndarray | float, scoring: Scoring) -> np.ndarray | float:
    scale = max(1.0 - scoring.baseline_cosine, MIN_SCALE)
    return (cosine - scoring.baseline_cosine) / scale


def raw_radius(threshold: float, scoring: Scoring) -> float:
    """The cosine a pair must reach for its normalised score to reach `threshold`."""
    return scoring.baseline_cosine + threshold * max(1.0 - scoring.baseline_cosine, MIN_SCALE)


def range_pairs_exact(
    queries: np.ndarray, database: np.ndarray, radius: float, same_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j, cosine) with cosine ≥ `radius`, by a numpy scan in row blocks (i < j when `same_rows`).

    Memory is one block of similarities (`BLOCK_BYTES`), whatever the gallery's size.
    """
    db = np.asarray(database, dtype=np.float32)
    found_i, found_j, found_s = [], [], []
    for start, stop in _blocks(len(queries), len(db)):
        first = start if same_rows else 0  # same rows: only the upper triangle, j > i (half the products)
        sims = np.asarray(queries[start:stop], dtype=np.float32) @ db[first:].T
        if same_rows:
            sims[np.tril_indices(stop - start, k=0, m=len(db) - first)] = -np.inf
        i, j = np.nonzero(sims >= radius)
        found_i.append(i + start)
        found_j.append(j + first)
        found_s.append(sims[i, j])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def range_pairs_ivf(
    queries: np.ndarray, database: np.ndarray, radius: float, same_rows: bool, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """The pairs of `range_pairs_exact` found by FAISS `range_search` on an IVF index, and their recall.

    nlist = round(√N), nprobe = 16 (at most nlist). Recall is the share of the exact pairs of a
    seeded sample of query rows (`RECALL_SAMPLE_ROWS`) that the index finds.
    """
    import faiss

    db = np.ascontiguousarray(database, dtype=np.float32)
    n, d = db.shape
    nlist = max(1, int(round(np.sqrt(n))))
    quantiser = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantiser, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = db[np.sort(rng.choice(n, min(n, 256 * nlist), replace=False))]
    index.cp.min_points_per_centroid = 1  # small galleries train on what they have, without FAISS's warning
    index.train(train)
    index.add(db)
    index.nprobe = min(16, nlist)
    found_i, found_j, found_s = [], [], []
    step = 10_000
    for start in range(0, len(queries), step):
        block = np.ascontiguousarray(queries[start : start + step], dtype=np.float32)
        lims, scores, ids = index.range_search(block, float(radius))
        rows = np.repeat(np.arange(len(block)), np.diff(lims.astype(np.int64))) + start
        ids = ids.astype(np.int64)
        keep = ids != rows if same_rows else np.ones(len(ids), dtype=bool)
        found_i.append(rows[keep])
        found_j.append(ids[keep])
        found_s.append(scores[keep])
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    if same_rows:  # a pair may be found from either end (IVF is not symmetric): keep it once, as i < j
        i, j = np.minimum(i, j), np.maximum(i, j)
        _, first = np.unique(i * n + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    pairs = (i, j, s)
    sample = np.sort(rng.choice(len(queries), min(len(queries), RECALL_SAMPLE_ROWS), replace=False))
    sims = np.asarray(queries[sample], dtype=np.float32) @ db.T
    exact = set()
    for a, row in enumerate(sample):
        for col in np.flatnonzero(sims[a] >= radius).tolist():
            if not same_rows:
                exact.add((int(row), col))
            elif col != row:
                exact.add((min(int(row), col), max(int(row), col)))
    in_sample = set(sample.tolist())
    got = {(a, b) for a, b in zip(i.tolist(), j.tolist()) if a in in_sample or (same_rows and b in in_sample)}
    recall = 1.0 if not exact else len(exact & got) / len(exact)
    return pairs, recall


@dataclass(frozen=True)
class _Side:
    """One set of rows being compared: a gallery and which of its rows."""

    gallery: Gallery
    rows: np.ndarray

    @property
    def name(self) -> str:
        return str(self.gallery.path)


def _keeper_key(side_index: int, side: _Side, row: int) -> tuple:
    meta = side.gallery.metadata
    names = meta.column_names
    pixels = 0
    if "width" in names and "height" in names:
        pixels = int(meta.column("width")[row].as_py() or 0) * int(meta.column("height")[row].as_py() or 0)
    stats = side.gallery.file_stats
    size, mtime = (int(stats[0][row]), int(stats[1][row])) if stats is not None else (0, 0)
    return (-pixels, -size, mtime if stats is not None else 0, side_index, row)


def find_duplicates(
    gallery: Gallery,
    preset: str | None = "near",
    threshold: float | None = None,
    method: str | None = None,
    against: Gallery | None = None,
    queries_only: bool = False,
    check_files: bool = True,
) -> DuplicateReport:
    """Groups of near-duplicate images in `gallery` (or across it and `against`, or its queries vs its database).

    See the module docstring for the tiers, the score, the grouping rule and the keeper. `threshold`
    (in (0, 1], on the normalised score) overrides `preset`; `method` is "exact", "ivf" or None/"auto"
    (exact up to EXACT_MAX_ROWS rows). `check_files` refuses a gallery whose files changed since
    extraction (one stat per file).
    """
    preset, threshold = resolve_threshold(preset, threshold)
    method = method or "auto"
    if method not in METHODS:
        raise DuplicatesError(f"unknown duplicate method {method!r}; choose one of {', '.join(METHODS)}")
    if gallery.count == 0:
        raise DuplicatesError(f"gallery at {gallery.path} is empty; extract a collection into it first")
    if against is not None and queries_only:
        raise DuplicatesError("choose one cross-set mode: --against OTHER or --queries, not both")
    notes: list[str] = []
    if against is not None:
        if against.count == 0:
            raise DuplicatesError(f"gallery at {against.path} is empty; extract a collection into it first")
        if Path(against.path).resolve() == Path(gallery.path).resolve():
            raise DuplicatesError(f"--against names {gallery.path} itself; run without --against to compare its rows")
        if (against.model, against.dim) != (gallery.model, gallery.dim):
            raise DuplicatesError(
                f"gallery at {against.path} was made with {against.model} ({against.dim}-d) and {gallery.path} with"
                f" {gallery.model} ({gallery.dim}-d); compare galleries of the same model"
            )
        if against.manifest.model.weights != gallery.manifest.model.weights:
            notes.append("the two galleries' model weights differ, so their embeddings may not be comparable")
        sides = (_Side(gallery, np.arange(gallery.count)), _Side(against, np.arange(against.count)))
        mode = f"against {against.path}"
    elif queries_only:
        part = gallery.partition()
        sides = (_Side(gallery, part.query_ids), _Side(gallery, part.database_ids))
        mode = f"held-out queries vs database ({part.how})"
        if part.duplicates:
            notes.append(
                f"the study's partition already leaves {part.duplicates} identical copies of queries out of its"
                " database; they are not counted here"
            )
    else:
        sides = (_Side(gallery, np.arange(gallery.count)),)
        mode = "all rows"
    if check_files:
        for side in sides:
            _check_unchanged(side.gallery, side.rows)

    cross = len(sides) == 2
    left, right = sides[0], sides[-1]
    left_vectors = left.gallery.embeddings
    right_vectors = right.gallery.embeddings
    if cross:
        left_vectors = np.asarray(left_vectors[left.rows])
        right_vectors = np.asarray(right_vectors[right.rows])
    scoring = neighbour_baseline(left_vectors, right_vectors, same_rows=not cross)
    radius = raw_radius(threshold, scoring)
    n_pairs_rows = max(len(left.rows), len(right.rows))
    chosen = ("exact" if n_pairs_rows <= EXACT_MAX_ROWS else "ivf") if method == "auto" else method
    recall = None
    if chosen == "exact":
        pi, pj, cosines = range_pairs_exact(left_vectors, right_vectors, radius, same_rows=not cross)
    else:
        (pi, pj, cosines), recall = range_pairs_ivf(left_vectors, right_vectors, radius, same_rows=not cross)

    # nodes: left positions 0..nL-1, then right positions (cross-set only)
    n_left = len(left.rows)
    offset = n_left if cross else 0
    n_nodes = n_left + (len(right.rows) if cross else 0)

    def node_side(node: int) -> tuple[int, _Side, int]:
        """(side index, side, gallery row) of a node."""
        if cross and node >= offset:
            return 1, right, int(right.rows[node - offset])
        return 0, left, int(left.rows[node])

    hashes_left = left.gallery.content_hashes
    hashes_right = right.gallery.content_hashes
    if hashes_left is None or hashes_right is None:
        identical_tier = "skipped: the gallery has no content hashes (extracted before they were stored)"
        node_hash: list[str | None] = [None] * n_nodes
    else:
        identical_tier = "checked (sha256 of each file)"
        node_hash = [hashes_left[r] or None for r in left.rows]
        if cross:
            node_hash += [hashes_right[r] or None for r in right.rows]

    edges: list[tuple[float, int, int]] = []
    # tier 1: identical content, as star edges scored 1 (complete linkage holds: equal hashes score 1)
    if hashes_left is not None and hashes_right is not None:
        by_hash: dict[str, list[int]] = {}
        for node, h in enumerate(node_hash):
            if h:
                by_hash.setdefault(h, []).append(node)
        for nodes in by_hash.values():
            if cross:
                lefts = [n for n in nodes if n < offset]
                rights = [n for n in nodes if n >= offset]
                edges += [(1.0, a, b) for a in lefts for b in rights]
            else:
                edges += [(1.0, nodes[0], other) for other in nodes[1:]]
    # tier 2: similarity
    scores = normalise(cosines.astype(np.float64), scoring)
    edges += [(float(s), int(i), int(j) + offset) for s, i, j in zip(scores, pi, pj)]
    edges.sort(key=lambda e: (-e[0], e[1], e[2]))

    vectors = np.asarray(left_vectors, dtype=np.float32)
    if cross:
        vectors = np.concatenate([vectors, np.asarray(right_vectors, dtype=np.float32)])

    def pair_scores(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
        s = normalise(vectors[list(a)] @ vectors[list(b)].T, scoring)
        ha = [node_hash[x] for x in a]
        hb = [node_hash[y] for y in b]
        same = np.array([[x is not None and x == y for y in hb] for x in ha], dtype=bool).reshape(s.shape)
        return np.where(same, 1.0, s)

    group_of: dict[int, list[int]] = {}
    for _, a, b in edges:
        ga, gb = group_of.get(a, [a]), group_of.get(b, [b])
        if ga is gb:
            continue
        if pair_scores(ga, gb).min() < threshold:
            continue  # complete linkage: one pair across the two groups is below the threshold
        merged = ga + gb
        for node in merged:
            group_of[node] = merged

    seen: set[int] = set()
    groups: list[DuplicateGroup] = []
    for members in group_of.values():
        if id(members) in seen:
            continue
        seen.add(id(members))
        keeper = min(members, key=lambda n: _keeper_key(*node_side(n)))
        inner = pair_scores(members, members)
        np.fill_diagonal(inner, np.inf)
        against_keeper = pair_scores([keeper], members)[0]
        rows = []
        for node, score in zip(members, against_keeper):
            _, side, row = node_side(node)
            if node == keeper:
                reason, score = "keeper", 1.0
            elif node_hash[node] is not None and node_hash[node] == node_hash[keeper]:
                reason = "identical content"
            else:
                reason = "similarity"
            rows.append(DuplicateMember(row, side.gallery.paths[row], float(score), reason, side.name))
        rows.sort(key=lambda m: (m.reason != "keeper", -m.score, m.gallery, m.id))
        _, keep_side, keep_row = node_side(keeper)
        groups.append(DuplicateGroup(keep_row, keep_side.name, float(inner.min()), tuple(rows)))
    groups.sort(key=lambda g: (-len(g.members), -g.min_similarity, g.keep_gallery, g.keep))
    return DuplicateReport(
        gallery=str(gallery.path),
        provenance=gallery.provenance(),
        preset=preset,
        threshold=threshold,
        scoring=scoring,
        method=chosen,
        pair_recall=recall,
        identical_tier=identical_tier,
        mode=mode,
        rows=n_nodes,
        groups=tuple(groups),
        against=str(against.path) if against is not None else None,
        notes=tuple(notes),
    )
