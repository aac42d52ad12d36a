"""The server under hostile input and concurrency: bounded CPU per upload, per-call search
parameters that never leak between requests, threads set where searches run, and the smaller
server fixes (no exception text in a 500, Host check on loopback, no absolute paths).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.data.synthetic import generate_collection
from lookalike.embed.extract import ExtractConfig, extract
from lookalike.gallery.generated import write_generated_gallery
from lookalike.search import make_method, save_method
from lookalike.serve import ServerConfig, create_app
from lookalike.testing import hostile_uploads

from .test_server import ThreadedServer, ok, search_id

CPU_LIMIT_S = 1.0  # issue 10: no upload within the size limits may cost more than 1 s of CPU


# --- hostile uploads ---


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def full_size_gallery(tmp_path_factory) -> Path:
    """A resnet18 gallery at the model's real input size (resize 256, crop 224): hostile costs scale with it."""
    root = tmp_path_factory.mktemp("hostile")
    data = generate_collection(root / "data", n_classes=2, train_per_class=6, val_per_class=1, seed=1)
    config = ExtractConfig(
        data=str(data), out=str(root / "g"), model="resnet18", weights="random", batch_size=8, decode_threads=0
    )
    return extract(config, progress=False).path


@pytest.mark.slow
def test_hostile_uploads_cost_under_a_second_of_cpu_each_and_leave_the_server_healthy(full_size_gallery):
    app = create_app(full_size_gallery, ServerConfig(max_upload_bytes=10 * 2**20))
    assert app.state.service.embedder.embedder.preprocess.resize_size == 256
    corpus = hostile_uploads()
    costs: dict[str, tuple[int, float]] = {}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for name, data in corpus.items():
            assert len(data) <= 10 * 2**20, name
            started = time.process_time()  # CPU of every thread of this process: the request runs in a worker thread
            response = client.post(
                "/api/search", files={"image": (name, data, "application/octet-stream")}, data={"k": "5"}
            )
            costs[name] = (response.status_code, time.process_time() - started)
            if response.status_code == 200:
                assert len(response.json()["results"]) == 5, name
            else:
                assert 400 <= response.status_code < 500, (name, response.text)
                assert response.json()["error"], name
        assert ok(client.get("/healthz"))["status"] == "ok"
        normal = _encode(
            Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)), "JPEG"
        )
        answer = ok(client.post("/api/search", files={"image": ("ok.jpg", normal, "image/jpeg")}, data={"k": "5"}))
        assert len(answer["results"]) == 5
    print({name: f"{cpu:.3f} s (HTTP {status})" for name, (status, cpu) in costs.items()})
    slow = {name: f"{cpu:.2f} s (HTTP {status})" for name, (status, cpu) in costs.items() if cpu > CPU_LIMIT_S}
    assert slow == {}, f"uploads over {CPU_LIMIT_S} s of CPU: {slow}"
    # The refusals a user meets: each names what is wrong.
    assert costs["empty.jpg"][0] == 400 and costs["text.jpg"][0] == 400 and costs["drawing.svg"][0] == 400
    assert costs["declares-100kx100k.png"][0] == 400 and costs["truncated.jpg"][0] == 400
    assert costs["1x65000.png"][0] == 200 and costs["65000x1.png"][0] == 200  # legal sizes: answered, cheaply


@pytest.mark.slow
def test_upload_pixel_limit_is_explained_and_configurable(full_size_gallery):
    big = _encode(Image.new("L", (5000, 4000), 7), "PNG")  # 20 Mpx: over the server's default 16.8 Mpx
    with TestClient(create_app(full_size_gallery), base_url="http://127.0.0.1") as client:
        response = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
        assert response.status_code == 400 and "--max-pixels" in response.json()["error"]
    with TestClient(
        create_app(full_size_gallery, ServerConfig(max_pixels=20_000_000)), base_url="http://127.0.0.1"
    ) as client:
        assert ok(client.post("/api/search", files={"image": ("big.png", big, "image/png")}))["results"]


# --- per-call parameters under concurrency ---


@pytest.fixture(scope="module")
def ivf_gallery(tmp_path_factory) -> Path:
    """20,000 generated 64-d vectors with saved IVF64 and ivfpq-mmap indexes over every row (as served) whose default
    nprobe is 1."""
    gallery = write_generated_gallery(tmp_path_factory.mktemp("race") / "g", n=20_000, d=64, val=200, n_clusters=64)
    ids = np.arange(gallery.count)
    for name in ("IVF64,Flat", "ivfpq-mmap"):
        method = make_method(name, len(ids), gallery.dim, nlist=64, search_params={"nprobe": 1})
        method.build(gallery.embeddings[ids], ids)
        save_method(gallery, method)
    return gallery.path


@pytest.mark.slow
def test_concurrent_requests_with_different_nprobe_match_a_single_threaded_run(ivf_gallery):
    app = create_app(ivf_gallery, ServerConfig(compute_slots=2, threads=1))
    service = app.state.service
    names = [
        name
        for name, entry in service.methods.items()
        if entry.saved and "nprobe" in entry.method.search_param_ranges()
    ]
    assert sorted(names) == ["IVF64_Flat", "ivfpq-mmap"]
    assert all(service.methods[n].method.params()["nprobe"] == 1 for n in names)
    queries = [int(i) for i in service.gallery.partition().query_ids[:6]]
    jobs = [(name, q, nprobe) for name in names for q in queries for nprobe in (None, 1, 8, 64)]

    def send(c: httpx.Client, job) -> httpx.Response:
        name, q, nprobe = job
        fields = {"id": str(q), "method": name, "k": "20", **({"nprobe": str(nprobe)} if nprobe else {})}
        return c.post("/api/search", data=fields)

    def ids_of(response: httpx.Response) -> list[int]:
        return [r["id"] for r in ok(response)["results"]]

    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=120) as client:
        reference = {job: ids_of(send(client, job)) for job in jobs}  # one at a time
        # The test can only catch a leak if the parameter changes answers.
        assert any(reference[(n, q, None)] != reference[(n, q, 64)] for n in names for q in queries)

        def worker(seed: int) -> list[str]:
            order = np.random.default_rng(seed).permutation(len(jobs) * 3) % len(jobs)
            problems = []
            with httpx.Client(base_url=running.url, timeout=120) as c:
                for j in order:
                    got = ids_of(send(c, jobs[j]))
                    if got != reference[jobs[j]]:
                        problems.append(f"{jobs[j]}: differs from the single-threaded answer")
            return problems

        with ThreadPoolExecutor(6) as pool:
            problems = [p for found in pool.map(worker, range(6)) for p in found]
    assert problems == []
    # the shared indexes were never changed
    assert all(service.methods[n].method.params()["nprobe"] == 1 for n in names)


@pytest.mark.slow
def test_searches_run_with_the_configured_threads_in_their_worker_thread(ivf_gallery):
    fresh: list[int] = []
    probe = threading.Thread(target=lambda: fresh.append(faiss.omp_get_max_threads()))
    probe.start()
    probe.join()
    wanted = fresh[0] + 1  # differs from what a new thread gets by default, so only an explicit setting gives it
    app = create_app(ivf_gallery, ServerConfig(threads=wanted))
    service = app.state.service
    assert service.info()["threads"]["faiss_omp"] == wanted and service.info()["threads"]["torch"] == wanted

    seen: list[int] = []
    method = service.methods["IVF64_Flat"].method
    original = method.search

    def recording(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())  # in the thread the search runs in
        return original(*args, **kwargs)

    method.search = recording
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        for _ in range(3):
            ok(search_id(client, 5, method="IVF64_Flat", k=3, nprobe=4))
        assert ok(client.get("/api/gallery"))["threads"]["faiss_omp"] == wanted
    assert seen == [wanted] * 3


# --- smaller server fixes ---


def test_an_unexpected_error_is_a_500_without_the_exception_text(tiny_gallery, caplog):
    app = create_app(tiny_gallery)
    secret = "/srv/private/location/of/a/secret-file"

    def broken(*args):
        raise RuntimeError(f"cannot open {secret}")

    app.state.service.search_id = broken
    with (
        TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client,
        caplog.at_level(logging.ERROR),
    ):
        response = client.post("/api/search", data={"id": "3"})
    assert response.status_code == 500
    body = response.json()
    assert secret not in response.text and "RuntimeError" not in response.text
    reference = body["error"].split("reference ")[1].split(")")[0]
    assert any(reference in r.getMessage() and secret in str(r.exc_info[1]) for r in caplog.records)  # the log keeps it


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8000", True),
        ("localhost:1", True),
        ("LOCALHOST", True),
        ("[::1]:8080", True),
        ("127.0.0.1", True),
        ("evil.example:8000", False),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:80", False),
        ("[::2]:80", False),
        ("", False),
    ],
)
def test_loopback_server_refuses_other_host_names(tiny_gallery_app, host, allowed):
    with TestClient(tiny_gallery_app, base_url="http://127.0.0.1") as client:
        response = client.get("/healthz", headers={"host": host})
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and "DNS rebinding" in response.json()["error"]


@pytest.fixture(scope="module")
def tiny_gallery_app(tiny_gallery):
    return create_app(tiny_gallery)


def test_a_remote_server_accepts_any_host_name(tiny_gallery):
    with TestClient(
        create_app(tiny_gallery, ServerConfig(allowed_hosts=None)), base_url="http://lookalike.example"
    ) as client:
        assert ok(client.get("/healthz"))["status"] == "ok"


def test_results_show_paths_relative_to_the_collection_root(tiny_gallery_app, tiny_collection):
    gallery = tiny_gallery_app.state.service.gallery
    with TestClient(tiny_gallery_app, base_url="http://127.0.0.1") as client:
        answer = ok(client.post("/api/search", data={"id": "4", "k": "10"}))
    rows = [answer["query"], *answer["results"]]
    for row in rows:
        assert not Path(row["path"]).is_absolute() and str(tiny_collection) not in row["path"]
        assert str(tiny_collection / row["path"]) == gallery.paths[row["id"]]  # the same file, named from the root
    assert gallery.manifest.data.root == str(tiny_collection)


def test_shown_path_of_list_collections_and_outsiders():
    from lookalike.serve.service import shown_path

    assert shown_path("/data/imgs/a.jpg", "/data/list.txt", root_is_list_file=True) == "imgs/a.jpg"
    assert shown_path("/data/imgs/a.jpg", "/data") == "imgs/a.jpg"
    assert shown_path("/elsewhere/secret/b.png", "/data") == "b.png"
    assert shown_path("/elsewhere/secret/b.png", "/data/list.txt", root_is_list_file=True) == "b.png"
    assert shown_path("synthetic:17", "/data") == "synthetic:17"


def test_serve_cli_has_a_max_pixels_option(tiny_gallery):
    from lookalike.cli import build_parser

    args = build_parser().parse_args(["serve", "--gallery", str(tiny_gallery), "--max-pixels", "1000"])
    assert args.max_pixels == 1000 and args.host == "127.0.0.1"
