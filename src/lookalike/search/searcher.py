"""Searching one gallery with any query form: an image file, a PIL image, a vector, a gallery id or text (CLIP).

Why a class: the query model and each search method are loaded once and kept, so a Python user
calling `gallery.search(...)` in a loop pays for them once, as the server does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..errors import LookalikeError
from ..gallery import Gallery
from .base import SearchMethod

Query = Union[str, "os.PathLike[str]", "Image.Image", np.ndarray, int]  # noqa: F821 (PIL is imported lazily)


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


class Searcher:
    """One gallery's query model and search methods, loaded on first use and shared by later calls."""

    def __init__(self, gallery: Gallery, device: str = "cpu"):
        from ..runtime import configure_faiss

        configure_faiss()  # the library's FAISS settings, explicitly (the CLI applies them with its threads)
        self.gallery = gallery
        self.device = device
        self._embedder = None
        self._methods: dict[tuple[str, str], SearchMethod] = {}
        self._exact: dict[tuple[str, str], SearchMethod] = {}  # (method, metric) → the exact search it is compared with
        self._lock = threading.Lock()

    # -- query → vector --
    @property
    def embedder(self):
        """The gallery's own model, weights and preprocessing (embed.query.QueryEmbedder)."""
        if self._embedder is None:
            if self.gallery.manifest.weights.kind == "none":
                raise LookalikeError(
                    f"{self.gallery.path} holds embeddings generated without a model, so an image cannot be embedded"
                    " like them; query by gallery id or vector"
                )
            from ..embed.query import QueryEmbedder

            self._embedder = QueryEmbedder(self.gallery, self.device)
        return self._embedder

    def vector(self, query: Query | None = None, text: str | None = None) -> np.ndarray:
        """(1, d) float32 unit vector for any query form, or for `text` with a model that has a text tower (CLIP)."""
        if text is not None:
            if query is not None:
                raise LookalikeError("give either a query (image, vector or gallery id) or text, not both")
            return self.text_vector(text)
        if query is None:
            raise LookalikeError(
                "nothing to search with: pass a query (an image path, a PIL image, a vector or a gallery id) or"
                " text=..."
            )
        if isinstance(query, (bool, np.bool_)):
            raise LookalikeError("a query is an image path, a PIL image, a vector or a gallery id, not a bool")
        if isinstance(query, (int, np.integer)):
            gallery_id = int(query)
            if not 0 <= gallery_id < self.gallery.count:
                raise LookalikeError(
                    f"no gallery image with id {gallery_id}; ids run from 0 to {self.gallery.count - 1}"
                )
            return np.array(self.gallery.embeddings[gallery_id : gallery_id + 1], dtype=np.float32)
        if isinstance(query, np.ndarray):
            return self._checked_vector(query)
        if isinstance(query, (str, os.PathLike)):
            if not os.path.isfile(query):
                raise LookalikeError(f"query image {os.fspath(query)!r} does not exist or is not a file")
            return self.embedder.embed_path(os.fspath(query))[0]
        from PIL import Image

        if isinstance(query, Image.Image):
            return self.embedder.embed_image(query.convert("RGB"))[0]
        raise LookalikeError(
            f"cannot search with a {type(query).__name__}; pass an image path, a PIL image, a numpy vector or a"
            " gallery id"
        )

    def text_vector(self, text: str) -> np.ndarray:
        """(1, d) unit vector of `text` from the text tower of the gallery's own model, or TextQueryError.

        A gallery of a model without a text tower is refused from the registry, before any model is loaded."""
        from ..embed.registry import MODELS
        from ..embed.text import no_text_message
        from ..errors import TextQueryError

        spec = MODELS.get(self.gallery.model)
        if spec is None or not spec.has_text:
            raise TextQueryError(no_text_message(self.gallery.model))
        if not isinstance(text, str):
            raise TextQueryError(f"text must be a string, not a {type(text).__name__}")
        return self.embedder.embed_text(text)[0]

    def _checked_vector(self, query: np.ndarray) -> np.ndarray:
        vector = (
            np.asarray(query, dtype=np.float32).reshape(1, -1)
            if query.ndim == 1
            else np.asarray(query, dtype=np.float32)
        )
        if vector.shape != (1, self.gallery.dim):
            raise LookalikeError(
                f"a query vector must have shape ({self.gallery.dim},) or (1, {self.gallery.dim}) for this gallery, got"
                f" {query.shape}"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise LookalikeError("the query vector is zero or not finite; it has no direction to search along")
        return vector / norm  # the gallery holds unit vectors: cosine is the inner product only for unit queries

    # -- methods --
    def method(self, name: str, metric: str = "ip") -> SearchMethod:
        """The saved index `name` when the gallery has one, else the method built now over the searchable rows."""
        from . import get_method

        key = (name, metric)
        with self._lock:
            if key not in self._methods:
                self._methods[key] = get_method(self.gallery, name, metric)[0]
            return self._methods[key]

    def forget(self, name: str, metric: str = "ip") -> None:
        """Drop a cached method, e.g. after its index was rebuilt and saved."""
        with self._lock:
            self._methods.pop((name, metric), None)
            self._exact.pop((name, metric), None)

    def exact_for(self, method: SearchMethod, make: Callable[[], SearchMethod]) -> SearchMethod:
        """The exact search that `method` is compared with (study.compare), made once by `make` and kept."""
        key = (method.name, method.metric)
        with self._lock:
            known = self._exact.get(key)
        if known is None:
            known = make()  # outside the lock: making it may load or build methods through self.method
            with self._lock:
                known = self._exact.setdefault(key, known)
        return known

    # -- the search --
    def search(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "flat",
        metric: str = "ip",
        *,
        text: str | None = None,
        **params: Any,
    ) -> list[Hit]:
        """The k nearest gallery images to `query` (or `text`), best first; `params` (nprobe, efSearch, k_factor) apply
        to this call only."""
        vector = self.vector(query, text)
        chosen = self.method(method, metric)
        scores, ids = chosen.search(vector, k, params or None)
        return self.hits(scores[0], ids[0])

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Hits for one query's (scores, ids); −1 ids (fewer results than k) are dropped."""
        return hits_of(self.gallery, scores, ids)


def hits_of(gallery: Gallery, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
    """Hits for one query's (scores, ids) with the gallery's metadata; −1 ids (fewer results than k) are dropped."""
    valid = ids >= 0
    rows = ids[valid].astype(np.int64).tolist()
    meta = gallery.metadata.take(rows).to_pydict() if rows else {}
    return [
        Hit(n + 1, gid, float(score), meta["path"][n], meta["label"][n], meta["label_name"][n], meta["split"][n])
        for n, (gid, score) in enumerate(zip(rows, scores[valid]))
    ]
