"""Extraction: unit-norm embeddings of the stated size, bad files skipped and reported, resumable, refusing
mismatches."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lookalike.data.synthetic import generate_collection
from lookalike.embed.extract import ExtractConfig, extract
from lookalike.embed.models import MODELS, load_model
from lookalike.errors import GalleryError, WeightsUnavailableError
from lookalike.gallery import open_gallery
from lookalike.testing import make_bad_images

from .conftest import kill_after_shards, manifest_json, random_pixels, run_main, without_measurements


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_gives_unit_norm_embeddings_of_its_dimension(name):
    embedder = load_model(name, "random", image_size=32 if name != "clip" else 64)
    out = embedder.embed(random_pixels(3, embedder.preprocess.image_size))
    assert out.shape == (3, MODELS[name].dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_random_weights_are_seeded_and_labelled():
    a = load_model("resnet18", "random", image_size=32, seed=3)
    b = load_model("resnet18", "random", image_size=32, seed=3)
    x = random_pixels(2, 32)
    np.testing.assert_array_equal(a.embed(x), b.embed(x))
    assert "RANDOM" in a.weights.label()
    assert not a.weights.is_trained


def test_offline_pretrained_weights_give_an_error_that_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; the hub is unreachable here
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline, raising=False
    )
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-f37072fd\.pth.*--weights"):
        load_model("resnet18", "pretrained")


def test_weights_from_a_file_are_loaded_and_hashed(tmp_path):
    source = load_model("resnet18", "random", image_size=32, seed=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.module.state_dict().items()}}, path)
    loaded = load_model("resnet18", str(path), image_size=32)
    x = random_pixels(2, 32)
    np.testing.assert_allclose(loaded.embed(x), source.embed(x), atol=1e-6)
    assert loaded.weights.kind == "file" and len(loaded.weights.sha256) == 64


def _config(data: Path, out: Path, **kw) -> ExtractConfig:
    """Backend and precision named: `auto` would calibrate (seconds) in every extraction of these tests."""
    settings = dict(model="resnet18", weights="random", image_size=32, batch_size=8, chunk_size=16)
    return ExtractConfig(data=str(data), out=str(out), **{**settings, "backend": "torch", "precision": "fp32", **kw})


def test_bad_images_are_skipped_and_reported(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=6, val_per_class=2)
    wnid = (data / "wnids.txt").read_text().split()[0]
    bad = make_bad_images(data / "train" / wnid / "images")
    gallery = extract(_config(data, tmp_path / "g"), progress=False)
    skipped = manifest_json(gallery)["skipped"]
    assert skipped["count"] == len(bad)
    assert {Path(f["path"]).name for f in skipped["files"]} == {p.name for p in bad}
    assert gallery.count == 16
    assert not any(Path(p).name in {b.name for b in bad} for p in gallery.paths)


def test_gallery_files_and_manifest(tiny_gallery):
    gallery = open_gallery(tiny_gallery)
    manifest = manifest_json(gallery)
    assert gallery.embeddings.shape == (120, 512)
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, rtol=1e-5)
    meta = pq.read_table(tiny_gallery / "metadata.parquet").to_pydict()
    assert meta["id"] == list(range(120))
    assert set(meta["split"]) == {"train", "val"}
    assert manifest["model"]["weights"]["kind"] == "random"
    assert manifest["data"]["synthetic"] is True
    assert manifest["model"]["preprocess"]["image_size"] == 32
    assert "torch" in manifest["environment"]["versions"]
    assert "RANDOM" in gallery.provenance() and "GENERATED" in gallery.provenance()
    assert not (tiny_gallery / ".partial").exists()
    assert not list(tiny_gallery.glob(".*.tmp"))


@pytest.mark.slow
def test_a_gallery_from_other_arguments_is_refused_unless_overwrite(tmp_path, tiny_collection):
    out = tmp_path / "g"
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=4, val_per_class=1)
    extract(_config(data, out), progress=False)
    before = (out / "embeddings.npy").read_bytes()
    other = replace(_config(data, out), model="mobilenet")
    with pytest.raises(GalleryError, match=r"model='resnet18' \(now 'mobilenet'\).*--overwrite"):
        extract(other, progress=False)
    assert (out / "embeddings.npy").read_bytes() == before  # nothing lost
    gallery = extract(ExtractConfig(**{**other.__dict__, "overwrite": True}), progress=False)
    assert gallery.dim == 1280


def test_same_arguments_on_a_complete_gallery_do_nothing(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=4, val_per_class=1)
    first = extract(_config(data, tmp_path / "g"), progress=False)
    again = extract(_config(data, tmp_path / "g"), progress=False)
    assert again.manifest.created == first.manifest.created


@pytest.mark.slow
@pytest.mark.parametrize("backend,precision", [("torch", "fp32"), ("openvino", "int8")])
def test_killed_extraction_resumes_to_the_same_gallery(tmp_path, backend, precision):
    """A separate uninterrupted run makes the same choice only when it is given: both name backend and precision."""
    data = generate_collection(tmp_path / "data", n_classes=4, train_per_class=20, val_per_class=4)  # 6 shards of 16
    args = [
        "extract",
        "--data",
        data,
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--image-size",
        "32",
        "--bs",
        "8",
        "--chunk-size",
        "16",
        "--decode-threads",
        "0",
        "--backend",
        backend,
        "--precision",
        precision,
        *(["--seed", "12"] if precision == "int8" else []),
    ]  # int8: see test_backends
    run_main(*args, "--out", tmp_path / "whole")  # the real process is what gets killed; the rest runs in this one

    out = tmp_path / "resumed"
    kill_after_shards(args, out)
    done = len(list((out / ".partial").glob("shard-*.npz")))
    assert not (out / "manifest.json").exists() and done < 6

    with pytest.raises(GalleryError, match="rerun the same `lookalike extract`"):
        open_gallery(out)
    run_main(*args, "--out", out)
    whole, resumed = open_gallery(tmp_path / "whole"), open_gallery(out)
    np.testing.assert_array_equal(np.asarray(resumed.embeddings), np.asarray(whole.embeddings))
    assert pq.read_table(out / "metadata.parquet").equals(pq.read_table(tmp_path / "whole" / "metadata.parquet"))
    inference = manifest_json(resumed)["model"]["inference"]
    assert inference["backend"] == backend
    # OpenVINO's throughput mode picks its streams at the first run; the resume reran them as recorded
    assert (inference["streams"] or 0) >= 1 if backend == "openvino" else inference["streams"] is None
    assert without_measurements(manifest_json(resumed)) == without_measurements(manifest_json(whole))


def test_interrupted_run_with_other_arguments_is_refused(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=4, val_per_class=1)
    partial = tmp_path / "g" / ".partial"
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps({"identity": {"model": "clip"}, "records_digest": "x"}))
    with pytest.raises(GalleryError, match="unfinished extraction"):
        extract(_config(data, tmp_path / "g"), progress=False)
    assert (partial / "state.json").exists()


def test_every_image_is_read_once_the_calibrations_included(tmp_path, monkeypatch):
    """The images the calibration decodes are handed to the run, not decoded a second time."""
    import lookalike.embed.extract as extraction

    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=10, val_per_class=2)
    reads: list[str] = []
    real = extraction.read_image_bytes
    monkeypatch.setattr(extraction, "read_image_bytes", lambda path: reads.append(str(path)) or real(path))
    gallery = extract(
        ExtractConfig(data=str(data), out=str(tmp_path / "g"), weights="random", image_size=32, backend="torch"),
        progress=False,
    )
    assert len(gallery.paths) == 24
    assert sorted(reads) == sorted(str(p) for p in gallery.paths)


@pytest.mark.slow
def test_the_default_batch_size_is_the_devices_for_a_new_gallery_and_the_gallerys_own_after(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=6, val_per_class=1)
    fresh = extract(
        ExtractConfig(data=str(data), out=str(tmp_path / "new"), weights="random", image_size=32, backend="torch"),
        progress=False,
    )
    written = manifest_json(fresh)
    assert written["extract"]["identity"]["batch_size"] is None  # not given: the calibration decides
    # 14 images: too few to time batch sizes on, so the documented CPU default, and the manifest says why
    assert written["model"]["inference"]["batch_size"] == 16 == written["timings"]["batch_size"]
    assert written["model"]["inference"]["batching"].startswith("the cpu default; not measured")

    explicit = ExtractConfig(
        data=str(data), out=str(tmp_path / "old"), weights="random", image_size=32, backend="torch", batch_size=5
    )
    rows = len(extract(explicit, progress=False).paths)
    generate_collection(tmp_path / "more", n_classes=1, train_per_class=3, val_per_class=0, seed=7)
    folder = next(data.glob("train/*/images"))
    # three new images: an update, not "other arguments"
    for i, path in enumerate(sorted((tmp_path / "more").rglob("*.JPEG"))):
        (folder / f"added_{i}.JPEG").write_bytes(path.read_bytes())
    updated = extract(replace(explicit, batch_size=None), progress=False)
    assert len(updated.paths) == rows + 3
    assert manifest_json(updated)["extract"]["identity"]["batch_size"] == 5


def test_decode_threads_follow_the_stage_times_and_never_run_more_at_once_than_set():
    """DecodePace: ceil(1.25 × decode CPU time per batch ÷ the model's time per batch), within 1..most, from moving
    averages; and its gate lets no more than that many batches decode at once."""
    import math
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.embed.extract import DECODE_HEADROOM, PACE_SMOOTHING, DecodePace

    pace = DecodePace(1, 4)
    decode, model = None, None
    for (
        decode_s,
        model_s,
    ) in [(0.1, 0.05)] * 6 + [(0.01, 0.05)] * 12 + [(1.0, 0.01)] * 3:
        pace.observe(decode_s, model_s)
        decode = decode_s if decode is None else (1 - PACE_SMOOTHING) * decode + PACE_SMOOTHING * decode_s
        model = model_s if model is None else (1 - PACE_SMOOTHING) * model + PACE_SMOOTHING * model_s
        assert pace.threads == min(4, max(1, math.ceil(DECODE_HEADROOM * decode / model)))
    summary = pace.summary()
    assert (summary["start"], summary["min"], summary["max"], summary["final"]) == (1, 1, 4, 4)

    pace.threads, running, most = 2, [0], [0]
    lock = threading.Lock()

    def work(_):
        with pace:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(16)))
    assert most[0] == 2


@pytest.mark.slow
def test_batch_sizes_are_measured_for_a_large_job_and_the_rows_match_the_float_pipeline(tmp_path, monkeypatch):
    """A job large enough (the share lowered here) times each batch size sustained; the smallest within 97% of the
    best rate wins, and the manifest records the rates and why. The rows, embedded from uint8 pixels normalised
    inside the model, match an independent float pipeline (PIL, torchvision's float transforms, the module in fp32)."""
    from torchvision.transforms import v2 as T

    import lookalike.embed.calibrate as calibration

    monkeypatch.setattr(calibration, "SUSTAINED_SHARE", 1e6)
    monkeypatch.setitem(calibration.BATCH_SIZES, "cpu", (4, 8))
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=8, val_per_class=0)
    config = ExtractConfig(data=str(data), out=str(tmp_path / "g"), weights="random", image_size=32, backend="torch")
    gallery = extract(replace(config, precision="fp32"), progress=False)
    inference = manifest_json(gallery)["model"]["inference"]
    rates = {int(size): rate for size, rate in inference["batch_rates"].items()}
    assert set(rates) == {4, 8} and all(rate > 0 for rate in rates.values())
    best = max(rates.values())
    assert inference["batch_size"] == min(s for s, r in rates.items() if r >= 0.97 * best)
    assert "sustained img/s by batch size" in inference["batching"]
    assert manifest_json(gallery)["timings"]["batch_size"] == inference["batch_size"]

    embedder = load_model("resnet18", "random", image_size=32)
    p = embedder.preprocess
    floats = T.Compose(
        [
            T.PILToTensor(),
            T.Resize(p.resize_size, antialias=True),
            T.CenterCrop(p.image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(p.mean, p.std),
        ]
    )
    with torch.no_grad():
        x = torch.stack([floats(Image.open(path).convert("RGB")) for path in gallery.paths])
        reference = embedder.module(x).flatten(1).numpy()
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert (np.asarray(gallery.embeddings) * reference).sum(axis=1).min() >= 0.999
