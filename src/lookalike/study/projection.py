"""A map of the gallery: every row placed in 2-D, so a person can see its clusters, outliers and labels at a glance.

PCA by default: the two leading principal directions of the embeddings, computed with numpy
from the covariance accumulated block by block over the shards (a d × d matrix; the gallery is
never held whole), so it is exact, deterministic and fast at any size. UMAP (`umap-learn`, the
`map` extra; fixed seed) keeps local neighbourhoods better and costs minutes at 100k rows.

The map is cached beside the gallery (`cache/map-<method>-<fingerprint>.npz`): keyed by the
content fingerprint, so an updated gallery gets a new map and the old one is never shown for it.
`encode_map` packs it for the web page: coordinates as uint16 grid positions and labels as
indices into the label list, base64 — about 6 bytes a point (100k points: ~0.8 MB of JSON).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LookalikeError
from ..gallery import CACHE

if TYPE_CHECKING:
    from ..gallery import Gallery

METHODS = ("pca", "umap")
UMAP_SEED = 0
UMAP_MAX_ROWS = 200_000  # above this UMAP takes far longer than a person waits; PCA has no limit
GRID = 65535  # uint16 grid the page receives


@dataclass(frozen=True)
class GalleryMap:
    """2-D coordinates of every row (row i is gallery id i), and how they were made."""

    method: str
    x: np.ndarray  # float32 (N,)
    y: np.ndarray
    fingerprint: str
    note: str  # e.g. "PCA: 2 leading directions explain 12.3% of the variance"


def gallery_map(gallery: Gallery, method: str = "pca") -> GalleryMap:
    """The gallery's map by `method`, from the cache when this content was mapped before."""
    if method not in METHODS:
        raise LookalikeError(f"unknown map method {method!r}; use {' or '.join(METHODS)}")
    if gallery.count == 0:
        raise LookalikeError(f"the gallery at {gallery.path} holds no images: there is nothing to map")
    path = _cache_path(gallery, method)
    if path.is_file():
        with np.load(path) as saved:
            return GalleryMap(method, saved["xy"][:, 0], saved["xy"][:, 1], gallery.fingerprint, str(saved["note"]))
    xy, note = _pca(gallery) if method == "pca" else _umap(gallery)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, xy=xy.astype(np.float32), note=np.array(note))
    tmp.replace(path)
    return GalleryMap(method, xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32), gallery.fingerprint, note)


def _cache_path(gallery: Gallery, method: str) -> Path:
    return Path(gallery.path) / CACHE / f"map-{method}-{gallery.fingerprint}.npz"


def _pca(gallery: Gallery) -> tuple[np.ndarray, str]:
    """Project on the two leading eigenvectors of the covariance, accumulated in float64 over blocks."""
    vectors = gallery.embeddings
    d = gallery.dim
    total, outer = np.zeros(d), np.zeros((d, d))
    for _, block in vectors.blocks():
        block = np.asarray(block, dtype=np.float64)
        total += block.sum(axis=0)
        outer += block.T @ block
    n = gallery.count
    mean = total / n
    covariance = outer / n - np.outer(mean, mean)
    values, vectors_ = np.linalg.eigh(covariance)
    directions = vectors_[:, ::-1][:, :2]
    directions *= np.sign(directions[np.abs(directions).argmax(axis=0), [0, 1]])  # a fixed sign: the same map each run
    xy = np.empty((n, 2), dtype=np.float32)
    for start, block in vectors.blocks():
        xy[start : start + len(block)] = (np.asarray(block, dtype=np.float64) - mean) @ directions
    explained = values[::-1][:2].sum() / max(values.sum(), 1e-12)
    return xy, f"PCA: the 2 leading directions explain {100 * explained:.1f}% of the variance"


def _umap(gallery: Gallery) -> tuple[np.ndarray, str]:
    try:
        import umap  # the optional `map` extra
    except ImportError:
        raise LookalikeError(
            "the UMAP map needs umap-learn: pip install 'lookalike[map]' (or use the PCA map, the default)"
        ) from None
    if gallery.count > UMAP_MAX_ROWS:
        raise LookalikeError(
            f"UMAP over {gallery.count} rows would take far too long here (limit {UMAP_MAX_ROWS}); use the PCA map"
        )
    reducer = umap.UMAP(n_components=2, random_state=UMAP_SEED, metric="cosine")
    xy = reducer.fit_transform(np.asarray(gallery.embeddings))
    return np.asarray(xy, dtype=np.float32), f"UMAP (umap-learn, cosine, seed {UMAP_SEED})"


def encode_map(gallery: Gallery, mapped: GalleryMap) -> dict[str, Any]:
    """The compact answer of GET /api/map: row i is gallery id i; x and y are uint16 positions on a GRID × GRID grid
    (little-endian, base64); `label_index` indexes `labels` (uint16, base64; GRID: no label)."""
    xs, ys = (_to_grid(v) for v in (mapped.x, mapped.y))
    labels = gallery.labels
    names = sorted({str(label) for label in labels if label})
    if len(names) >= GRID:
        names = names[: GRID - 1]
    index = {name: i for i, name in enumerate(names)}
    label_index = np.fromiter((index.get(str(label), GRID) if label else GRID for label in labels), np.uint16)
    return {
        "count": gallery.count,
        "method": mapped.method,
        "note": mapped.note,
        "fingerprint": mapped.fingerprint,
        "grid": GRID,
        "x": _b64(xs),
        "y": _b64(ys),
        "labels": names,
        "label_index": _b64(label_index),
    }


def _to_grid(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    scale = GRID / (hi - lo) if hi > lo else 0.0
    return np.round((values - lo) * scale).astype("<u2")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype("<u2").tobytes()).decode("ascii")


def plot_map(gallery: Gallery, mapped: GalleryMap, path: Path) -> Path:
    """The map as a PNG, coloured by label, titled with the provenance (and NOT A REAL RESULT when it is not)."""
    from matplotlib.figure import Figure

    from .core import not_real_banner
    from .plots import DPI, save_figure, wrapped_title

    labels = np.asarray([str(label) if label else "" for label in gallery.labels])
    names = sorted(set(labels) - {""})
    fig = Figure(figsize=(9, 9), dpi=DPI)
    ax = fig.add_subplot()
    size = max(0.5, min(12.0, 20_000 / max(1, gallery.count)))
    if names:
        codes = np.searchsorted(names, labels)
        ax.scatter(mapped.x, mapped.y, c=codes % 20, cmap="tab20", s=size, linewidths=0)
    else:
        ax.scatter(mapped.x, mapped.y, s=size, linewidths=0)
    banner = "" if gallery.is_real else not_real_banner().replace("**", "")
    ax.set_title(wrapped_title(*(line for line in (banner, gallery.provenance(), mapped.note) if line)), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


__all__ = ["GalleryMap", "gallery_map", "encode_map", "plot_map", "METHODS"]
