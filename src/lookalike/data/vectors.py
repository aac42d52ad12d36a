"""Galleries made from arrays: a fitted model of real embeddings, generated clustered embeddings, and a writer.

Why: the scale experiment needs galleries larger than the images we have, and benchmarks need
galleries of the real sizes (100k, 1M) without extracting a million images. Both are built
from one generative model, a mixture of low-rank Gaussians on the unit sphere:

    row = normalise(mean_c + U_c · (z ⊙ scale_c) + noise_std_c · e),   z, e ~ N(0, I)

with cluster c drawn by its weight. `fit_cluster_model` estimates it from real embeddings
(spherical k-means for the clusters, probabilistic PCA for each cluster's spread), so the
cluster structure and the intrinsic dimension of the real data are kept; it is neither
uniform noise nor a copy of real vectors. `make_clustered_embeddings` draws a random model
instead, for benchmarks on GENERATED data, and `make_bunched_embeddings` moves such a model onto one
common direction, so that scores bunch above 0.9 as a random-weight CNN's do.
`lookalike.gallery.generated.write_array_gallery` stores any such array as a normal gallery folder
whose manifest says, row range by row range, what is real and what is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import runtime
from ..errors import LookalikeError

GENERATOR = "lookalike.data.vectors"
MAX_CLUSTERS = 1024  # 256 merged a 1000-cluster generated set into blobs whose samples sat too far from real rows
ROWS_PER_CLUSTER = (
    80  # measured on generated data with known clusters: fewer rows per cluster over-splits and tightens them
)
MIN_ROWS_PER_CLUSTER = 5
DEFAULT_RANK = 32  # principal directions kept per cluster; the rest of the spread is isotropic
MAX_FIT_ROWS = 100_000  # a seeded sample this large gives MAX_CLUSTERS clusters ~100 rows each; more only costs time
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

    def sample_into(self, out: np.ndarray, seed: int | Sequence[int] = 0) -> np.ndarray:
        """Fill `out` (n, d) in place — no second copy of a 1M-row array — and return the cluster ids.

        Clusters are drawn row by row, so any prefix of `out` is itself a fair sample. A sequence
        seed, e.g. [seed, block], gives each block of a larger sample a stream of its own.
        """
        n = len(out)
        rng = np.random.default_rng(seed)
        clusters = rng.choice(self.n_clusters, size=n, p=self.weights).astype(np.int32)
        order = np.argsort(clusters, kind="stable")
        bounds = np.searchsorted(clusters[order], np.arange(self.n_clusters + 1))
        with single_threaded_blas():
            self._fill(out, clusters, order, bounds, rng)
        return clusters

    def _fill(
        self, out: np.ndarray, clusters: np.ndarray, order: np.ndarray, bounds: np.ndarray, rng: np.random.Generator
    ) -> None:
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

    def describe(self) -> dict:
        return dict(self.how)


def single_threaded_blas():
    """Many small per-cluster products: multi-threaded BLAS only adds hand-offs, and on a busy
    2-core machine its spinning threads made sampling 100k rows 12× slower (21.5 s vs 1.7 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# --- fitting a model of real embeddings ---


def default_clusters(n: int) -> int:
    """About ROWS_PER_CLUSTER rows per cluster, at least 1, at most MAX_CLUSTERS."""
    return int(np.clip(n // ROWS_PER_CLUSTER, 1, MAX_CLUSTERS))


def clusters_per_class(class_sizes: dict[Any, int], total: int) -> dict[Any, int]:
    """Share `total` clusters among classes by size: at least one each, none with fewer than MIN_ROWS_PER_CLUSTER
    rows."""
    n = sum(class_sizes.values())
    return {
        c: int(np.clip(round(total * size / n), 1, max(1, size // MIN_ROWS_PER_CLUSTER)))
        for c, size in class_sizes.items()
    }


def fit_cluster_model(
    embeddings: np.ndarray,
    labels: Sequence[Any] | None = None,
    n_clusters: int | None = None,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    max_fit_rows: int = MAX_FIT_ROWS,
) -> ClusterModel:
    """Fit clusters (spherical k-means, faiss.Kmeans) and each cluster's spread (PPCA) to real unit vectors.

    With labels, k-means runs within each class (unlabelled rows form one more group), so every
    cluster belongs to one class and rows drawn from it get that label: clustering all classes
    together merged sibling classes and gave half the synthetic rows of a generated test set the
    wrong label. PPCA keeps the top `rank` principal directions of each cluster with their
    variances and spreads the remaining variance evenly over all directions, so a cluster's total
    variance (hence typical distances) and its dominant low-dimensional shape are both kept.
    """
    n_all, d = embeddings.shape
    if n_all < 2:
        raise LookalikeError(
            f"cannot fit a model of the embeddings from {n_all} row(s); the gallery needs at least 2 searchable images"
        )
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_all, max_fit_rows, replace=False)) if n_all > max_fit_rows else np.arange(n_all)
    x = runtime.as_float32_c(np.asarray(embeddings[rows]))
    fit_labels = np.full(len(x), None, dtype=object) if labels is None else np.asarray(labels, dtype=object)[rows]
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(fit_labels.tolist()):
        groups.setdefault(label, []).append(i)
    classes = {
        label: np.asarray(r) for label, r in sorted(groups.items(), key=lambda item: item[0] is None)
    }  # unlabelled last
    budget = clusters_per_class({c: len(r) for c, r in classes.items()}, n_clusters or default_clusters(len(x)))
    pooled_std = math.sqrt(float(((x - x.mean(axis=0)) ** 2).sum() / max(1, len(x) - 1)) / d)
    members = [m for label, r in classes.items() for m in _kmeans_groups(x, r, budget[label], seed)]
    return _assemble(
        x, members, [fit_labels[m[0]] for m in members], rank, pooled_std, rng, n_all, seed, labelled=labels is not None
    )


def _kmeans_groups(x: np.ndarray, rows: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Split `rows` of `x` into at most `k` non-empty clusters by spherical k-means (one cluster when k == 1)."""
    import faiss

    k = min(k, len(rows))
    if k <= 1:
        return [rows]
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=20,
        seed=seed,
        spherical=True,
        max_points_per_centroid=256,
        min_points_per_centroid=1,
        verbose=False,
    )
    kmeans.train(x[rows])
    _, assign = kmeans.index.search(x[rows], 1)
    return [rows[assign[:, 0] == j] for j in range(k) if np.any(assign[:, 0] == j)]


def _assemble(
    x: np.ndarray,
    members: list[np.ndarray],
    cluster_labels: list[Any],
    rank: int,
    pooled_std: float,
    rng: np.random.Generator,
    n_all: int,
    seed: int,
    labelled: bool,
) -> ClusterModel:
    """PPCA per cluster (see `_fit_spread`), weights by cluster size, and the description of the fit."""
    c, d = len(members), x.shape[1]
    centroids = np.zeros((c, d), np.float32)
    bases = np.zeros((c, d, rank), np.float32)
    scales = np.zeros((c, rank), np.float32)
    noise = np.full(c, pooled_std, np.float32)  # clusters too small for PCA: the whole sample's spread, never a copy
    weights = np.asarray([len(m) for m in members], np.float64)
    explained, within_var = [], []
    with single_threaded_blas():  # one small eigh per cluster (see single_threaded_blas)
        for i, rows in enumerate(members):
            xm = x[rows]
            centroids[i] = xm.mean(axis=0)
            if len(rows) >= MIN_ROWS_FOR_PCA:
                if len(rows) > MAX_ROWS_PER_CLUSTER_PCA:
                    xm = xm[np.sort(rng.choice(len(rows), MAX_ROWS_PER_CLUSTER_PCA, replace=False))]
                r, total = _fit_spread(xm - centroids[i], rank, bases[i], scales[i], noise[i : i + 1])
                explained.append(float((scales[i, :r] ** 2).sum() + r * noise[i] ** 2) / total if total > 0 else 0.0)
                within_var.append(total)
    how = {
        "generator": GENERATOR,
        "method": (
            "fit: spherical k-means (faiss.Kmeans) within each class + per-cluster probabilistic PCA; sample: Gaussian"
            " per cluster, L2-normalised"
        ),
        "fitted_rows": int(len(x)),
        "fitted_from_rows": int(n_all),
        "clusters": int(c),
        "classes": int(len({label for label in cluster_labels})),
        "rank": int(rank),
        "seed": int(seed),
        "explained_variance_share": round(float(np.mean(explained)), 4) if explained else None,
        "mean_within_cluster_variance": round(float(np.mean(within_var)), 5) if within_var else None,
        "label_rule": (
            "each cluster is fitted within one real class and its rows get that label (None for unlabelled rows)"
            if labelled
            else "none: the real rows have no labels"
        ),
        "copies_real_vectors": False,
    }
    return ClusterModel(centroids, weights / weights.sum(), bases, scales, noise, tuple(cluster_labels), how)


def _fit_spread(
    resid: np.ndarray, rank: int, basis: np.ndarray, scales: np.ndarray, noise: np.ndarray
) -> tuple[int, float]:
    """PPCA of one cluster's centred rows, written into `basis` (d, rank), `scales` (rank,) and `noise` (1,).

    At most half the rows' worth of directions are kept, so PPCA still sees spread beyond them
    (with n rows, all variance lies in n − 1 directions). Returns (directions kept, total variance).
    """
    d = resid.shape[1]
    eig, axes = _principal_axes(resid.astype(np.float64))
    total = float(eig.sum())
    r = min(rank, (len(resid) - 1) // 2, d - 1)
    sigma2 = max(total - float(eig[:r].sum()), 0.0) / (d - r)
    basis[:, :r] = axes[:r].T
    scales[:r] = np.sqrt(np.maximum(eig[:r] - sigma2, 0.0))
    noise[0] = math.sqrt(sigma2)
    return r, total


def _principal_axes(resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance eigenvalues (descending) and unit eigenvectors (rows) of centred rows, via the smaller Gram matrix.

    With n ≤ d rows, eigh of the n×n Gram matrix is several times faster than an SVD, and the
    eigenvectors in feature space are Rᵀu/‖Rᵀu‖; the eigenvalues are the same.
    """
    if len(resid) > resid.shape[1]:  # more rows than dimensions: the d×d covariance is the smaller one
        values, vectors = np.linalg.eigh(resid.T @ resid)
        order = np.argsort(values)[::-1]
        return np.maximum(values[order], 0.0) / (len(resid) - 1), vectors[:, order].T
    values, vectors = np.linalg.eigh(resid @ resid.T)
    order = np.argsort(values)[::-1]
    values = np.maximum(values[order], 0.0)
    axes = (resid.T @ vectors[:, order]).T
    axes /= np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
    return values / (len(resid) - 1), axes


# --- generated (not fitted) embeddings, for benchmarks ---


@dataclass(frozen=True)
class GeneratorParams:
    """The shape of GENERATED embeddings; defaults chosen so search behaves like CNN features, not like a toy.

    Measured at 200k × 512 with IVF447 (500 queries from the same mixture): exact label
    precision@10 ≈ 0.62 (sibling classes get confused, as husky and malamute do) and IVF
    recall@10 ≈ 0.68 / 0.82 / 0.92 / 0.98 at nprobe 1 / 4 / 16 / 64. With centroid_norm 0.8
    the clusters hardly overlap and nprobe 2 already gave 0.97: every index looked perfect.
    """

    n_clusters: int = 1000
    rank: int = 16  # directions of within-cluster spread (sets the intrinsic dimension)
    centroid_norm: float = 0.6  # rows sit about this cosine from their cluster's direction
    shared_direction: float = 0.9  # weight of one direction common to all clusters (CNN features are not orthogonal)
    siblings: int = 2  # clusters per group sharing a spread subspace and a nearby direction
    sibling_closeness: float = 0.97  # weight of the group direction in each sibling's direction

    def check(self, d: int) -> None:
        if not (
            0 < self.centroid_norm < 1
            and 0 <= self.shared_direction < 1
            and 0 <= self.sibling_closeness < 1
            and 0 < self.rank < d
            and self.n_clusters >= 1
            and self.siblings >= 1
        ):
            raise LookalikeError(
                "generated embeddings need 0 < centroid_norm < 1, 0 ≤ shared_direction < 1, 0 ≤ sibling_closeness < 1,"
                " 0 < rank < d, n_clusters ≥ 1 and siblings ≥ 1"
            )


def make_clustered_embeddings(n: int, d: int, seed: int = 0, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """GENERATED unit vectors (n, d) float32 with cluster structure, and their labels ("g0000" …) as an object array.

    No model and no image is involved: a random ClusterModel (`random_cluster_model`, shaped by
    `GeneratorParams(**params)`) is drawn and sampled; any prefix of the rows is a fair sample.
    """
    model = random_cluster_model(d, seed, **params)
    embeddings, clusters = model.sample(n, seed + 1)
    return embeddings, np.asarray(model.labels, dtype=object)[clusters]


def random_cluster_model(d: int, seed: int = 0, **params: Any) -> ClusterModel:
    """A random mixture of low-rank Gaussians shaped by `GeneratorParams(**params)`: sibling groups share a spread
    subspace and a nearby direction.

    Each cluster mean has norm `centroid_norm`; its direction mixes a direction common to all
    clusters, its group's direction and its own; 80% of the within-cluster variance lies in the
    group's `rank`-dimensional subspace with decaying scales, the rest is isotropic, and the total
    is 1 − centroid_norm² so rows have norm ≈ 1 before they are normalised.
    """
    p = GeneratorParams(**params)
    p.check(d)
    rng = np.random.default_rng(seed)
    groups = max(1, p.n_clusters // p.siblings)
    group_of = np.arange(p.n_clusters) % groups
    common = _unit(rng.standard_normal(d))
    group_directions = _unit(
        p.shared_direction * common + math.sqrt(1 - p.shared_direction**2) * _unit(rng.standard_normal((groups, d)))
    )
    own = _unit(rng.standard_normal((p.n_clusters, d)))
    directions = _unit(p.sibling_closeness * group_directions[group_of] + math.sqrt(1 - p.sibling_closeness**2) * own)
    spread = 1.0 - p.centroid_norm**2
    decay = 1.0 / np.sqrt(np.arange(1, p.rank + 1))
    variances = 0.8 * spread * decay**2 / (decay**2).sum()
    with single_threaded_blas():  # 500 small QRs (see single_threaded_blas)
        group_bases = np.stack([np.linalg.qr(rng.standard_normal((d, p.rank)))[0] for _ in range(groups)]).astype(
            np.float32
        )
    how = {
        "generator": GENERATOR,
        "method": (
            "make_clustered_embeddings: random mixture of low-rank Gaussians, L2-normalised (GENERATED, no model, no"
            " images)"
        ),
        **asdict(p),
        "seed": seed,
    }
    return ClusterModel(
        centroids=(p.centroid_norm * directions).astype(np.float32),
        weights=np.full(p.n_clusters, 1.0 / p.n_clusters),
        bases=group_bases[group_of],
        scales=np.tile(np.sqrt(variances), (p.n_clusters, 1)).astype(np.float32),
        noise_std=np.full(p.n_clusters, math.sqrt(0.2 * spread / d), np.float32),
        labels=tuple(f"g{j:04d}" for j in range(p.n_clusters)),
        how=how,
    )


# Weight of the direction every bunched row shares. Measured on 3000 rows (default GeneratorParams), pairwise cosine
# 1st percentile / median / a row's 10th-nearest: 0.925 / 0.959 / 0.971 at d = 512 (0.921 and 0.922 at d = 64 and
# 1280); at 0.96 the 1st percentile falls to 0.90, at 0.95 below it.
COMMON_WEIGHT = 0.97


def make_bunched_embeddings(
    n: int, d: int, seed: int = 0, common_weight: float = COMMON_WEIGHT, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """GENERATED unit vectors (n, d) whose scores bunch together as real CNN embeddings' do, and their labels.

    Why: a random-weight ResNet-18 over photographs of one kind gives every pair of images a cosine
    above 0.9 (its pooled ReLU features share one dominant, non-negative direction; the images differ
    only in small variations around it). `make_clustered_embeddings` spreads scores over [0.1, 1], which
    flatters every method whose error is absolute: int8 or fp16 codes (usearch-i8, hnsw-sq8), and
    exact-lowp's error bound, which then prunes almost everything. Measured on such real embeddings
    (69k × 512, issue 22): hnsw-sq8 capped at recall@10 0.69, usearch i8 at 0.013, and exact-lowp's int8
    bound pruned almost nothing. These rows keep the clustered generator's neighbourhoods (clusters,
    sibling clusters, low-rank spread: `bunched_cluster_model`), so recall still means something, and
    add the common direction, so that essentially all pairs score above 0.9.
    """
    model = bunched_cluster_model(d, seed, common_weight, **params)
    embeddings, clusters = model.sample(n, seed + 1)
    return embeddings, np.asarray(model.labels, dtype=object)[clusters]


def bunched_cluster_model(d: int, seed: int = 0, common_weight: float = COMMON_WEIGHT, **params: Any) -> ClusterModel:
    """`random_cluster_model(d, seed, **params)` moved onto one common direction: each row is
    normalise(w·u + √(1 − w²)·r), r a row of the clustered model before normalisation (norm ≈ 1), w = `common_weight`.

    u is |N(0, I)| normalised: non-negative, with uneven coordinates, as the mean of pooled ReLU
    features is. The mixture stays linear, so the result is a ClusterModel like the others (same
    clusters, labels and spread directions; means and spreads moved and scaled).
    """
    if not 0 <= common_weight < 1:
        raise LookalikeError(f"common_weight must be in [0, 1), got {common_weight}")
    base = random_cluster_model(d, seed, **params)
    common = _unit(np.abs(np.random.default_rng([seed, 22]).standard_normal(d)))
    rest = math.sqrt(1 - common_weight**2)
    how = {
        **base.how,
        "method": (
            "make_bunched_embeddings: random mixture of low-rank Gaussians moved onto one common non-negative direction"
            " (weight common_weight), L2-normalised, so nearly all pairs score above 0.9 as a random-weight CNN's"
            " embeddings of one kind of photograph do (GENERATED, no model, no images)"
        ),
        "common_weight": common_weight,
    }
    return ClusterModel(
        centroids=(common_weight * common + rest * base.centroids).astype(np.float32),
        weights=base.weights,
        bases=base.bases,
        scales=(rest * base.scales).astype(np.float32),
        noise_std=(rest * base.noise_std).astype(np.float32),
        labels=base.labels,
        how=how,
    )


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
