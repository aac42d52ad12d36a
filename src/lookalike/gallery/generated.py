"""Galleries written from arrays: generated vectors (`lookalike.data.vectors`) and mixes of real and synthetic rows.

The scale experiment and the benchmarks need galleries larger than the images at hand; these are
normal gallery folders (written by `store.write_gallery`) whose manifest says, row range by row
range, what is real and what is not, so `is_real` is False and every output labels them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runtime
from ..data.vectors import random_cluster_model
from ..errors import GalleryError, LookalikeError
from .manifest import DataInfo, ModelInfo, Weights
from .store import (
    DEFAULT_SHARD_ROWS,
    MANIFEST,
    Gallery,
    GalleryWriter,
    Rows,
    clear_gallery,
    records_digest,
    write_gallery,
)

WRITER = "lookalike.gallery.generated"
GENERATED_BLOCK_ROWS = 65_536  # rows drawn at once by write_generated_gallery_blocks: 128 MiB at 512-d
SYNTHETIC_PATH_PREFIX = "synthetic:"  # metadata `path` of every row that is not a real image
ARRAY_PATH_PREFIX = "array:"  # metadata `path` of a real row written from an array (no image file)


def has_image_file(path: str) -> bool:
    """False for rows written from arrays: their `path` names where the vector came from, not an image."""
    return not path.startswith((SYNTHETIC_PATH_PREFIX, ARRAY_PATH_PREFIX))


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


def generated_model_block(dim: int, seed: int) -> ModelInfo:
    """The manifest's model of a gallery whose embeddings no model produced."""
    return ModelInfo(
        name="generated",
        dim=int(dim),
        weights=Weights("none", "no model: embeddings generated, not extracted from images", seed=seed),
        family=WRITER,
    )


def write_array_gallery(
    path: str | Path,
    embeddings: np.ndarray,
    labels: Sequence[Any] | None = None,
    splits: Sequence[str] | None = None,
    *,
    segments: Sequence[Segment],
    model: ModelInfo,
    data: dict | None = None,
    paths: Sequence[str] | None = None,
    label_names: Sequence[str | None] | None = None,
    timings: dict | None = None,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> Gallery:
    """Write a gallery folder (the layout `lookalike.embed.extract.commit` writes) from arrays, manifest last, in
    shards of `shard_rows`.

    `segments` must cover every row exactly once; rows of synthetic segments get paths
    "synthetic:<source>/<row>" unless `paths` is given, and the manifest's `data` block records
    every segment, so `is_real` is False and `provenance()` names the synthetic share.
    `model` is the source gallery's `manifest.model`, or `generated_model_block`.
    """
    path = Path(path)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise LookalikeError(
            f"write_array_gallery wants an (N, d) float32 array, got {embeddings.shape} {embeddings.dtype}"
        )
    n, d = embeddings.shape
    _check_segments(segments, n)
    if model.dim != d:
        raise LookalikeError(f"the model block says {model.dim}-d but the embeddings are {d}-d")
    labels = [None] * n if labels is None else [None if v is None else str(v) for v in labels]
    splits = ["train"] * n if splits is None else [str(s) for s in splits]
    label_names = [None] * n if label_names is None else list(label_names)
    if paths is None:
        paths = _segment_paths(segments, 0, n)
    if not (len(labels) == len(splits) == len(label_names) == len(paths) == n):
        raise LookalikeError(
            f"{n} embeddings but {len(labels)} labels, {len(splits)} splits, {len(label_names)} label names and"
            f" {len(paths)} paths"
        )
    _make_room(path, overwrite)
    return write_gallery(
        path,
        embeddings,
        Rows(list(paths), labels, label_names, splits),
        shard_rows=shard_rows,
        **_manifest_fields(
            segments,
            model,
            data,
            Counter(splits),
            timings,
            records_digest(list(paths), labels, splits),
            "write_array_gallery",
        ),
    )


def write_array_gallery_blocks(
    path: str | Path,
    dim: int,
    blocks: Iterable[tuple[np.ndarray, Sequence[Any]]],
    *,
    segments: Sequence[Segment],
    model: ModelInfo,
    data: dict | None = None,
    timings: dict | None = None,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> Gallery:
    """`write_array_gallery` for more rows than memory holds: (embeddings, labels) blocks in row order, every row of
    split "train", paths from the segments; the writer holds one shard at a time (`GalleryWriter`).

    Why: the scale experiment's pool at 10M rows is 20 GB; it is generated and written block by
    block, and read back through the gallery's memory-mapped shards.
    """
    path = Path(path)
    n = max((s.stop for s in segments), default=0)
    _check_segments(segments, n)
    if model.dim != dim:
        raise LookalikeError(f"the model block says {model.dim}-d but the embeddings are {dim}-d")
    _make_room(path, overwrite)
    writer = GalleryWriter(path, dim, shard_rows)
    for embeddings, labels in blocks:
        start, count = writer.count, len(embeddings)
        if start + count > n:
            raise LookalikeError(f"the blocks hold more rows than the {n} the segments cover")
        rows = Rows(
            _segment_paths(segments, start, start + count),
            [None if v is None else str(v) for v in labels],
            [None] * count,
            ["train"] * count,
        )
        writer.add(np.asarray(embeddings, dtype=np.float32), rows)
    if writer.count != n:
        raise LookalikeError(f"the blocks hold {writer.count} rows but the segments cover {n}")
    return writer.finish(
        **_manifest_fields(
            segments,
            model,
            data,
            Counter({"train": n}),
            timings,
            writer.records_hash.hexdigest(),  # records_digest's lines, hashed as the rows passed
            "write_array_gallery_blocks",
        )
    )


def _make_room(path: Path, overwrite: bool) -> None:
    if (path / MANIFEST).is_file() and not overwrite:
        raise GalleryError(f"{path} already holds a gallery; use another folder or pass overwrite=True")
    clear_gallery(path) if path.exists() else path.mkdir(parents=True)


def _segment_paths(segments: Sequence[Segment], start: int, stop: int) -> list[str]:
    """Rows start … stop − 1's metadata paths: "synthetic:<source>/<row>", or "array:<source>/<row>" for real rows."""
    return [
        f"{SYNTHETIC_PATH_PREFIX if s.synthetic else ARRAY_PATH_PREFIX}{s.source}/{i}"
        for s in sorted(segments, key=lambda s: s.start)
        for i in range(max(start, s.start), min(stop, s.stop))
    ]


def _manifest_fields(
    segments: Sequence[Segment],
    model: ModelInfo,
    data: dict | None,
    splits: Counter,
    timings: dict | None,
    digest: str,
    writer: str,
) -> dict[str, Any]:
    """`GalleryWriter.finish`'s fields for a gallery written from arrays: the data block lists every segment."""
    synthetic_rows = sum(s.count for s in segments if s.synthetic)
    n = sum(s.count for s in segments)
    data_block = {
        "kind": "arrays",
        "root": None,
        **(data or {}),
        "count": n,
        "synthetic": synthetic_rows > 0 or bool((data or {}).get("synthetic")),
        "synthetic_rows": synthetic_rows,
        "segments": [asdict(s) for s in segments],
        "splits": dict(splits),
        "summary": (data or {}).get("summary") or composition_summary(segments),
    }
    return {
        "model": model,
        "data": DataInfo.from_dict(data_block),
        "timings": {
            "ms_per_image": None,
            "note": "no images were decoded: the embeddings were written from arrays",
            **(timings or {}),
        },
        "extract": {"identity": None, "records_digest": digest, "written_by": f"{WRITER}.{writer}"},
        "environment": runtime.environment(),
    }


def composition_summary(segments: Sequence[Segment]) -> str:
    """One line for provenance: e.g. "100000 real rows (gallery) + 900000 SYNTHETIC rows (…)"."""
    parts = [
        f"{s.count} {'SYNTHETIC' if s.synthetic else 'real'} rows ({s.source}: {s.how})" for s in segments if s.count
    ]
    return " + ".join(parts) if parts else "no rows"


def _check_segments(segments: Sequence[Segment], n: int) -> None:
    position = 0
    for s in sorted(segments, key=lambda s: s.start):
        if s.start != position or s.stop < s.start:
            raise LookalikeError(
                f"segments must cover rows 0..{n} contiguously; {s.source} covers {s.start}..{s.stop}, expected to"
                f" start at {position}"
            )
        position = s.stop
    if position != n:
        raise LookalikeError(f"segments cover {position} rows but there are {n} embeddings")


def write_generated_gallery(
    path: str | Path, n: int, d: int, val: int = 1000, seed: int = 0, overwrite: bool = False, **params: Any
) -> Gallery:
    """A GENERATED gallery of `n` rows (the last `val` of them the held-out val split) for benchmarks.

    `params` are `GeneratorParams` fields; the rows are those `make_clustered_embeddings` gives.
    """
    model = random_cluster_model(d, seed, **params)
    embeddings, clusters = model.sample(n, seed + 1)
    labels = np.asarray(model.labels, dtype=object)[clusters]
    splits = np.where(np.arange(n) < n - val, "train", "val")
    segment = Segment("generated", 0, n, True, model.how["method"], model.describe())
    data = {
        "kind": "generated",
        "generator": model.describe(),
        "summary": f"GENERATED embeddings ({model.n_clusters} clusters, seed {seed}; no images)",
    }
    return write_array_gallery(
        path,
        embeddings,
        labels,
        splits,
        segments=[segment],
        model=generated_model_block(d, seed),
        data=data,
        overwrite=overwrite,
    )


def write_generated_gallery_blocks(
    path: str | Path,
    n: int,
    d: int,
    seed: int = 0,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    **params: Any,
) -> Gallery:
    """A GENERATED gallery of `n` rows drawn and written one block at a time, for sizes beyond memory (10M × 512 is
    20 GB); the writer holds one shard and one block.

    Block i (GENERATED_BLOCK_ROWS rows) is drawn with seed [seed + 1, i], so a gallery's whole blocks
    are the first rows of a larger one with the same seed; the rows are not `write_generated_gallery`'s,
    which draws all of them in one call. Every row is of split "train": held-out queries come from the
    same model apart, `random_cluster_model(d, seed, **params).sample(q, seed=…)`.
    """
    model = random_cluster_model(d, seed, **params)
    labels = np.asarray(model.labels, dtype=object)

    def blocks() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for number, start in enumerate(range(0, n, GENERATED_BLOCK_ROWS)):
            rows = np.empty((min(GENERATED_BLOCK_ROWS, n - start), d), dtype=np.float32)
            yield rows, labels[model.sample_into(rows, seed=[seed + 1, number])]

    how = f"{model.how['method']}; drawn in blocks of {GENERATED_BLOCK_ROWS} rows, block i with seed [{seed + 1}, i]"
    return write_array_gallery_blocks(
        path,
        d,
        blocks(),
        segments=[Segment("generated", 0, n, True, how, model.describe())],
        model=generated_model_block(d, seed),
        data={
            "kind": "generated",
            "generator": model.describe(),
            "summary": f"GENERATED embeddings ({model.n_clusters} clusters, seed {seed}; no images)",
        },
        overwrite=overwrite,
        shard_rows=shard_rows,
    )
