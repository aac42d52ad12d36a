"""Search fanned out on Ray (issue 21): an ivfpq-ondisk index's parts over actors, answers merged exactly."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

import lookalike
from lookalike.search.searcher import Searcher

from .conftest import run_main
from .test_shards import array_gallery, unit_rows

pytestmark = pytest.mark.slow  # a Ray cluster and its actors


@pytest.fixture
def ondisk_gallery(tmp_path, monkeypatch):
    """4,000 rows in shards of 900, an ivfpq-ondisk index in 5 parts of 800 rows."""
    from lookalike.search import ondisk

    monkeypatch.setattr(ondisk, "PART_ROWS", 800)
    x = unit_rows(4000, d=32, seed=5)
    gallery = array_gallery(tmp_path / "g", x, shard_rows=900)
    lookalike.build_index(gallery, "ivfpq-ondisk", nlist=16)
    return lookalike.open_gallery(gallery.path), x


def cpus_back(timeout: float = 20.0) -> bool:
    """Every CPU of the test cluster free again (actors release theirs asynchronously)."""
    import time

    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return True
        time.sleep(0.2)
    return False


def answers(searcher, queries, **params):
    hits = [searcher.search(q, 10, "ivfpq-ondisk", **params) for q in queries]
    return [[h.id for h in row] for row in hits], np.array([[h.score for h in row] for row in hits])


def test_the_fan_out_equals_the_single_index_and_survives_a_restarted_actor(ray_address, ondisk_gallery):
    import ray

    from lookalike.distributed import fan_out

    gallery, x = ondisk_gallery
    queries = x[::97][:30] + 0.1 * unit_rows(30, d=32, seed=6)
    single = Searcher(gallery)
    fanned = Searcher(gallery, engine=fan_out(actors=2))
    method = fanned.method("ivfpq-ondisk")
    assert method.kind == "ray-fanout" and len(method.actors) == 2
    for params in ({"nprobe": 3}, {"nprobe": 16, "k_factor": 2}):
        ids, scores = answers(fanned, queries, **params)
        expected_ids, expected_scores = answers(single, queries, **params)
        assert ids == expected_ids
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)

    ray.kill(method.actors[0], no_restart=False)  # it dies; Ray restarts it and the call is retried
    assert answers(fanned, queries, nprobe=3)[0] == answers(single, queries, nprobe=3)[0]

    ray.kill(method.actors[1], no_restart=True)  # gone for good: one clear error, never half an answer
    for _ in range(100):  # ray.kill returns at once: wait until the actor is really gone, so no call slips in before
        try:
            ray.get(method.actors[1].rows.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.1)
    with pytest.raises(lookalike.LookalikeError, match="died and could not be restarted"):
        fanned.search(queries[0], 10, "ivfpq-ondisk")
    method.close()
    assert cpus_back()  # its actors gave their CPUs back to the cluster


def test_the_cli_searches_with_the_ray_engine(ray_address, tiny_gallery, tmp_path, monkeypatch):
    from lookalike.search import ondisk

    monkeypatch.setattr(ondisk, "PART_ROWS", 40)
    path = tmp_path / "g"
    shutil.copytree(tiny_gallery, path)
    run_main("index", "--gallery", path, "--method", "ivfpq-ondisk", "--nlist", "4")
    query = lookalike.open_gallery(path).paths[3]
    common = ("search", "--gallery", path, "--image", query, "--method", "ivfpq-ondisk", "-k", "5")
    local = run_main(*common)
    fanned = run_main(*common, "--engine", "ray", "--address", ray_address, "--actors", "2")

    def ranked(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if line.strip()[:1].isdigit()]

    assert ranked(fanned.stdout) == ranked(local.stdout) and len(ranked(local.stdout)) == 5
    assert "'actors': 2" in fanned.stdout
    assert cpus_back()  # the command's actors ended with it


def test_the_server_with_the_ray_engine_offers_the_fanned_out_index_only(ray_address, ondisk_gallery):
    import httpx

    from lookalike.distributed import fan_out
    from lookalike.serve import ServerConfig, create_app

    from .test_server import ThreadedServer, ok, search_id

    gallery, _ = ondisk_gallery
    expected = [h.id for h in Searcher(gallery).search(123, 5, "ivfpq-ondisk")]
    app = create_app(gallery.path, ServerConfig(engine=fan_out(actors=2)))
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        info = ok(c.get("/api/gallery"))
        assert [m["name"] for m in info["methods"]] == ["ivfpq-ondisk"] and info["methods"][0]["kind"] == "ray-fanout"
        answer = ok(search_id(c, 123, method="ivfpq-ondisk", k=5))
        assert [r["id"] for r in answer["results"]] == expected
    app.state.service.methods["ivfpq-ondisk"].method.close()
    assert cpus_back()


def test_the_ondisk_build_as_ray_tasks_equals_the_local_build(ray_address, ondisk_gallery, tmp_path):
    gallery, x = ondisk_gallery  # its index was built locally, in 5 parts
    copy = tmp_path / "copy"
    shutil.copytree(gallery.path, copy, ignore=shutil.ignore_patterns("indexes"))
    built = lookalike.build_index(copy, "ivfpq-ondisk", nlist=16, engine="ray", address=ray_address)
    assert built.parts_added == 5
    queries = x[::131][:25]
    local = lookalike.open_gallery(gallery.path)
    ray_built = lookalike.open_gallery(copy)
    for q in queries:
        assert [h.id for h in ray_built.search(q, 10, "ivfpq-ondisk", nprobe=4)] == [
            h.id for h in local.search(q, 10, "ivfpq-ondisk", nprobe=4)
        ]
    assert cpus_back()
