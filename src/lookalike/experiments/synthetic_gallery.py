"""Galleries made from arrays: a fitted model of real embeddings, generated clustered embeddings, and a writer.

Why: the scale experiment needs galleries larger than the images we have, and benchmarks need
galleries of the real sizes (100k, 1M) without extracting a million images. Both are built
from one generative model, a mixture of low-rank Gaussians on the unit sphere:

    row = normalise(mean_c + U_c · (z ⊙ scale_c) + noise_std_c · e),   z, e ~ N(0, I)

with cluster c drawn by its weight. `fit_cluster_model` estimates it from real embeddings
(spherical k-means for the clusters, probabilistic PCA for each cluster's spread), so the
cluster structure and the intrinsic dimension of the real data are kept; it is neither
uniform noise nor a copy of real vectors. `make_clustered_embeddings` draws a random model
instead, for benchmarks on GENERATED data. `write_array_gallery` stores any such array as a
normal gallery folder whose manifest says, row range by row range, what is real and what is not.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .. import runtime
from ..errors import GalleryError, LookalikeError
from ..gallery import (
    EMBEDDINGS,
    MANIFEST,
    METADATA,
    METADATA_SCHEMA,
    SCHEMA_VERSION,
    Gallery,
    atomic_save_npy,
    atomic_write_json,
    atomic_write_parquet,
    clear_gallery,
    open_gallery,
)

GENERATOR = "lookalike.experiments.synthetic_gallery"
SYNTHETIC_PATH_PREFIX = "synthetic:"  # metadata `path` of every row that is not a real image
MAX_CLUSTERS = 256
ROWS_PER_CLUSTER = 40  # k-means wants tens of points per centroid; PPCA wants more rows than its rank
DEFAULT_RANK = 32  # principal directions kept per cluster; the rest of the spread is isotropic
MAX_FIT_ROWS = 100_000  # a seeded sample this large fits 256 clusters well; more only costs time
MAX_ROWS_PER_CLUSTER_PCA = 512  # enough to estimate 32 directions; keeps the n×n eigh cheap
MIN_ROWS_FOR_PCA = 3
SAMPLE_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class ClusterModel:
    """A mixture of low-rank Gaussians whose samples are L2-normalised (see the module docstring)."""

    centroids: np.ndarray  # (c, d) float32 cluster means, inside the unit ball
    weights: np.ndarray  # (c,) float64 share of rows drawn from each cluster; sums to 1
    bases: np.ndarray  # (c, d, r) float32 orthonormal principal directions (zero columns where a cluster has fewer)
    scales: np.ndarray  # (c, r) float32 standard deviation along each direction, on top of the noise
    noise_std: np.ndarray  # (c,) float32 isotropic standard deviation in every direction (PPCA's σ)
    labels: tuple[str | None, ...]  # the label given to rows drawn from each cluster
    how: dict = field(default_factory=dict)  # JSON-ready: what was fitted or drawn, on what, with which seed

    @property
    def n_clusters(self) -> int:
        return int(len(self.centroids))

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` new unit vectors (n, d) float32 and the cluster each came from (n,) int32."""
        out = np.empty((n, self.dim), dtype=np.float32)
        return out, self.sample_into(out, seed)

    def sample_into(self, out: np.ndarray, seed: int = 0) -> np.ndarray:
        """Fill `out` (n, d) in place — no second copy of a 1M-row array — and return the cluster ids.

        Clusters are drawn row by row, so any prefix of `out` is itself a fair sample.
        """
        n = len(out)
        rng = np.random.default_rng(seed)
        clusters = rng.choice(self.n_clusters, size=n, p=self.weights).astype(np.int32)
        order = np.argsort(clusters, kind="stable")
        bounds = np.searchsorted(clusters[order], np.arange(self.n_clusters + 1))
        for c in range(self.n_clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            for start in range(0, len(rows), SAMPLE_BLOCK_ROWS):
                block = rows[start : start + SAMPLE_BLOCK_ROWS]
                x = rng.standard_normal((len(block), self.dim), dtype=np.float32)
                x *= self.noise_std[c]
                x += self.centroids[c]
                z = rng.standard_normal((len(block), self.scales.shape[1]), dtype=np.float32)
                x += (z * self.scales[c]) @ self.bases[c].T
                x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
                out[block] = x
        return clusters

    def describe(self) -> dict:
        return dict(self.how)


# --- fitting a model of real embeddings ---


def default_clusters(n: int) -> int:
    """About ROWS_PER_CLUSTER rows per cluster, at most MAX_CLUSTERS (fitted on at most MAX_FIT_ROWS rows)."""
    return int(np.clip(n // ROWS_PER_CLUSTER, 1, MAX_CLUSTERS))


def fit_cluster_model(
    embeddings: np.ndarray,
    labels: Sequence[Any] | None = None,
    n_clusters: int | None = None,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    max_fit_rows: int = MAX_FIT_ROWS,
) -> ClusterModel:
    """Fit clusters (spherical k-means, faiss.Kmeans) and each cluster's spread (PPCA) to real unit vectors.

    PPCA keeps the top `rank` principal directions of each cluster with their variances and
    spreads the remaining variance evenly over all directions, so a cluster's total variance
    (hence typical distances) and its dominant low-dimensional shape are both kept. Rows drawn
    from a cluster get the majority label of its real members (None where none is labelled).
    """
    import faiss

    n_all, d = embeddings.shape
    if n_all < 2:
        raise LookalikeError(f"cannot fit a model of the embeddings from {n_all} row(s); the gallery needs at least 2 searchable images")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_all, max_fit_rows, replace=False)) if n_all > max_fit_rows else np.arange(n_all)
    x = runtime.as_float32_c(np.asarray(embeddings[rows]))
    fit_labels = None if labels is None else np.asarray(labels, dtype=object)[rows]
    c = min(n_clusters or default_clusters(len(x)), len(x))
    kmeans = faiss.Kmeans(d, c, niter=20, seed=seed, spherical=True, max_points_per_centroid=256, verbose=False)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    assign = assign[:, 0]

    pooled_var = float(((x - x.mean(axis=0)) ** 2).sum() / max(1, len(x) - 1)) / d
    kept = [j for j in range(c) if np.any(assign == j)]
    centroids = np.zeros((len(kept), d), np.float32)
    bases = np.zeros((len(kept), d, rank), np.float32)
    scales = np.zeros((len(kept), rank), np.float32)
    noise = np.zeros(len(kept), np.float32)
    weights = np.zeros(len(kept), np.float64)
    cluster_labels: list[str | None] = []
    explained, purity, within_var = [], [], []
    for i, j in enumerate(kept):
        members = np.flatnonzero(assign == j)
        weights[i] = len(members)
        xm = x[members]
        centroids[i] = xm.mean(axis=0)
        if len(members) >= MIN_ROWS_FOR_PCA:
            if len(members) > MAX_ROWS_PER_CLUSTER_PCA:
                xm = xm[np.sort(rng.choice(len(members), MAX_ROWS_PER_CLUSTER_PCA, replace=False))]
            eig, vt = _principal_axes((xm - centroids[i]).astype(np.float64))
            total = float(eig.sum())
            # keep at most half the rows' worth of directions, so PPCA still sees spread beyond them
            r = min(rank, (len(xm) - 1) // 2, d - 1)
            sigma2 = max(total - float(eig[:r].sum()), 0.0) / (d - r)
            bases[i, :, :r] = vt[:r].T
            scales[i, :r] = np.sqrt(np.maximum(eig[:r] - sigma2, 0.0))
            noise[i] = math.sqrt(sigma2)
            explained.append(float(eig[:r].sum()) / total if total > 0 else 0.0)
            within_var.append(total)
        else:  # too few rows to estimate a shape: isotropic spread of the whole sample, never a copy
            noise[i] = math.sqrt(pooled_var)
        label, share = _majority(fit_labels[members]) if fit_labels is not None else (None, 0.0)
        cluster_labels.append(label)
        purity.append(share)
    weights /= weights.sum()
    how = {
        "generator": GENERATOR,
        "method": "fit: spherical k-means (faiss.Kmeans) + per-cluster probabilistic PCA; sample: Gaussian per cluster, L2-normalised",
        "fitted_rows": int(len(x)),
        "fitted_from_rows": int(n_all),
        "clusters": int(len(kept)),
        "rank": int(rank),
        "seed": int(seed),
        "explained_variance_share": round(float(np.mean(explained)), 4) if explained else None,
        "mean_within_cluster_variance": round(float(np.mean(within_var)), 5) if within_var else None,
        "label_rule": "majority label of the cluster's real members (None if none is labelled)",
        "label_purity": round(float(np.average(purity, weights=weights)), 4) if fit_labels is not None else None,
        "copies_real_vectors": False,
    }
    return ClusterModel(centroids, weights, bases, scales, noise, tuple(cluster_labels), how)


def _principal_axes(resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance eigenvalues (descending) and unit eigenvectors (rows) of centred rows, via the small Gram matrix.

    With n ≤ d rows, eigh of the n×n Gram matrix is several times faster than an SVD, and the
    eigenvectors in feature space are Rᵀu/‖Rᵀu‖; the eigenvalues are the same.
    """
    values, vectors = np.linalg.eigh(resid @ resid.T)
    order = np.argsort(values)[::-1]
    values = np.maximum(values[order], 0.0)
    axes = (resid.T @ vectors[:, order]).T
    axes /= np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
    return values / (len(resid) - 1), axes


def _majority(labels: np.ndarray) -> tuple[str | None, float]:
    counts = Counter(label for label in labels.tolist() if label is not None)
    if not counts:
        return None, 0.0
    label, count = counts.most_common(1)[0]
    return label, count / len(labels)


# --- generated (not fitted) embeddings, for benchmarks ---


def make_clustered_embeddings(
    n: int,
    d: int,
    n_clusters: int = 1000,
    rank: int = 16,
    centroid_norm: float = 0.8,
    shared_direction: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """GENERATED unit vectors (n, d) float32 with cluster structure, and their labels ("g0000" …) as an object array.

    No model and no image is involved: a random ClusterModel is drawn and sampled. Each cluster
    mean has norm `centroid_norm` (rows sit about that cosine from their cluster's direction),
    cluster directions share a common component of weight `shared_direction` (so clusters are
    not all orthogonal, as with real CNN features), and the within-cluster variance lies mostly
    (80%) in a `rank`-dimensional subspace with decaying scales, the rest isotropic.
    """
    model = random_cluster_model(d, n_clusters, rank, centroid_norm, shared_direction, seed)
    embeddings, clusters = model.sample(n, seed + 1)
    names = np.asarray(model.labels, dtype=object)
    return embeddings, names[clusters]


def random_cluster_model(
    d: int, n_clusters: int = 1000, rank: int = 16, centroid_norm: float = 0.8, shared_direction: float = 0.3, seed: int = 0
) -> ClusterModel:
    """The random mixture behind `make_clustered_embeddings` (see there for the parameters)."""
    if not (0 < centroid_norm < 1 and 0 <= shared_direction < 1 and 0 < rank < d and n_clusters >= 1):
        raise LookalikeError("make_clustered_embeddings needs 0 < centroid_norm < 1, 0 ≤ shared_direction < 1, 0 < rank < d and n_clusters ≥ 1")
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal(d))
    directions = _unit(shared_direction * common + math.sqrt(1 - shared_direction**2) * _unit(rng.standard_normal((n_clusters, d))))
    centroids = (centroid_norm * directions).astype(np.float32)
    spread = 1.0 - centroid_norm**2  # total within-cluster variance, so rows have norm ≈ 1 before normalising
    decay = 1.0 / np.sqrt(np.arange(1, rank + 1))
    variances = 0.8 * spread * decay**2 / (decay**2).sum()
    bases = np.stack([np.linalg.qr(rng.standard_normal((d, rank)))[0] for _ in range(n_clusters)]).astype(np.float32)
    scales = np.tile(np.sqrt(variances), (n_clusters, 1)).astype(np.float32)
    noise = np.full(n_clusters, math.sqrt(0.2 * spread / d), np.float32)
    how = {
        "generator": GENERATOR,
        "method": "make_clustered_embeddings: random mixture of low-rank Gaussians, L2-normalised (GENERATED, no model, no images)",
        "clusters": n_clusters,
        "rank": rank,
        "centroid_norm": centroid_norm,
        "shared_direction": shared_direction,
        "seed": seed,
    }
    return ClusterModel(centroids, np.full(n_clusters, 1.0 / n_clusters), bases, scales, noise, tuple(f"g{j:04d}" for j in range(n_clusters)), how)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- how close a sample is to the real one ---


@dataclass(frozen=True)
class NeighbourStats:
    """Distances (1 − cosine) that decide search results, for comparing a synthetic sample with a real one."""

    rows: int  # size of the set searched
    queries: int
    query_knn_distance_median: float  # median over queries of the distance to their k-th nearest row
    query_nn_distance_median: float  # … to their nearest row
    within_nn_distance_median: float  # median distance from a row to its nearest other row of the same set
    two_nn_dimension: float  # intrinsic dimension by the TwoNN estimator (Facco et al. 2017) within the set

    def to_dict(self) -> dict:
        return asdict(self)


def neighbour_stats(rows: np.ndarray, queries: np.ndarray, k: int = 10) -> NeighbourStats:
    """Nearest-neighbour statistics of `rows`, seen from held-out `queries` and from within."""
    import faiss

    rows = runtime.as_float32_c(np.asarray(rows))
    queries = runtime.as_float32_c(np.asarray(queries))
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    kk = min(k, len(rows))
    sims, _ = index.search(queries, kk)
    own, _ = index.search(rows, min(3, len(rows)))  # column 0 is the row itself
    r1 = np.maximum(1.0 - own[:, 1], 0.0)
    r2 = np.maximum(1.0 - own[:, 2], 0.0) if own.shape[1] > 2 else r1
    ok = r1 > 1e-9
    mu = np.sqrt(r2[ok] / r1[ok])  # ratio of Euclidean distances (‖a−b‖² = 2(1 − cos))
    mu = mu[mu > 1.0]
    dim = float(len(mu) / np.log(mu).sum()) if len(mu) else float("nan")
    return NeighbourStats(
        rows=int(len(rows)),
        queries=int(len(queries)),
        query_knn_distance_median=float(np.median(1.0 - sims[:, kk - 1])),
        query_nn_distance_median=float(np.median(1.0 - sims[:, 0])),
        within_nn_distance_median=float(np.median(r1)),
        two_nn_dimension=round(dim, 2),
    )


# --- writing a gallery folder from arrays ---


@dataclass(frozen=True)
class Segment:
    """A contiguous run of gallery rows [start, stop) and what made them; the manifest lists them all."""

    source: str  # "gallery", "extra-embeddings", "synthetic", "generated", …
    start: int
    stop: int
    synthetic: bool  # True when the rows are not embeddings of real images
    how: str  # one line a reader can understand
    details: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.stop - self.start


def generated_model_block(dim: int, seed: int) -> dict:
    """The manifest `model` block of a gallery whose embeddings no model produced."""
    return {
        "model": "generated",
        "arch": None,
        "family": GENERATOR,
        "dim": int(dim),
        "weights": {"kind": "none", "source": "no model: embeddings generated, not extracted from images", "sha256": None, "seed": seed},
        "preprocess": None,
        "device": None,
        "precision": {"precision": "fp32"},
    }


def write_array_gallery(
    path: str | Path,
    embeddings: np.ndarray,
    labels: Sequence[Any] | None = None,
    splits: Sequence[str] | None = None,
    *,
    segments: Sequence[Segment],
    model: dict,
    data: dict | None = None,
    paths: Sequence[str] | None = None,
    label_names: Sequence[str | None] | None = None,
    timings: dict | None = None,
    overwrite: bool = False,
) -> Gallery:
    """Write a gallery folder (the layout `lookalike.extract.commit` writes) from arrays, manifest last.

    `segments` must cover every row exactly once; rows of synthetic segments get paths
    "synthetic:<source>/<row>" unless `paths` is given, and the manifest's `data` block records
    every segment, so `is_real` is False and `provenance()` names the synthetic share.
    `model` is the manifest `model` block: the source gallery's, or `generated_model_block`.
    """
    path = Path(path)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise LookalikeError(f"write_array_gallery wants an (N, d) float32 array, got {embeddings.shape} {embeddings.dtype}")
    n, d = embeddings.shape
    _check_segments(segments, n)
    if int(model.get("dim", d)) != d:
        raise LookalikeError(f"the model block says {model.get('dim')}-d but the embeddings are {d}-d")
    labels = [None] * n if labels is None else [None if v is None else str(v) for v in labels]
    splits = ["train"] * n if splits is None else [str(s) for s in splits]
    label_names = [None] * n if label_names is None else list(label_names)
    if paths is None:
        paths = [f"{SYNTHETIC_PATH_PREFIX if s.synthetic else 'array:'}{s.source}/{i}" for s in segments for i in range(s.start, s.stop)]
    if not (len(labels) == len(splits) == len(label_names) == len(paths) == n):
        raise LookalikeError(f"{n} embeddings but {len(labels)} labels, {len(splits)} splits, {len(label_names)} label names and {len(paths)} paths")
    if (path / MANIFEST).is_file() and not overwrite:
        raise GalleryError(f"{path} already holds a gallery; use another folder or pass overwrite=True")
    clear_gallery(path) if path.exists() else path.mkdir(parents=True)
    table = pa.Table.from_pydict(
        {"id": np.arange(n, dtype=np.int64), "path": list(paths), "label": labels, "label_name": label_names, "split": splits},
        schema=METADATA_SCHEMA,
    )
    atomic_save_npy(path / EMBEDDINGS, embeddings)
    atomic_write_parquet(path / METADATA, table)
    synthetic_rows = sum(s.count for s in segments if s.synthetic)
    digest = hashlib.sha256("\n".join(f"{p}\t{l}\t{s}" for p, l, s in zip(paths, labels, splits)).encode()).hexdigest()
    data_block = {
        "kind": "arrays",
        "root": None,
        **(data or {}),
        "count": n,
        "synthetic": synthetic_rows > 0 or bool((data or {}).get("synthetic")),
        "synthetic_rows": synthetic_rows,
        "segments": [asdict(s) for s in segments],
        "splits": dict(Counter(splits)),
        "summary": (data or {}).get("summary") or composition_summary(segments),
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "data": data_block,
        "count": n,
        "fingerprint": _array_digest(embeddings)[:16] + "-" + digest[:16],
        "skipped": {"count": 0, "files": []},
        "timings": {"ms_per_image": None, "note": "no images were decoded: the embeddings were written from arrays", **(timings or {})},
        "extract": {"identity": None, "records_digest": digest, "written_by": f"{GENERATOR}.write_array_gallery"},
        "environment": runtime.environment(),
    }
    atomic_write_json(path / MANIFEST, manifest)
    return open_gallery(path)


def composition_summary(segments: Sequence[Segment]) -> str:
    """One line for provenance: e.g. "100000 real rows (gallery) + 900000 SYNTHETIC rows (…)"."""
    parts = [f"{s.count} {'SYNTHETIC' if s.synthetic else 'real'} rows ({s.source}: {s.how})" for s in segments if s.count]
    return " + ".join(parts) if parts else "no rows"


def _check_segments(segments: Sequence[Segment], n: int) -> None:
    position = 0
    for s in sorted(segments, key=lambda s: s.start):
        if s.start != position or s.stop < s.start:
            raise LookalikeError(f"segments must cover rows 0..{n} contiguously; {s.source} covers {s.start}..{s.stop}, expected to start at {position}")
        position = s.stop
    if position != n:
        raise LookalikeError(f"segments cover {position} rows but there are {n} embeddings")


def _array_digest(x: np.ndarray) -> str:
    h = hashlib.sha256()
    for start in range(0, len(x), SAMPLE_BLOCK_ROWS):
        h.update(np.ascontiguousarray(x[start : start + SAMPLE_BLOCK_ROWS]).tobytes())
    return h.hexdigest()


def write_generated_gallery(
    path: str | Path,
    n: int,
    d: int,
    val: int = 1000,
    n_clusters: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> Gallery:
    """A GENERATED gallery of `n` rows (the last `val` of them the held-out val split) for benchmarks."""
    model = random_cluster_model(d, n_clusters, seed=seed, **options)
    embeddings, clusters = model.sample(n, seed + 1)  # the same rows make_clustered_embeddings gives
    labels = np.asarray(model.labels, dtype=object)[clusters]
    splits = np.where(np.arange(n) < n - val, "train", "val")
    segment = Segment("generated", 0, n, True, model.how["method"], model.describe())
    data = {"kind": "generated", "generator": model.describe(), "summary": f"GENERATED embeddings ({n_clusters} clusters, seed {seed}; no images)"}
    return write_array_gallery(
        path, embeddings, labels, splits, segments=[segment], model=generated_model_block(d, seed), data=data, overwrite=overwrite
    )
