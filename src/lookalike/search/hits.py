"""What a search returns to a person: `Hit`, one result row with the gallery's metadata, and the query forms accepted.

Kept apart from the searcher so `compare` and the searcher both build hits without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..gallery import Gallery


@dataclass(frozen=True)
class Text:
    """A text among several examples of one query (`positive=[image, Text("at night")]`), for a CLIP gallery: a bare
    string is an image path."""

    text: str


Query = Union[str, "os.PathLike[str]", bytes, "Image.Image", np.ndarray, int, Text]  # noqa: F821 (PIL: lazily)


@dataclass(frozen=True)
class Hit:
    """One result: the gallery row, its score (inner product for metric ip, squared L2 for l2) and its metadata."""

    rank: int
    id: int
    score: float
    path: str
    label: str | None
    label_name: str | None
    split: str | None


def hits_of(gallery: Gallery, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
    """Hits for one query's (scores, ids) with the gallery's metadata; −1 ids (fewer results than k) are dropped."""
    valid = ids >= 0
    rows = ids[valid].astype(np.int64).tolist()
    meta = gallery.metadata.take(rows).to_pydict() if rows else {}
    return [
        Hit(n + 1, gid, float(score), meta["path"][n], meta["label"][n], meta["label_name"][n], meta["split"][n])
        for n, (gid, score) in enumerate(zip(rows, scores[valid]))
    ]
