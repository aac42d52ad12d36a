"""The Ray engine: same gallery as the local engine, survives a dying worker and a killed job, same IVF index.

One local Ray cluster (`ray.init(num_cpus=2)`) serves the whole session; every Ray Data run
starts fresh model actors, which costs seconds on this machine, so one run carries the CLI, the resumed job,
the dying worker and the fsspec staging.
Data: a generated collection with undecodable files (the first batch holds nothing else),
random weights, 32-px input — small on purpose; none of this is a real model or real photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.data.synthetic import generate_collection
from lookalike.distributed import build_index_ray, extract_ray
from lookalike.distributed.cluster import Resources, plan_workers
from lookalike.distributed.extract import CRASH_HOOK
from lookalike.distributed.staging import ShardStore
from lookalike.distributed.writer import ShardWriter
from lookalike.embed.extract import (
    ExtractConfig,
    Job,
    Shard,
    decide_inference,
    ensure_state,
    extract,
    prepare,
    run_local,
)
from lookalike.embed.models import load_model
from lookalike.errors import GalleryError, LookalikeError, WeightsUnavailableError
from lookalike.gallery import EMBEDDINGS, METADATA, open_gallery
from lookalike.search import database_vectors, make_method
from lookalike.testing import make_bad_images

from .conftest import manifest_json, run_cli, run_main, without_measurements

ray = pytest.importorskip("ray")

# batches of 4 and shards of 12: several shards, a short last batch, an all-bad first batch
# Backend and precision given: each engine calibrates on its own, and `auto` could measure another winner.
SETTINGS = {
    "model": "resnet18",
    "weights": "random",
    "image_size": 32,
    "batch_size": 4,
    "chunk_size": 12,
    "backend": "openvino",
    "precision": "bf16",
}
CLI_SETTINGS = [
    "--model",
    "resnet18",
    "--weights",
    "random",
    "--image-size",
    "32",
    "--bs",
    "4",
    "--chunk-size",
    "12",
    "--backend",
    "openvino",
    "--precision",
    "bf16",
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """4 classes × (12 train + 3 val) 32-px images plus 5 undecodable files, all sorting first in class 0."""
    root = generate_collection(
        tmp_path_factory.mktemp("ray") / "data", n_classes=4, train_per_class=12, val_per_class=3, image_size=32
    )
    images = next(p for p in sorted((root / "train").iterdir()) if p.is_dir()) / "images"
    make_bad_images(images)
    (images / "aa_broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def local_gallery(collection, tmp_path_factory):
    """The reference: the local engine's gallery of `collection`."""
    return extract(
        ExtractConfig(data=str(collection), out=str(tmp_path_factory.mktemp("ray") / "local"), **SETTINGS),
        progress=False,
    )


def assert_same_gallery(ray_gallery, local_gallery) -> None:
    """File for file: embeddings and metadata byte-equal, manifests equal apart from timings."""
    for name in (EMBEDDINGS, METADATA):
        assert (ray_gallery.path / name).read_bytes() == (local_gallery.path / name).read_bytes(), name
    ours, theirs = (without_measurements(manifest_json(g)) for g in (ray_gallery, local_gallery))
    assert ours == theirs
    assert ray_gallery.manifest.timings["engine"] == "ray"
    assert not (ray_gallery.path / ".partial").exists()


def kill_after_two_shards(config: ExtractConfig) -> Job:
    """What a `lookalike extract` killed after two shards leaves behind, made by the local engine."""
    job = prepare(config)
    embedder = load_model(config.model, config.weights, config.image_size, "cpu", config.seed)
    ensure_state(job, embedder)
    decide_inference(job, embedder, decode_threads=0, threads=None)  # the local engine's choice, saved in the job state
    run_local(
        Job(job.config, job.collection, job.out, job.shards[:2], job.state), embedder, decode_threads=0, progress=False
    )
    assert len(list(job.partial.glob("shard-*.npz"))) == 2 and len(job.shards) > 4
    return job


@pytest.mark.slow
def test_the_cli_resumes_a_killed_job_on_ray_through_a_dying_worker_into_the_local_engines_gallery(
    ray_address, collection, local_gallery, tmp_path, monkeypatch
):
    """One Ray extraction carries what a user meets: a real `lookalike extract --engine ray` process joins the cluster
    by address, resumes a job the local engine left after two shards, loses a model actor (os._exit) the first time
    shard 3 comes by, stages its shards through fsspec, and writes the local engine's gallery byte for byte."""
    out = tmp_path / "ray"
    kill_after_two_shards(ExtractConfig(data=str(collection), out=str(out), **SETTINGS))
    marker, staging = tmp_path / "crashed", tmp_path / "staging"
    monkeypatch.setenv(CRASH_HOOK, f"3:{marker}")  # the CLI process inherits it and hands it to its model actors
    proc = run_cli(
        "extract",
        "--data",
        collection,
        "--out",
        out,
        *CLI_SETTINGS,
        "--engine",
        "ray",
        "--address",
        ray_address,
        "--actors",
        "2",
        "--staging",
        f"file://{staging}",
    )
    assert "RANDOM weights" in proc.stdout and "GENERATED data" in proc.stdout
    assert marker.is_file(), "no worker died: the test did not test anything"
    gallery = open_gallery(out)
    assert_same_gallery(gallery, local_gallery)
    assert len(gallery.manifest.skipped) == 5
    assert gallery.manifest.timings["actors"] == 2 and gallery.manifest.timings["resumed_shards"] == 2
    assert not staging.exists(), "staging should be removed once the gallery is committed"

    # the real process joined the cluster above; this one is already connected to it
    run_main("index", "--gallery", out, "--method", "ivf", "--nlist", "4", "--engine", "ray", "--address", ray_address)
    info = json.loads((out / "indexes" / "ivf" / "method.json").read_text())
    assert info["built_with"]["engine"] == "ray" and info["built_with"]["shards"] > 1
    query = gallery.paths[-1]  # a val image: held out of the index
    proc = run_main("search", "--gallery", out, "--image", query, "--method", "ivf", "-k", "3")
    results = [line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    # held-out queries are not in the index
    assert len(results) == 3 and not any(line.endswith(query) for line in results)


def test_shard_writer_writes_each_shard_once_whole_whatever_the_order(tmp_path):
    store = ShardStore(str(tmp_path / "shards"))
    shard = Shard(0, 10, 16)
    writer = ShardWriter(store, {0: shard}, dim=2)

    def row(batch: int, indices: list[int], bad: list) -> dict:
        vectors = np.array([[i, -i] for i in indices], np.float32).reshape(-1, 2)
        return {
            "shard": np.array([0]),
            "batch": np.array([batch]),
            "batches": np.array([3]),
            "indices": np.array([indices], dtype=object),
            "embeddings": np.array([vectors], dtype=object),
            "bad": np.array([json.dumps(bad)]),
            "seconds": np.array([0.5]),
        }

    out = writer(row(2, [14, 15], []))
    assert out["written"][0] == -1 and not store.shard_names()
    writer(row(0, [11], [[10, "broken"]]))
    writer(row(0, [11], [[10, "broken"]]))  # a retried batch delivered twice counts once
    assert not store.shard_names()
    out = writer(row(1, [], [[12, "a"], [13, "b"]]))  # a batch with no decodable image
    assert out["written"][0] == 0 and store.shard_names() == {shard.filename}
    with np.load(tmp_path / "shards" / shard.filename) as z:
        assert z["indices"].tolist() == [11, 14, 15]
        assert z["embeddings"][:, 0].tolist() == [11, 14, 15]
        assert z["bad_indices"].tolist() == [10, 12, 13]


def test_staging_store_writes_through_fsspec_and_refuses_another_jobs_shards():
    store = ShardStore("memory://lookalike-test/staging")
    store.clear()
    store.claim({"model": "resnet18"}, "digest-a", overwrite=False)
    store.write("shard-00000.npz", b"payload")
    assert store.shard_names() == {"shard-00000.npz"} and store.read("shard-00000.npz") == b"payload"
    store.claim({"model": "resnet18"}, "digest-a", overwrite=False)  # the same job: resume, keep the shards
    assert store.shard_names() == {"shard-00000.npz"}
    with pytest.raises(GalleryError, match="another extraction.*--overwrite"):
        store.claim({"model": "clip"}, "digest-a", overwrite=False)
    store.claim({"model": "clip"}, "digest-a", overwrite=True)
    assert store.shard_names() == set()
    store.clear()


@pytest.mark.slow
def test_an_error_on_a_worker_reaches_the_user_as_one_sentence(ray_address, collection, tmp_path):
    config = ExtractConfig(
        data=str(collection), out=str(tmp_path / "ray"), **{**SETTINGS, "weights": str(tmp_path / "missing.pt")}
    )
    with pytest.raises(WeightsUnavailableError, match="neither 'pretrained', 'random' nor an existing file") as caught:
        extract_ray(config, actors=1, progress=False)
    assert "Traceback" not in str(caught.value)


def test_worker_plan_leaves_cpu_for_decoding_and_fits_the_gpus():
    plan = plan_workers(
        Resources(cpus=2, gpus=0, nodes=1), actors=2, gpus_per_worker=0, cpus_per_worker=None, threads=None
    )
    assert plan.actors == 2 and plan.actors * plan.cpus_per_worker + plan.cpus_per_decode <= 2
    assert plan_workers(Resources(cpus=32, gpus=4, nodes=2), None, 1, None, None).actors == 4  # one actor per GPU
    assert plan_workers(Resources(cpus=32, gpus=4, nodes=2), None, 0.5, None, None).actors == 8
    with pytest.raises(LookalikeError, match="fewer --actors"):
        plan_workers(Resources(cpus=2, gpus=0, nodes=1), 2, 0, 1.0, None)
    with pytest.raises(LookalikeError, match="the Ray cluster has 0"):
        plan_workers(Resources(cpus=8, gpus=0, nodes=1), None, 1, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ivf", "IVF4,SQ8", "IVF4,PQ8x4"])
def test_sharded_ivf_index_equals_the_single_process_build(ray_address, local_gallery, method):
    ids = np.arange(local_gallery.count)  # every row, as `lookalike index` indexes by default
    sharded = build_index_ray(local_gallery, method, nlist=4, shard_size=10)
    single = make_method(method, len(ids), local_gallery.dim, nlist=4)
    single.build(database_vectors(local_gallery, ids), ids)

    assert sharded.describe()["built_with"]["shards"] == -(-len(ids) // 10) > 1
    a, b = (faiss.extract_index_ivf(m.index) for m in (sharded, single))
    assert a.ntotal == b.ntotal == len(ids)
    for lst in range(a.nlist):
        size = a.invlists.list_size(lst)
        assert size == b.invlists.list_size(lst)
        x, y = a.invlists, b.invlists
        assert faiss.rev_swig_ptr(x.get_ids(lst), size).tolist() == faiss.rev_swig_ptr(y.get_ids(lst), size).tolist()
        codes = a.code_size * size
        assert bytes(faiss.rev_swig_ptr(x.get_codes(lst), codes)) == bytes(faiss.rev_swig_ptr(y.get_codes(lst), codes))
    queries = np.asarray(local_gallery.embeddings)
    for params in ({"nprobe": 1}, {"nprobe": 4}):
        s1, i1 = sharded.search(queries, 5, params)
        s2, i2 = single.search(queries, 5, params)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


@pytest.mark.slow
def test_methods_that_cannot_be_merged_are_refused_before_any_work(local_gallery):
    for method in ("hnsw", "flat", "brute", "ivfpq"):
        with pytest.raises(LookalikeError, match="--engine local"):
            build_index_ray(local_gallery, method, nlist=4)
