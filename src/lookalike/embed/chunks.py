"""The extraction's chunk files (`<out>/.partial/shard-*.npz`): written by both engines, the Ray engine's through
fsspec, and read back when the gallery is committed. numpy only, so that Ray's shard writer need not import torch."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GalleryError

if TYPE_CHECKING:
    from .extract import Job


@dataclass(frozen=True)
class Shard:
    number: int
    start: int  # first record index (inclusive)
    stop: int  # last record index (exclusive)

    @property
    def filename(self) -> str:
        return f"shard-{self.number:05d}.npz"


def encode_shard(
    embeddings: np.ndarray,
    indices: list[int],
    bad: list[tuple[int, str]],
    seconds: float,
    hashes: list[str] | None = None,
    dimensions: list[tuple[int, int]] | None = None,
) -> bytes:
    """The shard file format (an .npz), as bytes: both engines write it, the Ray engine through fsspec.

    `hashes` (sha256 of each file) and `dimensions` ((width, height) of each image), aligned with
    `indices`, are optional: shards without them give a gallery without those columns.
    """
    buffer = io.BytesIO()
    extra = {"hashes": np.asarray(hashes, dtype="U64")} if hashes is not None and len(hashes) == len(indices) else {}
    if dimensions is not None and len(dimensions) == len(indices):
        extra["dimensions"] = np.asarray(dimensions, dtype=np.int64).reshape(-1, 2)
    np.savez(
        buffer,
        embeddings=embeddings.astype(np.float32, copy=False),
        indices=np.asarray(indices, dtype=np.int64),
        bad_indices=np.asarray([i for i, _ in bad], dtype=np.int64),
        bad_reasons=np.asarray([r for _, r in bad], dtype=str),
        seconds=np.float64(seconds),
        **extra,
    )
    return buffer.getvalue()


@dataclass(frozen=True)
class Chunks:
    """What the job's finished chunks hold, read from their small arrays only (not the embeddings)."""

    rows: int  # decoded images
    bad: list[tuple[int, str]]  # (record number, reason) of the images that could not be decoded
    seconds: float  # decode + embed time summed over chunks
    hashes: bool  # every chunk hashed its files (chunks from before content hashes did not)
    dimensions: bool  # every chunk recorded its images' sizes


def finished_chunks(job: Job) -> Chunks:
    missing = job.todo()
    if missing:
        raise GalleryError(
            f"cannot commit {job.out}: {len(missing)} chunks are missing; rerun the extraction to finish them"
        )
    rows, bad, seconds, hashes, dimensions = 0, [], 0.0, True, True
    for shard in job.shards:
        with np.load(job.partial / shard.filename) as z:
            rows += len(z["indices"])
            bad.extend(zip(z["bad_indices"].tolist(), z["bad_reasons"].tolist()))
            seconds += float(z["seconds"])
            hashes &= "hashes" in z.files
            dimensions &= "dimensions" in z.files
    return Chunks(rows, bad, seconds, hashes, dimensions)


def read_chunks(
    job: Job, chunks: Chunks
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str] | None, np.ndarray | None]]:
    """(embeddings, record numbers, content hashes, (width, height)s) of each chunk in turn: one chunk in memory."""
    for shard in job.shards:
        with np.load(job.partial / shard.filename) as z:
            yield (
                z["embeddings"],
                z["indices"],
                z["hashes"].tolist() if chunks.hashes else None,
                z["dimensions"].reshape(-1, 2) if chunks.dimensions else None,
            )
