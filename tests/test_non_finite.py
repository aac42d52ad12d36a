"""Nothing non-finite is ever kept, written or searched (issue 22 §1), whatever a backend does on this CPU.

NaN is injected: a chosen backend's output is replaced by NaN before it reaches `normalise`, as OpenVINO bf16
did for CLIP on an Intel Xeon with AMX. The checks are the product's guarantees, so they hold on any CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lookalike
from lookalike.embed import extract as extract_module
from lookalike.embed.backends import Choice, NonFiniteEmbeddings, normalise
from lookalike.embed.calibrate import CALIBRATION_IMAGES, calibrate
from lookalike.embed.models import Embedder, load_model
from lookalike.embed.query import QueryEmbedder
from lookalike.errors import LookalikeError

from .conftest import random_pixels

POISONED = Choice("openvino", "fp32")  # the OpenVINO candidate that runs on every x86 CPU (bf16 needs support)


class NaNAfter:
    """A backend that returns NaN for batches larger than the calibration's, from its `after`-th such batch on."""

    def __init__(self, run, after: int = 0, min_batch: int = 1):
        self.run, self.after, self.min_batch, self.seen = run, after, min_batch, 0
        self.choice = run.choice
        self.threads, self.streams = getattr(run, "threads", None), getattr(run, "streams", None)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = self.run(images)
        if len(images) < self.min_batch:
            return out
        self.seen += 1
        if self.seen <= self.after:
            return out
        poisoned = out.copy()
        poisoned[::2] = np.nan  # every other row, as a partly broken kernel would
        return normalise(poisoned, self.choice)


def poison(monkeypatch, target: Choice, after: int = 0, min_batch: int = 1) -> None:
    """Every Embedder's backend for `target` returns NaN (for batches of at least `min_batch` images, after `after`)."""
    original = Embedder.backend

    def backend(self, choice, threads=None, streams=1):
        run = original(self, choice, threads, streams)
        if choice != target:
            return run
        key = ("poisoned", choice, threads, streams)
        if key not in self._backends:
            self._backends[key] = NaNAfter(run, after, min_batch)
        return self._backends[key]

    monkeypatch.setattr(Embedder, "backend", backend)


def test_normalise_refuses_nan_and_inf_and_names_the_backend():
    rows = np.ones((4, 8), np.float32)
    rows[1, 3], rows[3, 0] = np.nan, np.inf
    with pytest.raises(NonFiniteEmbeddings, match=r"openvino bf16 produced non-finite embeddings .* for 2 of 4"):
        normalise(rows, Choice("openvino", "bf16"))
    # overflow in the norm itself is caught too: finite rows whose squares overflow float32
    with pytest.raises(NonFiniteEmbeddings):
        normalise(np.full((1, 4), 3e38, np.float32))
    np.testing.assert_allclose(np.linalg.norm(normalise(np.ones((2, 8))), axis=1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_calibration_rejects_a_nan_candidate_and_records_why(monkeypatch):
    embedder = load_model("resnet18", "random", image_size=32, seed=3)
    x = random_pixels(CALIBRATION_IMAGES, 32)
    poison(monkeypatch, POISONED)
    choice, measured, _ = calibrate(embedder, x, backend="openvino", precision="auto")
    by = {Choice(c.backend, c.precision): c for c in measured}
    assert choice != POISONED
    assert not by[POISONED].kept and "non-finite" in by[POISONED].note and "NaN" in by[POISONED].note
    out = embedder.backend(choice)(x)  # what was chosen embeds finite rows
    assert np.isfinite(out).all()


def test_a_requested_backend_that_gives_nan_stops_calibration_with_the_alternative(monkeypatch):
    embedder = load_model("resnet18", "random", image_size=32, seed=3)
    poison(monkeypatch, POISONED)
    with pytest.raises(NonFiniteEmbeddings) as caught:
        calibrate(embedder, random_pixels(CALIBRATION_IMAGES, 32), backend="openvino", precision="fp32")
    message = str(caught.value)
    assert "openvino fp32" in message and "--backend torch --precision fp32" in message
    assert len(message.splitlines()) == 1


def rows_of(gallery) -> dict[str, np.ndarray]:
    return dict(zip(gallery.paths, np.asarray(gallery.embeddings)))


@pytest.mark.slow
def test_a_forced_backend_that_gives_nan_mid_run_stops_keeps_its_shards_and_resumes_with_another(
    monkeypatch, tiny_collection, tmp_path
):
    out = tmp_path / "g"
    options = dict(image_size=32, batch_size=16, chunk_size=16, threads=1, decode_threads=1)
    # calibration batches are at most 8 images; the third 16-image batch of the run (shard 2) is NaN
    poison(monkeypatch, POISONED, after=2, min_batch=CALIBRATION_IMAGES + 1)
    with pytest.raises(LookalikeError) as caught:
        lookalike.extract(tiny_collection, out, "resnet18", "random", backend="openvino", precision="fp32", **options)
    message = str(caught.value)
    assert "openvino fp32" in message and "requested" in message and "--backend torch --precision fp32" in message
    assert "2 of" in message and len(message.splitlines()) == 1
    saved = sorted((out / ".partial").glob("shard-*.npz"))
    assert len(saved) == 2 and not (out / "manifest.json").exists()
    kept = {}
    for shard in saved:
        with np.load(shard) as z:
            assert np.isfinite(z["embeddings"]).all()
            kept[shard.name] = z["embeddings"].copy()

    monkeypatch.undo()  # the user reruns with the alternative the message named
    gallery = lookalike.extract(
        tiny_collection, out, "resnet18", "random", backend="torch", precision="fp32", **options
    )
    vectors = np.asarray(gallery.embeddings)
    assert np.isfinite(vectors).all() and gallery.count == 120
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # the saved shards were kept, not embedded again: their rows are the openvino bytes (rows follow shard order here)
    np.testing.assert_array_equal(vectors[:32], np.concatenate([kept[s.name] for s in saved]))
    manifest = json.loads((out / "manifest.json").read_text())
    inference = manifest["model"]["inference"]
    assert inference["backend"] == "torch" and "openvino fp32 embedded chunks 0-1" in inference["reason"]
    # and the rest equals an independent torch fp32 extraction of the same images
    fresh = lookalike.extract(
        tiny_collection, tmp_path / "fresh", "resnet18", "random", backend="torch", precision="fp32", **options
    )
    theirs, ours = rows_of(fresh), rows_of(gallery)
    assert all(np.array_equal(ours[p], theirs[p]) for p in gallery.paths[32:])


@pytest.mark.slow
def test_the_calibrations_choice_giving_nan_mid_run_is_replaced_and_the_gallery_is_finite(
    monkeypatch, tiny_collection, tmp_path
):
    options = dict(image_size=32, batch_size=16, chunk_size=16, threads=1, decode_threads=1)
    chosen = POISONED  # not the reference: torch fp32 giving NaN has no stand-in, and a forced run stops instead
    poison(monkeypatch, chosen, after=1, min_batch=CALIBRATION_IMAGES + 1)
    measure = extract_module.calibrate

    def chooses_it(*args, **kwargs):  # whatever the timings rank first on this CPU, the calibration picks `chosen`
        choice, measured, reason = measure(*args, **kwargs)
        return (chosen, measured, reason) if chosen not in kwargs.get("exclude", ()) else (choice, measured, reason)

    monkeypatch.setattr(extract_module, "calibrate", chooses_it)
    gallery = lookalike.extract(tiny_collection, tmp_path / "g", "resnet18", "random", **options)
    vectors = np.asarray(gallery.embeddings)
    assert np.isfinite(vectors).all() and gallery.count == 120
    inference = json.loads((Path(gallery.path) / "manifest.json").read_text())["model"]["inference"]
    assert Choice(inference["backend"], inference["precision"]) != chosen
    assert f"{chosen} embedded chunks 0-0 before it gave NaN or inf" in inference["reason"]


def test_a_query_never_embeds_to_nan(monkeypatch, tiny_collection, tmp_path):
    gallery = lookalike.extract(
        tiny_collection, tmp_path / "g", "resnet18", "random", image_size=32, backend="openvino", precision="fp32"
    )
    poison(monkeypatch, POISONED)
    embedder = QueryEmbedder(gallery)
    path = gallery.paths[5]
    vector, _ = embedder.embed_path(path)
    assert np.isfinite(vector).all()
    # torch fp32 stood in: within the calibration's cosine of the gallery's own row for that file
    assert float(vector[0] @ np.asarray(gallery.embeddings[5])) >= 0.999
