"""Inference backends (issue 8): equivalence to fp32 torch, the converted-model cache, calibration, fallback, the query
path."""

from __future__ import annotations

import hashlib
import logging
import sys
import warnings

import numpy as np
import pytest
import torch

import lookalike
from lookalike.data.synthetic import generate_collection
from lookalike.embed.backends import BackendUnavailable, Choice, NonFiniteEmbeddings
from lookalike.embed.cache import cache_root
from lookalike.embed.calibrate import MIN_COSINE, calibrate
from lookalike.embed.extract import split_cores
from lookalike.embed.models import MODELS, load_model

from .conftest import random_pixels, run_main

SIZES = {"resnet18": 32, "mobilenet": 32, "clip": 64}


def fp32_reference(embedder, pixels: torch.Tensor) -> np.ndarray:
    """Independent of the backends: the uint8 pixels normalised here in float64 ((x / 255 − mean) / std, NCHW), the
    module itself in fp32, then numpy normalisation."""
    p = embedder.preprocess
    x = (pixels.numpy().astype(np.float64) / 255 - np.array(p.mean)) / np.array(p.std)
    with torch.no_grad():
        out = embedder.module(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).float().flatten(1).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.slow  # an OpenVINO conversion of each model, CLIP's ~20 s
@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_backends_match_the_reference_and_a_low_precision_is_close_or_never_kept(name):
    """The guarantee on any CPU, not one CPU's numerics. fp32 (torch, and OpenVINO's conversion in both its modes)
    matches an independent fp32 reference row by row. A low precision may not: on an Intel Xeon with AMX, OpenVINO bf16
    gave all-NaN CLIP embeddings for these very weights (seed 1). Then it raises NonFiniteEmbeddings or scores below
    MIN_COSINE, and the calibration does not keep it."""
    embedder = load_model(name, "random", image_size=SIZES[name], seed=1)
    x = random_pixels(6, SIZES[name])
    reference = fp32_reference(embedder, x)
    non_finite = set()
    for choice in (
        Choice("torch", "fp32"),
        Choice("torch", "bf16"),
        Choice("openvino", "fp32"),
        Choice("openvino", "bf16"),
    ):
        # OpenVINO also in its throughput mode, as extraction runs it: the batch split over two streams at once
        for run in (
            embedder.backend(choice),
            *([embedder.backend(choice, 2, streams=2)] if choice.backend == "openvino" else []),
        ):
            try:
                out = run(x)
            except NonFiniteEmbeddings:
                assert choice.precision != "fp32", choice
                non_finite.add(choice)
                continue
            assert out.shape == (6, MODELS[name].dim) and out.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
            # row by row against the reference: a part put back in the wrong place would fail here
            if choice.precision == "fp32":
                assert (out * reference).sum(axis=1).min() >= MIN_COSINE, (choice, getattr(run, "streams", 1))
    assert embedder.backend(Choice("openvino", "fp32"), 2, streams=2).streams == 2
    _, measured, _ = calibrate(embedder, x, job_images=1)  # int8 only if already quantised: the test does not wait
    kept = [Choice(c.backend, c.precision) for c in measured if c.kept]
    for choice in kept:  # whatever it keeps embeds finite rows within the bound, by the independent reference
        out = embedder.backend(choice)(x[:4])
        assert np.isfinite(out).all() and (out * reference[:4]).sum(axis=1).min() >= MIN_COSINE, choice
    assert not non_finite & set(kept)


@pytest.mark.slow
def test_openvino_streams_embed_batches_in_order_and_as_one_call_would():
    """Extraction's pipelined loop (each batch whole on one of two streams, two at once) against one call per batch
    (split over the streams): the same bytes, the same order, and a batch of failed images (None) passed through."""
    from lookalike.embed.backends import map_batches

    embedder = load_model("resnet18", "random", image_size=32, seed=1)  # converted above, by the fp32 test
    run = embedder.backend(Choice("openvino", "bf16"), 2, streams=2)
    batches = [
        random_pixels(5, 32),
        None,
        random_pixels(1, 32),
        random_pixels(8, 32),
        random_pixels(3, 32),
    ]
    out = list(map_batches(run, ((f"batch {i}", x) for i, x in enumerate(batches))))
    assert [tag for tag, _ in out] == [f"batch {i}" for i in range(len(batches))]
    for (_, got), x in zip(out, batches):
        if x is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, run(x))
            assert (got * fp32_reference(embedder, x)).sum(axis=1).min() >= MIN_COSINE


def conversion_posts(monkeypatch, tmp_path, consent: str | None) -> list:
    """The processes OpenVINO's telemetry starts while lookalike converts a model afresh (a one-layer one: every
    conversion and quantisation goes through `cached_ir`), for a user whose consent file holds `consent` (None: no
    file, OpenVINO's default is then to post) and who is not on a CI machine."""
    import importlib
    import multiprocessing

    import openvino
    import openvino_telemetry

    from lookalike.embed import cache

    home = tmp_path / f"home-{consent}"
    if consent is not None:
        (home / "intel").mkdir(parents=True)
        (home / "intel" / "openvino_telemetry").write_text(consent)
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(cache, "_telemetry_consent", [])  # read again, from this HOME
    for name in cache._TELEMETRY_MODULES:  # as OpenVINO has them, whatever an earlier conversion changed
        monkeypatch.setattr(importlib.import_module(name), "tm", openvino_telemetry)
    # OpenVINO reads the consent when its telemetry is set up for another tool: as in a new process, it reads it now
    monkeypatch.setattr(openvino_telemetry.Telemetry().backend, "app_name", "another tool")
    started = []
    monkeypatch.setattr(multiprocessing.Process, "start", lambda process: started.append(process))  # never posts
    layer = torch.nn.Linear(4, 2).eval()
    folder = tmp_path / f"converted-{consent}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices, about OpenVINO's internals
        cache.cached_ir(folder, lambda: openvino.convert_model(layer, example_input=torch.zeros(1, 4)), "no conversion")
    assert (folder / "model.xml").is_file()
    return started


def test_a_conversion_posts_no_telemetry_unless_the_user_opted_in(monkeypatch, tmp_path):
    """OpenVINO posts usage telemetry by default, forking the whole process for each event (0.5 s and a CPU-second per
    conversion here): lookalike's conversions post none, unless the user opted in with OpenVINO's `opt_in_out`."""
    assert conversion_posts(monkeypatch, tmp_path, None) == []
    assert conversion_posts(monkeypatch, tmp_path, "0") == []
    assert conversion_posts(monkeypatch, tmp_path, "1")  # theirs to decide: OpenVINO posts as it would


@pytest.mark.slow
def test_converted_models_are_cached_on_disk_and_reused(monkeypatch):
    import openvino

    first = load_model("resnet18", "random", image_size=32, seed=7)
    x = random_pixels(2, 32)
    expected = first.backend(Choice("openvino", "fp32"))(x)
    folders = {p.name for p in (cache_root() / "openvino").iterdir() if p.name.startswith("resnet18-")}

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    # a new process would see the same: a fresh model object
    again = load_model("resnet18", "random", image_size=32, seed=7)
    np.testing.assert_array_equal(again.backend(Choice("openvino", "fp32"))(x), expected)
    assert {p.name for p in (cache_root() / "openvino").iterdir() if p.name.startswith("resnet18-")} == folders

    # other weights: another cache entry, so a conversion
    other = load_model("resnet18", "random", image_size=32, seed=8)
    with pytest.raises(BackendUnavailable, match="could not convert"):
        other.backend(Choice("openvino", "fp32"))


class VirtualClock:
    """The calibration's clock in the tests of fake backends: a fake's work advances it by the seconds the test chose,
    so the rates the calibration measures are exactly those however busy the machine is (the suite runs in parallel
    workers, beside servers, Ray and a browser)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> VirtualClock:
    import lookalike.embed.calibrate as calibrate_module

    virtual = VirtualClock()
    monkeypatch.setattr(calibrate_module, "time", virtual)
    return virtual


class FakeEmbedder:
    """Backends with known speed and known error: each output is the reference turned by a chosen angle."""

    device = "cpu"

    def __init__(self, behaviour: dict[Choice, tuple[float, float] | None], clock: VirtualClock):
        self.behaviour = behaviour  # choice → (cosine to the reference, seconds per 8 images), None = cannot run
        self.clock = clock

    def int8_cached(self) -> bool:
        return True

    def backend(self, choice: Choice, threads=None, streams=1):
        if self.behaviour.get(choice) is None:
            raise BackendUnavailable(f"{choice} is not here")
        cosine, seconds = self.behaviour[choice]

        def run(x):
            self.clock.sleep(seconds * len(x) / 8)
            return np.tile(np.array([cosine, np.sqrt(1 - cosine**2), 0, 0], np.float32), (len(x), 1))

        return run


def test_calibration_keeps_only_candidates_within_cosine_and_picks_the_fastest(clock):
    x = torch.zeros(8, 3, 4, 4)
    fake = FakeEmbedder(
        {
            Choice("torch", "fp32"): (1.0, 0.02),
            Choice("torch", "bf16"): (0.99, 0.001),  # fastest, but changes the embeddings
            Choice("openvino", "fp32"): (1.0, 0.01),
            Choice("openvino", "bf16"): (0.9995, 0.005),
        },
        clock,
    )
    choice, measured, _ = calibrate(fake, x)
    assert choice == Choice("openvino", "bf16")
    by = {(c.backend, c.precision): c for c in measured}
    assert not by["torch", "bf16"].kept and "cosine" in by["torch", "bf16"].note
    assert by["openvino", "bf16"].cosine_min == pytest.approx(0.9995, abs=1e-6)
    assert by["openvino", "bf16"].images_per_second > by["openvino", "fp32"].images_per_second
    # An explicit precision is honoured even below the threshold; an explicit backend restricts the candidates.
    assert calibrate(fake, x, precision="bf16", backend="torch")[0] == Choice("torch", "bf16")
    assert calibrate(fake, x, backend="openvino")[0] == Choice("openvino", "bf16")


def test_a_hiccup_in_one_timed_call_does_not_decide_the_choice(clock):
    """The two leaders are timed twice: openvino bf16's first full call stalls (other work took the core), its second
    does not."""
    x = torch.zeros(8, 3, 4, 4)
    calls = {"openvino": 0}

    class Hiccup(FakeEmbedder):
        def backend(self, choice: Choice, threads=None, streams=1):
            run = super().backend(choice, threads, streams)
            if choice != Choice("openvino", "bf16"):
                return run

            def stalled_once(images):
                calls["openvino"] += 1
                # warm-up, probe, then the first full timing: 8 images at 670 img/s, not 1600
                if calls["openvino"] == 3:
                    self.clock.sleep(0.007)
                return run(images)

            return stalled_once

    fake = Hiccup(
        {
            Choice("torch", "fp32"): (1.0, 0.05),
            Choice("torch", "bf16"): (0.9999, 0.01),
            Choice("openvino", "bf16"): (0.9999, 0.005),
        },
        clock,
    )
    choice, measured, _ = calibrate(fake, x, precision="auto")
    assert calls["openvino"] == 4 and choice == Choice("openvino", "bf16")


def test_a_backend_that_cannot_run_falls_back_to_torch_with_one_sentence(caplog, clock):
    x = torch.zeros(8, 3, 4, 4)
    fake = FakeEmbedder({Choice("torch", "fp32"): (1.0, 0.001), Choice("torch", "bf16"): (1.0, 0.0)}, clock)
    with caplog.at_level(logging.WARNING):
        choice, measured, reason = calibrate(fake, x, backend="openvino")
    assert choice.backend == "torch" and "could not run" in reason
    assert "no openvino backend could run here, so torch runs instead" in caplog.text
    assert all(c.note.startswith("unavailable") for c in measured if c.backend == "openvino")


def test_extraction_without_openvino_installed_falls_back_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails, as when it is not installed
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=6, val_per_class=1)
    with caplog.at_level(logging.WARNING):
        g = lookalike.extract(
            data, tmp_path / "g", model="resnet18", weights="random", image_size=32, backend="openvino", progress=False
        )
    inference = g.manifest.model.inference
    assert inference.backend == "torch"
    assert any("openvino is not installed (pip install openvino)" in c.note for c in inference.candidates)
    assert "no openvino backend could run here, so torch runs instead" in caplog.text


def generated_pixels(embedder, n: int = 6, seed: int = 5) -> torch.Tensor:
    """Images in the range real ones have (int8's activation ranges are set on images, so noise is no test of it)."""
    from lookalike.data.images import load_rgb
    from lookalike.embed.transforms import build_transform

    root = generate_collection(
        cache_root().parent / f"int8-test-images-{seed}",
        n_classes=2,
        train_per_class=n // 2,
        val_per_class=0,
        seed=seed,
    )
    transform = build_transform(embedder.preprocess)
    return torch.stack([transform(load_rgb(p)) for p in sorted(root.rglob("*.JPEG"))])


@pytest.mark.slow  # quantises twice
def test_int8_stays_within_cosine_is_quantised_once_and_is_the_same_model_from_an_empty_cache(monkeypatch, tmp_path):
    """A query or a resumed run on another machine rebuilds the int8 model: it must come out byte for byte the same."""
    import nncf

    from lookalike.embed.quantise import int8_folder

    def weights_digest(embedder) -> str:  # the IR's numbers; its XML names nodes by a per-process counter
        return hashlib.sha256((int8_folder(embedder.identity) / "model.bin").read_bytes()).hexdigest()

    embedder = load_model("resnet18", "random", image_size=32, seed=1)
    x = generated_pixels(embedder)
    out = embedder.backend(Choice("openvino", "int8"))(x)
    assert (out * fp32_reference(embedder, x)).sum(axis=1).min() >= MIN_COSINE
    digest = weights_digest(embedder)

    def no_quantisation(*args, **kwargs):
        raise AssertionError("quantised again")

    with monkeypatch.context() as patch:
        patch.setattr(nncf, "quantize", no_quantisation)
        again = load_model("resnet18", "random", image_size=32, seed=1)
        assert again.int8_cached()
        np.testing.assert_array_equal(again.backend(Choice("openvino", "int8"))(x), out)

    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "empty-cache"))
    fresh = load_model("resnet18", "random", image_size=32, seed=1)
    assert not fresh.int8_cached()
    np.testing.assert_array_equal(fresh.backend(Choice("openvino", "int8"))(x), out)
    assert weights_digest(fresh) == digest


@pytest.mark.slow
def test_int8_without_nncf_is_unavailable_with_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` now fails, as when it is not installed
    with pytest.raises(BackendUnavailable, match=r"int8 needs NNCF, which is not installed \(pip install nncf\)"):
        load_model("resnet18", "random", image_size=32, seed=9).backend(Choice("openvino", "int8"))
    with pytest.raises(BackendUnavailable, match="int8 with openvino only"):
        load_model("resnet18", "random", image_size=32, seed=9).backend(Choice("torch", "int8"))


def test_int8_is_tried_where_quantising_pays_off_or_costs_nothing(clock):
    from lookalike.embed.calibrate import QUANTISE_MIN_IMAGES

    x = torch.zeros(8, 3, 4, 4)
    behaviour = {
        Choice("torch", "fp32"): (1.0, 0.02),
        Choice("openvino", "bf16"): (0.9999, 0.01),
        Choice("openvino", "int8"): (0.9995, 0.004),
    }

    class NotQuantised(FakeEmbedder):
        def int8_cached(self) -> bool:
            return False

    choice, measured, _ = calibrate(NotQuantised(behaviour, clock), x, job_images=QUANTISE_MIN_IMAGES - 1)
    assert choice == Choice("openvino", "bf16")
    assert "not tried" in next(c.note for c in measured if c.precision == "int8")
    # large enough to pay off
    assert calibrate(NotQuantised(behaviour, clock), x, job_images=QUANTISE_MIN_IMAGES)[0] == Choice("openvino", "int8")
    # already quantised: free to try
    assert calibrate(FakeEmbedder(behaviour, clock), x, job_images=10)[0] == Choice("openvino", "int8")
    # asked for
    assert calibrate(NotQuantised(behaviour, clock), x, precision="int8", job_images=10)[0] == Choice(
        "openvino", "int8"
    )


def test_the_cores_go_where_the_work_is():
    # decoding is light: the model keeps every core
    assert split_cores(decode_ms=0.5, model_ms=5.0, cores=2)[:2] == (1, 2)
    assert split_cores(decode_ms=40.0, model_ms=2.0, cores=2)[:2] == (2, 1)  # large photos: decoding needs both
    assert split_cores(decode_ms=10.0, model_ms=5.0, cores=2)[:2] == (1, 1)
    # 12-Mpx JPEGs, a light model: decoding needs more than a core
    assert split_cores(decode_ms=36.0, model_ms=10.0, cores=2)[:2] == (2, 1)
    # … a heavy model: it needs more than a core
    assert split_cores(decode_ms=36.0, model_ms=25.0, cores=2)[:2] == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_query_embedded_by_the_server_matches_the_gallery_row_of_the_same_file(tmp_path, precision):
    from fastapi.testclient import TestClient

    from lookalike.serve import ServerConfig, create_app

    data = generate_collection(tmp_path / "data", n_classes=3, train_per_class=8, val_per_class=2)
    out = tmp_path / "g"
    # int8 on weights of its own: once a model is quantised, every later job of it tries int8, and the other tests'
    # calibrations need not
    seed = ["--seed", "11"] if precision == "int8" else []
    run_main(
        "extract",
        "--data",
        data,
        "--out",
        out,
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--image-size",
        "32",
        "--backend",
        "openvino",
        "--precision",
        precision,
        *seed,
    )
    g = lookalike.open_gallery(out)
    assert (g.manifest.model.inference.backend, g.manifest.model.inference.precision) == ("openvino", precision)
    row = int(g.partition().database_ids[3])
    path = g.paths[row]
    with TestClient(create_app(out, ServerConfig()), base_url="http://127.0.0.1") as client:
        answer = client.post(
            "/api/search",
            files={"image": ("q.jpg", open(path, "rb").read(), "image/jpeg")},
            data={"method": "brute", "k": "3"},
        )
    assert answer.status_code == 200, answer.text
    top = answer.json()["results"][0]
    assert top["id"] == row and top["score"] >= 0.999


@pytest.mark.slow
def test_extraction_leaves_the_callers_thread_count_as_it_was(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=4, val_per_class=1)
    torch.set_num_threads(2)
    lookalike.extract(
        data,
        tmp_path / "g",
        model="resnet18",
        weights="random",
        image_size=32,
        backend="openvino",
        precision="fp32",
        progress=False,
    )
    # the job ran torch on one thread (OpenVINO infers), then gave the caller its two back
    assert torch.get_num_threads() == 2


def test_torch_threads_apply_for_the_block_and_are_restored_after_it_even_on_error():
    from lookalike import runtime

    before = torch.get_num_threads()
    with runtime.torch_threads(1):  # what an OpenVINO gallery's query preprocessing runs under
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), runtime.torch_threads(1):
        raise RuntimeError("a failed preprocessing")
    assert torch.get_num_threads() == before
