"""The web demo's JSON API, against a real uvicorn server on 127.0.0.1 over a tiny generated gallery.

Every endpoint, every bad input (each must be a clear 4xx JSON error, never a 500), start-up
refusals through the real CLI, and 8 concurrent clients whose answers must match `lookalike search`.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from lookalike.errors import GalleryError
from lookalike.gallery import open_gallery
from lookalike.search import make_method, save_method
from lookalike.serve import ServerConfig, create_app

from .conftest import LOOKALIKE, run_cli, run_main

UPLOAD_LIMIT = 200_000  # bytes: small, so the over-limit cases stay cheap
SAVED_FACTORY = "IVF4,Flat"  # a saved index beside the built-in methods
SAVED_NAME = "IVF4_Flat"


class ThreadedServer:
    """uvicorn serving `app` on a free loopback port, in a thread of the test process."""

    def __init__(self, app):
        # else no TCP_NODELAY: 40 ms delayed-ACK stalls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def gallery_dir(tiny_gallery, tmp_path_factory) -> Path:
    """A copy of the session's tiny gallery with one extra saved index (IVF4,Flat) over every row, as served."""
    out = tmp_path_factory.mktemp("served") / "gallery"
    shutil.copytree(tiny_gallery, out)
    gallery = open_gallery(out)
    ids = np.arange(gallery.count)
    method = make_method(SAVED_FACTORY, len(ids), gallery.dim)
    method.build(gallery.embeddings[ids], ids)
    save_method(gallery, method)
    return out


@pytest.fixture(scope="module")
def app(gallery_dir):
    return create_app(gallery_dir, ServerConfig(max_upload_bytes=UPLOAD_LIMIT))


@pytest.fixture(scope="module")
def server(app):
    with ThreadedServer(app) as running:
        yield running.url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def query_images(tiny_collection) -> list[Path]:
    """Val images: the study holds them out, the server searches them like every other image."""
    return sorted((tiny_collection / "val" / "images").glob("*.JPEG"))[:2]


def upload(client: httpx.Client, path: Path, **fields) -> httpx.Response:
    return client.post(
        "/api/search",
        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
        data={k: str(v) for k, v in fields.items()},
    )


def search_id(client: httpx.Client, gallery_id: int, **fields) -> httpx.Response:
    return client.post("/api/search", data={"id": str(gallery_id), **{k: str(v) for k, v in fields.items()}})


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def ranking(answer: dict) -> list[tuple[str, float]]:
    return [(r["path"], r["score"]) for r in answer["results"]]


# --- the CLI's answers, the reference every server answer must agree with ---

CLI_ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d+)\s{2}.{24}\s{2}(\S+)")


def parse_cli_search(stdout: str) -> list[tuple[str, float]]:
    rows = [CLI_ROW.match(line) for line in stdout.splitlines()]
    return [(m.group(3), float(m.group(2))) for m in rows if m]


@pytest.fixture(scope="module")
def cli_rankings(gallery_dir, query_images, tiny_collection) -> dict[tuple[int, str], list[tuple[str, float]]]:
    """`lookalike search` for (image 0, brute) and (image 1, ivf --nprobe 2).

    The CLI prints the files' absolute paths; the server shows them relative to the collection root.
    """
    cases = {(0, "brute"): [], (1, "ivf"): ["--nprobe", "2"]}
    out = {}
    for key, extra in cases.items():  # the CLI in this process (`run_main`): the printed rankings are the point
        image, method = key
        stdout = run_main(
            "search", "--gallery", gallery_dir, "--image", query_images[image], "--method", method, "-k", "8", *extra
        ).stdout
        out[key] = [
            (Path(path).relative_to(tiny_collection).as_posix(), score) for path, score in parse_cli_search(stdout)
        ]
        assert len(out[key]) == 8, stdout
    return out


def assert_same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [p for p, _ in got] == [p for p, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-4)  # the CLI prints 4 decimals


# --- endpoints ---


def test_healthz(client, gallery_dir):
    body = ok(client.get("/healthz"))
    assert body["status"] == "ok" and body["count"] == 120 and body["real"] is False
    assert body["gallery"] == gallery_dir.name  # the folder's name, not where the server keeps it
    assert body["methods"] == ["brute", "flat", "ivf", SAVED_NAME]


def test_gallery_describes_provenance_and_methods(client):
    g = ok(client.get("/api/gallery"))
    assert (g["model"], g["dim"], g["count"], g["image_size"]) == ("resnet18", 512, 120, 32)
    assert g["weights"]["kind"] == "random" and g["data"]["synthetic"] is True and g["real"] is False
    assert "RANDOM weights" in g["provenance"] and "GENERATED data" in g["provenance"]
    assert any("RANDOM weights" in w for w in g["warnings"]) and any("GENERATED data" in w for w in g["warnings"])
    assert g["uploads"] is True and g["has_labels"] is True
    methods = {m["name"]: m for m in g["methods"]}
    assert methods["brute"]["param_ranges"] == {} and methods["flat"]["factory"] == "Flat"
    assert methods["ivf"]["param_ranges"] == {"nprobe": [1, 11]}  # round(√120) lists over every row
    assert methods[SAVED_NAME]["saved"] is True and methods[SAVED_NAME]["param_ranges"] == {"nprobe": [1, 4]}
    assert all(m["ntotal"] == 120 and m["k_range"] == [1, 100] for m in methods.values())  # every row, max_k 100
    assert g["database"] == "all 120 images" and g["notes"] == []
    assert g["limits"]["max_upload_bytes"] == UPLOAD_LIMIT


def test_openapi_documents_every_endpoint(client):
    spec = ok(client.get("/openapi.json"))
    paths = spec["paths"]
    assert {
        "/api/search",
        "/api/images/{id}",
        "/api/images/{id}/thumb",
        "/api/gallery",
        "/api/duplicates",
        "/healthz",
    } <= set(paths)
    search = paths["/api/search"]["post"]
    form = search["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = spec["components"]["schemas"][form["$ref"].split("/")[-1]] if "$ref" in form else form
    assert {"image", "id", "text", "method", "k", "nprobe", "efSearch", "k_factor", "compare"} <= set(
        form["properties"]
    )
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    for code in ("400", "404", "413", "422"):
        assert search["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"SearchResponse", "Result", "SearchTimings", "GalleryInfo", "MethodInfo", "ErrorBody"} <= set(
        spec["components"]["schemas"]
    )
    assert client.get("/docs").status_code == 404  # Swagger UI would need a CDN


def test_page_and_its_files_load_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), (
            "the page must work offline: no external URLs"
        )


@pytest.mark.slow
def test_upload_search_matches_cli(client, query_images, cli_rankings):
    answer = ok(upload(client, query_images[0], method="brute", k=8))
    assert_same_ranking(ranking(answer), cli_rankings[(0, "brute")])
    assert answer["query"]["kind"] == "upload" and answer["query"]["bytes"] == query_images[0].stat().st_size
    t = answer["latency_ms"]
    assert t["decode_ms"] > 0 and t["embed_ms"] > 0 and t["search_ms"] > 0 and t["total_ms"] >= t["search_ms"]
    assert answer["real"] is False and "RANDOM weights" in answer["provenance"]

    answer = ok(upload(client, query_images[1], method="ivf", k=8, nprobe=2))
    assert answer["params"] == {"nprobe": 2}
    assert_same_ranking(ranking(answer), cli_rankings[(1, "ivf")])


def test_search_by_id_uses_the_stored_embedding_and_marks_labels(client, app):
    train_id = 3  # a database row: it finds itself first
    answer = ok(search_id(client, train_id, method="flat", k=5))
    assert answer["query"]["kind"] == "id" and answer["query"]["id"] == train_id
    assert answer["results"][0]["id"] == train_id and answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert answer["latency_ms"]["decode_ms"] is None and answer["latency_ms"]["embed_ms"] is None
    label = answer["query"]["label"]
    assert label and all(r["same_label"] == (r["label"] == label) for r in answer["results"])
    assert any(r["same_label"] for r in answer["results"])

    val_id = int(np.flatnonzero(app.state.service.gallery.splits == "val")[0])  # the study's query: searched here too
    answer = ok(search_id(client, val_id, method="brute", k=100))
    assert answer["results"][0]["id"] == val_id and len(answer["results"]) == 100


def test_database_heldout_leaves_the_studys_queries_out_and_refuses_an_index_over_every_row(gallery_dir):
    """--database heldout: the study's database; the saved index over every row is not offered, and the page says
    why."""
    gallery = open_gallery(gallery_dir)
    held_out = gallery.partition().query_ids
    app = create_app(gallery_dir, ServerConfig(database="heldout"))
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        info = ok(c.get("/api/gallery"))
        assert [m["name"] for m in info["methods"]] == ["brute", "flat", "ivf"]
        assert all(m["ntotal"] == 120 - len(held_out) for m in info["methods"])
        assert info["database"].startswith(f"{120 - len(held_out)} of 120 images: {len(held_out)} left out")
        assert len(info["notes"]) == 1 and SAVED_NAME in info["notes"][0] and "--database all" in info["notes"][0]
        x = np.asarray(gallery.embeddings)
        for query in held_out[:3].tolist():
            answer = ok(search_id(c, query, method="brute", k=100))
            found = [r["id"] for r in answer["results"]]
            assert not set(held_out.tolist()) & set(found)
            database = np.setdiff1d(np.arange(120), held_out)
            assert found == database[np.argsort(-(x[database] @ x[query]), kind="stable")].tolist()[:100]


def test_nprobe_applies_to_one_call_only(client):
    exact = ok(search_id(client, 7, method="flat", k=10))
    full = ok(search_id(client, 7, method=SAVED_NAME, k=10, nprobe=4))  # every list visited: exact
    assert [r["id"] for r in full["results"]] == [r["id"] for r in exact["results"]] and full["params"] == {"nprobe": 4}
    one = ok(search_id(client, 7, method=SAVED_NAME, k=10, nprobe=1))
    assert one["params"] == {"nprobe": 1}
    default = ok(search_id(client, 7, method=SAVED_NAME, k=10))
    assert default["params"] == {"nprobe": 4}  # min(16, nlist) stored with the index, untouched by the calls above


def test_images_and_thumbnails_by_id(client, app):
    path = Path(app.state.service.gallery.paths[5])
    full = client.get("/api/images/5")
    assert (
        full.status_code == 200 and full.content == path.read_bytes() and full.headers["content-type"] == "image/jpeg"
    )
    thumb = client.get("/api/images/5/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "JPEG" and max(image.size) <= ServerConfig().thumb_px
    assert client.get("/api/images/5/thumb").content == thumb.content  # served from the cache


# --- bad input: a clear 4xx JSON error, never a 500 ---


def _jpeg_bytes(size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def _over_limit_chunks():
    """A valid multipart body, streamed without a Content-Length (chunked), three times the limit."""
    yield (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    for _ in range(3 * UPLOAD_LIMIT // 65536 + 1):
        yield b"\xff" * 65536
    yield b"\r\n--xyz--\r\n"


BAD_REQUESTS = {
    "non-image upload": (
        400,
        "not a recognised image format",
        lambda c: c.post("/api/search", files={"image": ("notes.txt", b"hello, not an image", "text/plain")}),
    ),
    "corrupt image": (
        400,
        "corrupt or truncated",
        lambda c: c.post("/api/search", files={"image": ("cut.jpg", _jpeg_bytes()[:300], "image/jpeg")}),
    ),
    "empty upload": (400, "empty", lambda c: c.post("/api/search", files={"image": ("empty.jpg", b"", "image/jpeg")})),
    "upload over the limit": (
        413,
        "limit",
        lambda c: c.post("/api/search", files={"image": ("big.jpg", b"\xff" * (UPLOAD_LIMIT + 1), "image/jpeg")}),
    ),
    "body over the limit, declared": (
        413,
        "limit",
        lambda c: c.post("/api/search", files={"image": ("big.jpg", b"\xff" * (3 * UPLOAD_LIMIT), "image/jpeg")}),
    ),
    "body over the limit, chunked": (
        413,
        "limit",
        lambda c: c.post(
            "/api/search", content=_over_limit_chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"}
        ),
    ),
    "two files": (
        400,
        "files",
        lambda c: c.post(
            "/api/search",
            files=[
                ("image", ("a.jpg", _jpeg_bytes(), "image/jpeg")),
                ("image", ("b.jpg", _jpeg_bytes(), "image/jpeg")),
            ],
        ),
    ),
    "image and id": (
        400,
        "not both",
        lambda c: c.post("/api/search", files={"image": ("a.jpg", _jpeg_bytes(), "image/jpeg")}, data={"id": "1"}),
    ),
    "image and text without a text tower": (
        422,
        "resnet18, which has no text tower",
        lambda c: c.post(
            "/api/search", files={"image": ("a.jpg", _jpeg_bytes(), "image/jpeg")}, data={"text": "at night"}
        ),
    ),
    "text without a text tower": (422, "no text tower", lambda c: c.post("/api/search", data={"text": "a red car"})),
    "negative text without a text tower": (
        422,
        "resnet18, which has no text tower",
        lambda c: search_id(c, 1, negative_text="at night"),
    ),
    "efSearch for ivf": (422, "ivf has no efSearch", lambda c: search_id(c, 1, method="ivf", efSearch=8)),
    "k_factor zero": (422, "has no k_factor", lambda c: search_id(c, 1, method="ivf", k_factor=0)),
    "unknown comparison": (422, "compare=exact", lambda c: search_id(c, 1, method="ivf", compare="yes")),
    "missing query": (422, "missing query", lambda c: c.post("/api/search", data={"method": "brute"})),
    "no body at all": (422, "missing query", lambda c: c.post("/api/search")),
    "json body": (415, "multipart", lambda c: c.post("/api/search", json={"id": 1})),
    "text field as image": (422, "image", lambda c: c.post("/api/search", data={"image": "cat.jpg"})),
    "unknown id": (404, "no gallery image with id 120", lambda c: search_id(c, 120)),
    "negative id": (404, "no gallery image with id -1", lambda c: search_id(c, -1)),
    "id not a number": (422, "id", lambda c: c.post("/api/search", data={"id": "seven"})),
    "unknown method": (422, "unknown method 'hnsw'", lambda c: search_id(c, 1, method="hnsw")),
    "k zero": (422, "k=0 is out of range", lambda c: search_id(c, 1, k=0)),
    "k too large": (422, "k=101 is out of range", lambda c: search_id(c, 1, k=101)),
    "k not a number": (422, "k", lambda c: search_id(c, 1, k="ten")),
    "nprobe zero": (422, "nprobe=0 is out of range", lambda c: search_id(c, 1, method="ivf", nprobe=0)),
    "nprobe over nlist": (422, "nprobe=5 is out of range", lambda c: search_id(c, 1, method=SAVED_NAME, nprobe=5)),
    "nprobe for brute": (422, "has no nprobe", lambda c: search_id(c, 1, method="brute", nprobe=2)),
    "image of unknown id": (404, "no gallery image with id 999", lambda c: c.get("/api/images/999")),
    "thumb of unknown id": (404, "no gallery image with id 999", lambda c: c.get("/api/images/999/thumb")),
    "image id not a number": (422, "id", lambda c: c.get("/api/images/abc")),
    "unknown endpoint": (404, "no such endpoint", lambda c: c.get("/api/nothing")),
    "wrong http method": (405, "not allowed", lambda c: c.get("/api/search")),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_clear_4xx_json_error(client, case):
    status, words, send = BAD_REQUESTS[case]
    response = send(client)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and words.lower() in body["error"].lower()
    assert len(body["error"]) > 20  # a sentence, not a code


def test_a_missing_image_file_is_404_not_500(client, app):
    service = app.state.service
    saved = service._paths[9]
    service._paths[9] = "/nonexistent/lookalike/moved.jpg"
    try:
        for url in ("/api/images/9", "/api/images/9/thumb"):
            response = client.get(url)
            assert response.status_code == 404 and "missing" in response.json()["error"]
    finally:
        service._paths[9] = saved


def test_the_server_still_works_after_bad_input(client):
    assert ok(search_id(client, 2, method="ivf", k=3))["results"]


# --- concurrency ---


@pytest.mark.slow
def test_concurrent_searches_all_succeed_and_agree(server, client, query_images, cli_rankings):
    """8 clients × 50 requests mixing uploads and ids over every method; each answer equals the reference."""
    jobs = [
        ("upload", 0, {"method": "brute", "k": 8}),
        ("upload", 1, {"method": "ivf", "k": 8, "nprobe": 2}),
        ("id", 11, {"method": "flat", "k": 10}),
        ("id", 11, {"method": SAVED_NAME, "k": 10, "nprobe": 1}),
        ("id", 11, {"method": SAVED_NAME, "k": 10, "nprobe": 4}),
        ("id", 57, {"method": "ivf", "k": 5, "nprobe": 1}),
    ]
    files = [p.read_bytes() for p in query_images]

    def send(c: httpx.Client, job) -> httpx.Response:
        kind, which, fields = job
        data = {k: str(v) for k, v in fields.items()}
        if kind == "upload":
            return c.post("/api/search", files={"image": (f"q{which}.jpg", files[which], "image/jpeg")}, data=data)
        return c.post("/api/search", data={"id": str(which), **data})

    reference = [ranking(ok(send(client, job))) for job in jobs]
    assert_same_ranking(reference[0], cli_rankings[(0, "brute")])
    assert_same_ranking(reference[1], cli_rankings[(1, "ivf")])
    assert [p for p, _ in reference[4]] == [p for p, _ in reference[2]]  # nprobe = nlist is exact

    def worker(seed: int) -> list[str]:
        problems = []
        with httpx.Client(base_url=server, timeout=120) as c:
            for i in range(50):
                j = (seed * 7 + i) % len(jobs)
                response = send(c, jobs[j])
                if response.status_code != 200:
                    problems.append(f"{jobs[j]}: HTTP {response.status_code} {response.text[:200]}")
                elif ranking(response.json()) != reference[j]:
                    problems.append(f"{jobs[j]}: different results under load")
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [p for found in pool.map(worker, range(8)) for p in found]
    assert problems == []


# --- start-up refusals ---


def test_inconsistent_gallery_refuses_to_start(gallery_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(gallery_dir, broken)
    np.save(broken / "embeddings.npy", np.zeros((7, 512), np.float32))
    with pytest.raises(GalleryError, match="inconsistent"):
        create_app(broken)
    (broken / "metadata.parquet").unlink()
    with pytest.raises(GalleryError, match="missing metadata.parquet"):
        create_app(broken)


def test_index_from_another_gallery_refuses_to_start(gallery_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(gallery_dir, other)
    manifest = (other / "manifest.json").read_text()
    (other / "manifest.json").write_text(manifest.replace(open_gallery(gallery_dir).fingerprint, "0000-not-this-one"))
    with pytest.raises(GalleryError, match="built from another gallery"):
        create_app(other)


@pytest.mark.slow
def test_cli_refuses_bad_starts_with_exit_code_2(gallery_dir, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    cases = {
        "missing gallery": (["--gallery", str(tmp_path / "nope")], "no gallery at"),
        "remote host without flag": (["--gallery", str(gallery_dir), "--host", "0.0.0.0"], "--allow-remote"),
        "port in use": (["--gallery", str(gallery_dir), "--port", str(port)], "cannot listen"),
        "bad upload limit": (["--gallery", str(gallery_dir), "--max-upload-mb", "0"], "--max-upload-mb"),
    }
    try:
        procs = {
            name: subprocess.Popen(
                [*LOOKALIKE, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for name, (args, _) in cases.items()
        }
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, f"{name}: {stderr}"
            assert stderr.startswith("lookalike serve: error:") and cases[name][1] in stderr, f"{name}: {stderr}"
    finally:
        busy.close()


def test_cli_defaults():
    help_text = run_cli("serve", "--help").stdout
    assert "127.0.0.1" in help_text and "--allow-remote" in help_text and "default 10" in help_text
    assert ServerConfig().max_upload_bytes == 10 * 2**20


def test_cli_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it keep-alive answers stall ~40 ms."""
    from lookalike.cli.web import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_generated_gallery_is_served_for_id_queries_only(tmp_path):
    """Embeddings generated without a model: searchable by id; uploads and images get clear 4xx answers."""
    from lookalike.gallery.generated import write_generated_gallery

    gallery = write_generated_gallery(tmp_path / "generated", n=400, d=32, val=20, n_clusters=8)
    with ThreadedServer(create_app(gallery.path)) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        info = ok(c.get("/api/gallery"))
        assert info["uploads"] is False and info["real"] is False and info["image_size"] is None
        assert any("GENERATED" in w for w in info["warnings"]) and any("no uploads" in w for w in info["warnings"])
        answer = ok(search_id(c, 390, method="ivf", k=5))
        assert len(answer["results"]) == 5 and answer["results"][0]["path"].startswith("synthetic:")
        response = c.post("/api/search", files={"image": ("a.jpg", _jpeg_bytes(), "image/jpeg")})
        assert response.status_code == 422 and "generated without a model" in response.json()["error"]
        response = c.get("/api/images/3/thumb")
        assert response.status_code == 404 and "has no image" in response.json()["error"]


def test_path_traversal_never_serves_a_file_outside_the_served_folders(server, gallery_dir):
    """The routes that serve files by path (/static) and by id (/api/images), asked raw, so no client tidies the
    path."""
    import http.client
    import urllib.parse

    from lookalike.serve.app import STATIC_DIR

    secret = (STATIC_DIR.parent / "app.py").read_bytes()[:200]  # a file beside the static folder
    manifest = (gallery_dir / "manifest.json").read_bytes()[:200]
    url = urllib.parse.urlsplit(server)
    attempts = [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2fapp.py",
        "/static/..%5capp.py",
        "/static//" + str(STATIC_DIR.parent / "app.py"),
        "/static/../../../../../../" + str(STATIC_DIR.parent / "app.py").lstrip("/"),
        "/api/images/-1",
        "/api/images/..%2Fmanifest.json",
        "/static/../../../" + str(gallery_dir / "manifest.json").lstrip("/"),
    ]
    for path in attempts:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert 400 <= response.status < 500, (path, response.status)
        assert secret not in body and manifest not in body, path
    # the same raw client does reach a file that is meant to be served, so the checks above can fail
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("GET", "/static/style.css")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == (STATIC_DIR / "style.css").read_bytes()
    connection.close()


def test_no_answer_shows_where_the_server_keeps_its_files(gallery_dir, tiny_collection, tmp_path):
    """Every route, answers and errors alike: neither the gallery's nor the collection's absolute folder appears."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    served = tmp_path / "private" / "gallery"
    shutil.copytree(gallery_dir, served)
    table = pq.read_table(served / "metadata.parquet")
    paths = table.column("path").to_pylist()
    paths[5] = str(tiny_collection / "train" / "gone" / "missing.JPEG")  # a file deleted after extraction
    paths[6] = str(served / "unreadable.JPEG")  # a file that no longer decodes
    (served / "unreadable.JPEG").write_bytes(b"not a jpeg at all")
    pq.write_table(
        table.set_column(table.column_names.index("path"), "path", pa.array(paths, pa.string())),
        served / "metadata.parquet",
    )
    manifest = json.loads((served / "manifest.json").read_text())
    manifest["data"]["synthetic"] = False  # so the provenance names the data folder (a real collection's would)
    (served / "manifest.json").write_text(json.dumps(manifest))
    private = {str(served), str(served.resolve()), str(tiny_collection), str(tiny_collection.resolve()), str(tmp_path)}
    app = create_app(served, ServerConfig(max_upload_bytes=UPLOAD_LIMIT))
    image = sorted((tiny_collection / "val" / "images").glob("*.JPEG"))[0]
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        responses = {
            "healthz": c.get("/healthz"),
            "gallery": c.get("/api/gallery"),
            "openapi": c.get("/openapi.json"),
            "page": c.get("/"),
            "by id": search_id(c, 3, method="ivf", k=5, compare="exact"),
            "by upload": upload(c, image, method="flat", k=5),
            "image": c.get("/api/images/4"),
            "thumb": c.get("/api/images/4/thumb"),
            "missing image": c.get("/api/images/5"),
            "missing thumb": c.get("/api/images/5/thumb"),
            "unreadable thumb": c.get("/api/images/6/thumb"),
            "unknown id": search_id(c, 10**6),
            "unknown image id": c.get("/api/images/999999"),
            "bad method": search_id(c, 3, method="nope"),
            "bad k": search_id(c, 3, k=0),
            "bad upload": c.post("/api/search", files={"image": ("x.jpg", b"junk", "image/jpeg")}),
            "too large": c.post("/api/search", files={"image": ("x.jpg", b"\xff" * (2 * UPLOAD_LIMIT), "image/jpeg")}),
            "json": c.post("/api/search", json={"id": 3}),
            "text on resnet": c.post("/api/search", data={"text": "a red car"}),
            "duplicates of changed files": c.get("/api/duplicates"),
            "no such route": c.get("/api/nothing"),
            "bad verb": c.delete("/api/gallery"),
        }
    assert [name for name, r in responses.items() if r.status_code == 500] == []
    assert responses["missing image"].status_code == 404 and responses["unreadable thumb"].status_code == 404
    assert "train/gone/missing.JPEG" in responses["missing image"].json()["error"]  # named relative to the collection
    assert responses["duplicates of changed files"].status_code == 409
    for name, response in responses.items():
        text = response.content.decode("utf-8", "replace") + str(dict(response.headers))
        assert not [p for p in private if p in text], f"{name} shows a server path: {text[:500]}"
    assert responses["gallery"].json()["path"] == "gallery"
    assert responses["gallery"].json()["data"]["root"] == tiny_collection.name
    assert f"at {tiny_collection.name} ·" in responses["by id"].json()["provenance"]


@pytest.mark.slow
def test_the_default_method_is_measured_on_the_gallery_and_never_one_that_collapses_there(tmp_path):
    """A gallery whose scores bunch (every pair above ~0.9) with a saved 8-bit graph: its recall caps below the target
    there, so the server answers requests that name no method with another one, at the setting it measured."""
    from lookalike.api import build_index
    from lookalike.data.vectors import make_bunched_embeddings
    from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery

    x, labels = make_bunched_embeddings(6000, 64, seed=3)
    gallery = write_array_gallery(
        tmp_path / "bunched",
        x,
        labels,
        ["train"] * 5000 + ["val"] * 1000,
        segments=[Segment("generated", 0, 6000, True, "bunched test rows")],
        model=generated_model_block(64, 0),
    )
    build_index(gallery, "hnsw-sq8")
    with ThreadedServer(create_app(gallery.path)) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        info = ok(c.get("/api/gallery"))
        chosen = info["default_method"]
        assert "hnsw-sq8" in [m["name"] for m in info["methods"]]
        assert chosen["method"] != "hnsw-sq8" and chosen["method"] in [m["name"] for m in info["methods"]]
        assert "hnsw-sq8" in chosen["reason"]
        answer = ok(search_id(c, 5000, k=10))  # no method named
        assert answer["method"] == chosen["method"] and answer["params"] == {**answer["params"], **chosen["params"]}
        # independently: the default's answer holds most of the exact top 10 (the query's own row first)
        exact = np.argsort(-(x @ x[5000]), kind="stable")[:10].tolist()
        assert len(set(exact) & {r["id"] for r in answer["results"]}) >= 8


def test_an_empty_gallery_is_refused_at_start_in_one_sentence(tmp_path):
    from lookalike.errors import GalleryError
    from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery

    empty = write_array_gallery(
        tmp_path / "empty",
        np.zeros((0, 8), np.float32),
        segments=[Segment("generated", 0, 0, True, "nothing")],
        model=generated_model_block(8, 0),
    )
    with pytest.raises(GalleryError, match="holds no images, so there is nothing to serve"):
        create_app(empty.path)


def test_examples_beside_the_query_follow_the_rule_and_are_left_out(client, gallery_dir):
    x = np.asarray(open_gallery(gallery_dir).embeddings)
    q = x[[5, 17, 40]].mean(axis=0) - 0.5 * x[3]  # the query (id 5) and two positives, one negative
    scores = x @ (q / np.linalg.norm(q))
    scores[[5, 17, 40, 3]] = -np.inf
    expected = np.argsort(-scores, kind="stable")[:6].tolist()
    answer = ok(search_id(client, 5, method="brute", k=6, positive="17, 40", negative="3"))
    assert [r["id"] for r in answer["results"]] == expected
    assert answer["positive"] == [17, 40] and answer["negative"] == [3]
    bad = search_id(client, 5, positive="17;40")
    assert bad.status_code == 422 and bad.json()["field"] == "positive" and "separated by commas" in bad.json()["error"]
    missing = search_id(client, 5, negative="99999")
    assert missing.status_code == 404 and missing.json()["field"] == "negative"
    many = search_id(client, 5, positive=",".join(map(str, range(40))))
    assert many.status_code == 422 and "at most" in many.json()["error"]


def test_a_filter_searches_only_the_rows_it_keeps(client, gallery_dir):
    gallery = open_gallery(gallery_dir)
    label = gallery.labels[50]
    answer = ok(search_id(client, 3, method="brute", k=5, where=json.dumps({"label": label, "split": "train"})))
    assert len(answer["results"]) == 5
    assert all(r["label"] == label and r["split"] == "train" for r in answer["results"])
    assert label in ok(client.get("/api/gallery"))["labels"]
    bad = search_id(client, 3, where="label=cat")
    assert bad.status_code == 422 and bad.json()["field"] == "where" and "JSON object" in bad.json()["error"]
    empty = search_id(client, 3, where=json.dumps({"label": "no such label"}))
    assert empty.status_code == 422 and "matches the filter" in empty.json()["error"]
