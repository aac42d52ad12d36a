"""Embedding query images for an existing gallery, with the gallery's own model, weights and preprocessing.

The CLI's `search` and the web server both go through here, so a query is always embedded
exactly as the gallery was.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import GalleryError
from ..gallery import Gallery
from ..data.images import load_rgb, load_rgb_bytes
from .models import Embedder, load_model
from .transforms import build_transform


@dataclass(frozen=True)
class QueryTimings:
    decode_ms: float  # file/bytes → RGB pixels, plus resize/crop/normalise
    embed_ms: float  # the forward pass


def embedder_for(gallery: Gallery, device: str = "cpu") -> Embedder:
    """Rebuild the model that made `gallery` (random weights are re-created from their seed)."""
    model = gallery.manifest["model"]
    weights = model["weights"]
    source = {"pretrained": "pretrained", "random": "random"}.get(weights["kind"], weights["source"])
    embedder = load_model(model["model"], source, model["preprocess"]["image_size"], device, weights.get("seed") or 0)
    if embedder.dim != gallery.dim:
        raise GalleryError(f"model {model['model']} gives {embedder.dim}-d embeddings but {gallery.path} holds {gallery.dim}-d ones; re-extract the gallery")
    embedder.precision = model.get("precision", {}).get("precision", "fp32")
    return embedder


class QueryEmbedder:
    def __init__(self, gallery: Gallery, device: str = "cpu"):
        self.embedder = embedder_for(gallery, device)
        self.transform = build_transform(self.embedder.preprocess)

    def embed_image(self, image: Image.Image, decode_started: float | None = None) -> tuple[np.ndarray, QueryTimings]:
        t0 = decode_started if decode_started is not None else time.perf_counter()
        tensor = self.transform(image)[None]
        t1 = time.perf_counter()
        vector = self.embedder.embed(tensor)
        t2 = time.perf_counter()
        return vector, QueryTimings(1000 * (t1 - t0), 1000 * (t2 - t1))

    def embed_path(self, path: str) -> tuple[np.ndarray, QueryTimings]:
        t0 = time.perf_counter()
        return self.embed_image(load_rgb(path), t0)

    def embed_bytes(self, data: bytes, max_pixels: int | None = None) -> tuple[np.ndarray, QueryTimings]:
        t0 = time.perf_counter()
        image = load_rgb_bytes(data, max_pixels=max_pixels) if max_pixels else load_rgb_bytes(data)
        return self.embed_image(image, t0)


SINGLE_IMAGE_REPEATS = 5


def single_image_ms(embedder: Embedder, path: str, repeats: int = SINGLE_IMAGE_REPEATS) -> float:
    """Median ms to decode, preprocess and embed one image alone (batch 1), after one warm-up run.

    A query image pays this, not the per-image share of a batch-64 extraction, which is a throughput figure.
    """
    transform = build_transform(embedder.preprocess)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        embedder.embed(transform(load_rgb(path))[None])
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times[1:]), 3)
