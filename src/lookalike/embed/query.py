"""Embedding query images for an existing gallery, with the gallery's own model, weights and preprocessing.

The CLI's `search` and the web server both go through here, so a query is always embedded
exactly as the gallery was.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import runtime
from ..data.images import DEFAULT_MAX_PIXELS, decode_pixels, read_image_bytes, unreadable
from ..errors import GalleryError, TextQueryError
from ..gallery import Gallery
from .backends import BackendUnavailable, Choice, NonFiniteEmbeddings
from .calibrate import REFERENCE
from .models import Embedder, Towers, load_towers
from .text_choice import TextInference, fall_back, use_text_inference
from .transforms import build_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryTimings:
    decode_ms: float  # file/bytes → RGB pixels, plus resize/crop/normalise (text: tokenizing)
    embed_ms: float  # the forward pass


def towers_for(gallery: Gallery, device: str = "cpu", threads: int | None = None) -> Towers:
    """Rebuild the model that made `gallery` (random weights are re-created from their seed), run as it was, with its
    text tower if it has one.

    The image tower runs on the backend and precision the manifest records. Where that backend
    cannot run (OpenVINO not installed), torch fp32 stands in: the calibration measured the
    gallery's backend within cosine 0.999 of it, and the fallback is said once.
    """
    model = gallery.manifest.model
    weights = model.weights
    source = {"pretrained": "pretrained", "random": "random"}.get(weights.kind, weights.source)
    towers = load_towers(model.name, source, model.image_size, device, weights.seed or 0, stacklevel=3)
    embedder = towers.image
    recorded = weights.sha256 or ""
    if len(recorded) == 64 and embedder.weights.sha256 != recorded:  # older galleries recorded only a name prefix
        where = weights.source if weights.kind == "file" else "the cached pretrained file"
        raise GalleryError(
            f"the weights in {where} (sha256 {str(embedder.weights.sha256)[:12]}…) are not the ones {gallery.path} was"
            f" extracted with (sha256 {recorded[:12]}…), so queries would not match its embeddings; restore that file"
            " or re-extract the gallery"
        )
    if embedder.dim != gallery.dim:
        raise GalleryError(
            f"model {model.name} gives {embedder.dim}-d embeddings but {gallery.path} holds {gallery.dim}-d ones;"
            " re-extract the gallery"
        )
    recorded_choice = Choice(model.backend_name, model.precision_name)
    try:
        embedder.use(recorded_choice, threads if recorded_choice.backend == "openvino" else None)
    except BackendUnavailable as exc:
        log.warning(
            "%s was embedded with %s, which cannot run here (%s); queries use torch fp32, within the cosine measured at"
            " extraction",
            gallery.path,
            recorded_choice,
            exc,
        )
        embedder.use(REFERENCE)
    return towers


class QueryEmbedder:
    """A gallery's own image tower and preprocessing, and its text tower when the model has one (CLIP).

    The text tower runs on the backend and precision measured for this gallery on this machine
    (`embed.text_choice`): read from its record, or measured and recorded at the first text query.
    """

    def __init__(self, gallery: Gallery, device: str = "cpu", threads: int | None = None):
        towers = towers_for(gallery, device, threads)
        self.gallery = gallery
        self.threads = threads
        self.embedder = towers.image
        self.text = towers.text
        self.no_text = towers.no_text
        self.transform = build_transform(self.embedder.preprocess)
        self.text_inference: TextInference | None = None  # the record in force, once the first text query set it
        self._text_lock = threading.Lock()

    def prepare_text(self, quantise: bool = False) -> TextInference:
        """Run the text tower as its record says, measuring it first when this gallery has none here (once).

        `quantise`: for a server, which answers many queries: int8 is tried even if the text tower must be
        quantised first (seconds, once per model and weights; see embed.text_choice)."""
        if self.text is None:
            raise TextQueryError(self.no_text or "this gallery's model cannot embed text")
        with self._text_lock:
            if self.text_inference is None:
                self.text_inference = use_text_inference(self.gallery, self.text, self.threads, quantise=quantise)
        return self.text_inference

    def check_text(self, text: str) -> None:
        """TextQueryError unless `text` can be searched here: the model has a text tower and the text fits it."""
        if self.text is None:
            raise TextQueryError(self.no_text or "this gallery's model cannot embed text")
        self.text.tokenize(text)

    def embed_text(self, text: str) -> tuple[np.ndarray, QueryTimings]:
        """(1, d) unit vector of a text query; `decode_ms` is the tokenizing."""
        record = self.prepare_text()
        try:
            vector, tokenize_ms, embed_ms = self.text.embed(text)
        except NonFiniteEmbeddings as exc:
            if self.text.choice == REFERENCE:
                raise
            # never a NaN query: fp32 torch is what the recorded backend was measured against (within MIN_COSINE)
            with self._text_lock:
                if self.text.choice != REFERENCE:
                    self.text_inference = fall_back(self.gallery, self.text, record, exc)
            vector, tokenize_ms, embed_ms = self.text.embed(text)
        return vector, QueryTimings(tokenize_ms, embed_ms)

    def embed_image(
        self, image: Image.Image | np.ndarray, decode_started: float | None = None
    ) -> tuple[np.ndarray, QueryTimings]:
        """(1, d) unit vector of an RGB image (PIL, or (H, W, 3) uint8 pixels), preprocessed as the gallery's rows were.

        With OpenVINO the resize runs in torch on one thread: its OpenMP workers, once woken, spin
        after the resize and took the cores OpenVINO's own threads need for the forward pass (measured
        on 2 cores, resnet18 OpenVINO bf16, a 640×480 JPEG: 6.2 ms decode to embedding, 5.0 with the
        resize on one thread, which ran it no slower). Extraction does the same (`apply_inference`)."""
        t0 = decode_started if decode_started is not None else time.perf_counter()
        with runtime.torch_threads(1 if self.embedder.choice.backend == "openvino" else None):
            tensor = self.transform(image)[None]
        t1 = time.perf_counter()
        try:
            vector = self.embedder.embed(tensor)
        except NonFiniteEmbeddings as exc:
            if self.embedder.choice == REFERENCE:
                raise
            # never a NaN query: fp32 torch is what the gallery's backend was measured against (within MIN_COSINE)
            log.warning("%s; queries use torch fp32 from now on", exc.what)
            self.embedder.use(REFERENCE)
            vector = self.embedder.embed(tensor)
        t2 = time.perf_counter()
        return vector, QueryTimings(1000 * (t1 - t0), 1000 * (t2 - t1))

    def embed_path(self, path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, QueryTimings]:
        t0 = time.perf_counter()
        try:
            data = read_image_bytes(path)
        except OSError as exc:
            raise unreadable(str(path), exc) from exc
        return self.embed_bytes(data, max_pixels, name=str(path), started=t0)

    def embed_bytes(
        self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "upload", started: float | None = None
    ) -> tuple[np.ndarray, QueryTimings]:
        """Decoding is reduced to what the resize keeps and uses extraction's decoder (`decode_pixels`), so its cost
        is bounded by max_pixels."""
        t0 = started if started is not None else time.perf_counter()
        pixels = decode_pixels(data, max_pixels=max_pixels, name=name, min_side=self.embedder.preprocess.resize_size)
        return self.embed_image(pixels.array, t0)


SINGLE_IMAGE_REPEATS = 5


def single_image_ms(embedder: Embedder, path: str, repeats: int = SINGLE_IMAGE_REPEATS) -> float:
    """Median ms to decode, preprocess and embed one image alone (batch 1), after one warm-up run.

    A query image pays this, not the per-image share of a batch-64 extraction, which is a throughput figure.
    """
    transform = build_transform(embedder.preprocess)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        pixels = decode_pixels(read_image_bytes(path), name=path, min_side=embedder.preprocess.resize_size)
        embedder.embed(transform(pixels.array)[None])
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times[1:]), 3)
