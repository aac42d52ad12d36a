"""Near-duplicate groups: which images of a gallery are copies of each other (issue 23).

Two tiers, strongest first:

1. **identical content**: rows whose files have the same sha256 (`Gallery.content_hashes`). A gallery
   extracted before that column existed skips this tier, and the report says so (`identical_tier`).
2. **similarity**: pairs whose *normalised score* (below) reaches the threshold, found among each
   row's nearest rows. `method="exact"` scans row blocks with numpy (memory: one block of
   similarities, `BLOCK_BYTES`, and N × k neighbours; never N²); `method="ivf"` searches an IVF index
   for large galleries and states its pair recall against the exact scan, measured on a sample of rows.

**Scores are relative to the gallery and to each image's own neighbourhood.** Raw cosine bunches near 1
for random-weight models and for collections of one kind (every pair above 0.9), a few directions
(overall colour and brightness) dominate it, and some images (flat drawings, plain backgrounds) sit
close to many others while textured photographs sit far from everything: neither a raw threshold nor
one gallery-wide baseline works everywhere. So, in two steps:

1. **Whitening.** The embeddings are centred on the mean of the set compared against, projected on its
   `WHITEN_DIMS` principal directions (fitted on a seeded sample of at most `WHITEN_SAMPLE_ROWS` rows),
   each scaled to unit spread, and L2-normalised; cosines are taken there. The common direction goes,
   no single direction dominates, and the weakest directions (mostly noise) are dropped. A set of fewer
   than `WHITEN_MIN_ROWS` rows cannot fit 64 directions, so its raw embeddings are used.
2. **The baseline.** Each row gets r = its cosine to its k-th nearest row (`NEIGHBOUR_K`) of the set it
   is compared with (itself left out), and a pair (i, j) scores

       score = (cosine − b) / (1 − b),   b = (r_i + r_j) / 2

   so 1 is the same vector and 0 is as alike as the two images' own k-th neighbours.

Identical content scores 1 by definition. `DuplicateReport.scoring` records the whitening, k and the
spread of r. Each step raised pairwise F1 (at each scoring's best threshold, no grouping) against raw
cosine with one gallery-wide b (the median r, k = 10), for ResNet-18 at random weights: on the 2,250
generated images of a mid-size `benchmarks/bench_dupes.py` run 0.59 → 0.81 (per-row b) → 0.87
(whitened too), and on 871 real pictures found on the measuring machine (three photographs cut into
tiles, icons, diagrams; same copies) 0.36 → 0.72 → 0.76; MobileNet and CLIP alike. The price of the
per-row baseline: k or more close copies of one image are each other's neighbourhood, so they score near 0
and are missed (identical files are still found by their hash); k = 20 is the trade measured there
(k = 10 scored a little higher on families of nine and missed bursts of ten or more).

**The search is a nearest-neighbour search.** A pair scoring t > 0 has cosine above b, so above the
smaller of its two r: it is among the k − 1 nearest rows of that row. So each row's k nearest are
found (exactly, or by IVF), r is the k-th, and the pairs among the k − 1 nearest whose score reaches
the threshold are kept: at most k − 1 per row, whatever the gallery's size.

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
group; the complete-linkage check still covers every pair inside it. The whitening is fitted on the
second set (the other gallery, or the database); each row's r is its k-th nearest in the other set,
and the nearest rows are searched in both directions.

**The presets** were chosen by `benchmarks/bench_dupes.py` (ResNet-18 at random weights, generated
copies; see `PRESETS`).
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

# thresholds on the normalised score (see the module docstring), measured by benchmarks/bench_dupes.py
# bench_dupes.py's rules: `near` the highest threshold within 0.02 F1 of the peak for every model (2026-12-05: 0.26
# for ResNet-18, 0.20 for MobileNet-V2 and CLIP, all random weights), `similar` about the F1 peak
PRESETS = {"exact": 0.9, "near": 0.2, "similar": 0.12}
METHODS = ("auto", "exact", "ivf")
WHITEN_DIMS = 64  # principal directions the scores are computed in (measured: 32, 96 and 128 gave lower F1)
WHITEN_MIN_ROWS = 512  # fewer rows: raw embeddings (measured: whitening lost F1 at 300 rows, gained from 600)
WHITEN_SAMPLE_ROWS = 20_000  # rows the principal directions are fitted on (all rows when fewer)
NEIGHBOUR_K = 20  # a row's r is its cosine to its 20th nearest row; pairs are searched among the 19 nearest
EXACT_MAX_ROWS = 50_000  # `auto` scans exactly up to this many rows, then uses an IVF index
BLOCK_BYTES = 128 * 2**20  # similarity block held at once by the exact scans
RECALL_SAMPLE_ROWS = 250  # rows whose exact pairs measure the IVF method's pair recall (each costs k exact searches)
MIN_SCALE = 1e-6  # 1 − b below this (a row whose k neighbours are all the same vector) is clamped: scores stay finite
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
    """How scores were computed: each compared row's neighbourhood statistic r (see the module docstring)."""

    baselines: np.ndarray = field(repr=False, compare=False)  # r of every compared row: this set's, then the other's
    neighbour_k: int
    whitened_dims: int  # principal directions the cosines are taken in; 0: raw embeddings (a small set)
    whitening_rows: int  # rows the whitening was fitted on (0: none)
    formula: str = "score = (cosine - b) / (1 - b), b = (r_i + r_j) / 2; identical content scores 1"

    @property
    def space(self) -> str:
        """Where cosines are taken, in words."""
        if not self.whitened_dims:
            return f"raw embeddings (fewer than {WHITEN_MIN_ROWS} rows: not whitened)"
        return (
            f"embeddings whitened to {self.whitened_dims} principal directions (fitted on {self.whitening_rows} rows)"
        )

    @property
    def median(self) -> float:
        return float(np.median(self.baselines)) if len(self.baselines) else 0.0

    def to_dict(self) -> dict[str, Any]:
        low, high = np.percentile(self.baselines, [5, 95]) if len(self.baselines) else (0.0, 0.0)
        return {
            "formula": self.formula,
            "whitened_dims": self.whitened_dims,
            "whitening_rows": self.whitening_rows,
            "neighbour_k": self.neighbour_k,
            "r_median": round(self.median, 6),
            "r_5th_percentile": round(float(low), 6),
            "r_95th_percentile": round(float(high), 6),
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
            + f"; b = the mean of the pair's r, each row's cosine to its {self.scoring.neighbour_k}th nearest row"
            f" (median r {self.scoring.median:.4f}); method {self.method}"
            + (
                f", pair recall {self.pair_recall:.3f} against exact on a sample"
                if self.pair_recall is not None
                else ""
            ),
            f"cosines of {self.scoring.space}",
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
                f" alike as the two images' {NEIGHBOUR_K}th neighbours); pick one in that range or a preset ("
                + ", ".join(PRESETS)
                + ")"
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


@dataclass(frozen=True)
class Whitening:
    """The space scores are computed in: centred, on the top principal directions each at unit spread, unit length."""

    mean: np.ndarray  # (d,)
    basis: np.ndarray  # (d, dims): principal directions divided by their singular values
    fitted_rows: int

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dims) float32 unit rows, computed in row blocks (a memory-mapped gallery is read once)."""
        out = np.empty((len(vectors), self.dims), dtype=np.float32)
        for start, stop in _blocks(len(vectors), vectors.shape[1]):
            z = (np.asarray(vectors[start:stop], dtype=np.float32) - self.mean) @ self.basis
            out[start:stop] = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), MIN_SCALE)
        return out


def fit_whitening(vectors: np.ndarray, seed: int = 0) -> Whitening | None:
    """The whitening of `vectors` (see the module docstring), fitted on a seeded sample; None below WHITEN_MIN_ROWS."""
    n = len(vectors)
    if n < WHITEN_MIN_ROWS:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, WHITEN_SAMPLE_ROWS, replace=False)) if n > WHITEN_SAMPLE_ROWS else np.arange(n)
    x = np.asarray(vectors[rows], dtype=np.float64)
    mean = x.mean(axis=0)
    x -= mean
    variance, directions = np.linalg.eigh(x.T @ x / len(x))  # d × d: seconds less than an SVD of the rows
    variance, directions = variance[::-1], directions[:, ::-1]  # largest first
    dims = min(WHITEN_DIMS, int(np.sum(variance > variance[0] * 1e-12)))  # directions with any spread at all
    basis = directions[:, :dims] / np.sqrt(variance[:dims])
    return Whitening(mean.astype(np.float32), basis.astype(np.float32), len(rows))


@dataclass(frozen=True)
class Neighbours:
    """Each row's k nearest rows of the other set, most similar first (itself left out when the sets are one)."""

    sims: np.ndarray  # (n, k) float32 cosines; −inf where an IVF search found fewer than k
    ids: np.ndarray  # (n, k) int64 positions in the other set; −1 where none was found

    @property
    def baselines(self) -> np.ndarray:
        """r: each row's cosine to its k-th nearest (−1 where fewer than k were found)."""
        return np.maximum(self.sims[:, -1], np.float32(-1.0))


def nearest_exact(queries: np.ndarray, database: np.ndarray, k: int, own: np.ndarray | None = None) -> Neighbours:
    """The k most similar `database` rows of every query, by a numpy scan in row blocks (memory: one block).

    `own`: the database row each query is (−1: none), left out of its own neighbours.
    """
    db = np.asarray(database, dtype=np.float32)
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for start, stop in _blocks(len(queries), len(db)):
        sims = np.asarray(queries[start:stop], dtype=np.float32) @ db.T
        if own is not None:
            inside = np.flatnonzero(own[start:stop] >= 0)
            sims[inside, own[start:stop][inside]] = -np.inf
        top = np.argpartition(sims, -k, axis=1)[:, -k:]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        ids_out[start:stop] = np.take_along_axis(top, order, axis=1)
        sims_out[start:stop] = np.take_along_axis(top_sims, order, axis=1)
    return Neighbours(sims_out, ids_out)


def ivf_index(database: np.ndarray, seed: int = 0):
    """A FAISS IVF-flat inner-product index over `database`: nlist = round(√N), nprobe = 16 (at most nlist)."""
    import faiss

    db = np.ascontiguousarray(database, dtype=np.float32)
    n, d = db.shape
    nlist = max(1, int(round(np.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    index.cp.min_points_per_centroid = 1  # small galleries train on what they have, without FAISS's warning
    index.train(db[np.sort(rng.choice(n, min(n, 256 * nlist), replace=False))])
    index.add(db)
    index.nprobe = min(16, nlist)
    return index


def nearest_ivf(index, queries: np.ndarray, k: int, own: np.ndarray | None = None) -> Neighbours:
    """`nearest_exact` answered by an IVF index (`ivf_index`), in blocks of queries."""
    wanted = min(k + (own is not None), index.ntotal)
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    step = 10_000
    for start in range(0, len(queries), step):
        block = np.ascontiguousarray(queries[start : start + step], dtype=np.float32)
        sims, ids = index.search(block, wanted)
        if own is not None:  # leave each row itself out, or its farthest neighbour when it was not found
            drop = ids == own[start : start + len(block), None]
            drop[~drop.any(axis=1), -1] = True
            sims, ids = sims[~drop].reshape(len(block), -1), ids[~drop].reshape(len(block), -1)
        sims_out[start : start + len(block)] = np.where(ids >= 0, sims[:, :k], -np.inf)
        ids_out[start : start + len(block)] = ids[:, :k]
    return Neighbours(sims_out, ids_out)


def normalise(cosine: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """The normalised score of pairs with these cosines and pair baselines b = (r_i + r_j) / 2."""
    return (cosine - b) / np.maximum(1.0 - b, MIN_SCALE)


def scored_pairs(
    neighbours: Neighbours, r_rows: np.ndarray, r_other: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, neighbour, cosine) of the pairs among each row's k − 1 nearest whose score reaches `threshold`.

    Enough: a pair scoring t > 0 has cosine above b ≥ the smaller of its two r, so it is among the
    k − 1 nearest of that row. Rows go in blocks, so memory stays a block's candidates.
    """
    take = neighbours.ids.shape[1] - 1
    found_i, found_j, found_s = [], [], []
    step = 100_000
    for start in range(0, len(neighbours.ids), step):
        ids = neighbours.ids[start : start + step, :take]
        i = np.repeat(np.arange(start, start + len(ids)), take)
        j, cos = ids.ravel(), neighbours.sims[start : start + step, :take].ravel()
        valid = j >= 0
        i, j, cos = i[valid], j[valid], cos[valid]
        keep = normalise(cos.astype(np.float64), (r_rows[i].astype(np.float64) + r_other[j]) / 2) >= threshold
        found_i.append(i[keep])
        found_j.append(j[keep])
        found_s.append(cos[keep])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


@dataclass(frozen=True)
class Pairs:
    """What the search found: the pairs reaching the threshold, and every compared row's r."""

    i: np.ndarray  # row in the first set
    j: np.ndarray  # row in the second set (i < j when the sets are one)
    cosine: np.ndarray
    r_left: np.ndarray
    r_right: np.ndarray
    k: int
    recall: float | None  # the IVF method's recall of exact pairs on a sample; None for exact


def find_pairs(
    left: np.ndarray, right: np.ndarray, threshold: float, same_rows: bool, method: str, seed: int = 0
) -> Pairs:
    """Every pair (left row, right row) whose normalised score reaches `threshold` (see the module docstring).

    `method` "exact" (numpy scans) or "ivf" (FAISS IVF searches, with their recall on a sample).
    Across two sets, each side's k nearest are searched in the other (both directions), so a pair is
    found from whichever of its rows has the lower r.
    """
    k = min(NEIGHBOUR_K, len(right) - 1 if same_rows else min(len(right), len(left)))
    if k < 1:  # one row, or one on a side: no neighbour to measure, and no pair to find
        empty = np.empty(0, np.int64)
        return Pairs(empty, empty, np.empty(0, np.float32), np.zeros(len(left)), np.zeros(len(right)), 0, None)
    own = np.arange(len(left)) if same_rows else None
    if method == "exact":
        forward = nearest_exact(left, right, k, own)
        backward = None if same_rows else nearest_exact(right, left, k)
    else:
        forward = nearest_ivf(ivf_index(right, seed), left, k, own)
        backward = None if same_rows else nearest_ivf(ivf_index(left, seed), right, k)
    r_left = forward.baselines
    r_right = r_left if same_rows else backward.baselines
    i, j, cos = scored_pairs(forward, r_left, r_right, threshold)
    if backward is not None:
        bj, bi, bcos = scored_pairs(backward, r_right, r_left, threshold)
        i, j, cos = np.concatenate([i, bi]), np.concatenate([j, bj]), np.concatenate([cos, bcos])
    if same_rows:
        i, j = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(i * len(right) + j, return_index=True)  # a pair found from both ends counts once
    i, j, cos = i[first], j[first], cos[first]
    recall = None
    if method != "exact":
        recall = _ivf_recall(left, right, (i, j), threshold, same_rows, k, seed)
    return Pairs(i, j, cos, r_left, r_right, k, recall)


def _ivf_recall(
    left: np.ndarray,
    right: np.ndarray,
    found: tuple[np.ndarray, np.ndarray],
    threshold: float,
    same_rows: bool,
    k: int,
    seed: int,
) -> float:
    """The share of exact pairs the IVF search found, on a seeded sample of `RECALL_SAMPLE_ROWS` left rows: each
    sampled row's exact k − 1 nearest, scored with the exact r of both rows."""
    rng = np.random.default_rng([seed, 1])
    sample = np.sort(rng.choice(len(left), min(len(left), RECALL_SAMPLE_ROWS), replace=False))
    exact = nearest_exact(np.asarray(left[sample]), right, k, sample if same_rows else None)
    partners = np.unique(exact.ids[:, : k - 1])
    if same_rows:
        r_partners = nearest_exact(np.asarray(right[partners]), right, k, partners).baselines
    else:
        r_partners = nearest_exact(np.asarray(right[partners]), left, k).baselines
    r_of = np.zeros(len(right), dtype=np.float32)
    r_of[partners] = r_partners
    rows, cols, _ = scored_pairs(exact, exact.baselines, r_of, threshold)
    rows = sample[rows]
    if same_rows:
        rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
    expected = set(zip(rows.tolist(), cols.tolist()))
    if not expected:
        return 1.0
    got = set(zip(found[0].tolist(), found[1].tolist()))
    return len(expected & got) / len(expected)


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
    # whitened on the second set (the gallery itself when comparing its own rows)
    whitening = fit_whitening(right_vectors)
    if whitening is not None:
        left_vectors = whitening.apply(left_vectors)
        right_vectors = whitening.apply(right_vectors) if cross else left_vectors
    n_pairs_rows = max(len(left.rows), len(right.rows))
    chosen = ("exact" if n_pairs_rows <= EXACT_MAX_ROWS else "ivf") if method == "auto" else method
    found = find_pairs(left_vectors, right_vectors, threshold, not cross, chosen)
    pi, pj, cosines, recall = found.i, found.j, found.cosine, found.recall
    scoring = Scoring(
        np.concatenate([found.r_left, found.r_right]) if cross else found.r_left,
        found.k,
        whitening.dims if whitening else 0,
        whitening.fitted_rows if whitening else 0,
    )

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
    node_r = scoring.baselines.astype(np.float64)  # r of each node, in node order
    scores = normalise(cosines.astype(np.float64), (node_r[pi] + node_r[pj + offset]) / 2)
    edges += [(float(s), int(i), int(j) + offset) for s, i, j in zip(scores, pi, pj)]
    edges.sort(key=lambda e: (-e[0], e[1], e[2]))

    vectors = np.asarray(left_vectors, dtype=np.float32)
    if cross:
        vectors = np.concatenate([vectors, np.asarray(right_vectors, dtype=np.float32)])

    def pair_scores(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
        s = normalise(vectors[list(a)] @ vectors[list(b)].T, (node_r[list(a)][:, None] + node_r[list(b)][None, :]) / 2)
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
