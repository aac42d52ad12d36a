"""Text queries on CLIP galleries, and the compare view (a method against exact search, one query at a time).

References are computed here independently of the code under test: the text vector by open_clip
itself (same architecture, same seed), the exact neighbours by numpy (`db @ q`, argsort), recall
by `lookalike.study.metrics`. Through the Python API, the real server (uvicorn, in a thread) and
the CLI (its `main`, in this process).
"""

from __future__ import annotations

import shutil

import faiss
import httpx
import numpy as np
import pytest

import lookalike
from lookalike.errors import TextQueryError
from lookalike.gallery import open_gallery
from lookalike.search import make_method, save_method
from lookalike.search.searcher import searcher_for
from lookalike.serve import ServerConfig, create_app
from lookalike.study import metrics

from .conftest import run_main
from .test_server import ThreadedServer, _jpeg_bytes, ok, search_id

CLIP_ARCH = "ViT-B-32-quickgelu"
TEXT = "a red car"


def numpy_top(gallery, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over every gallery row (what search, the API and the server search), by numpy alone."""
    database = np.arange(gallery.count)
    scores = np.asarray(gallery.embeddings, dtype=np.float32)[database] @ np.asarray(vector, dtype=np.float32).ravel()
    order = np.argsort(-scores, kind="stable")[:k]
    return database[order], scores[order]


@pytest.fixture(scope="module")
def clip_reference():
    """open_clip's own model at the gallery's seed (0) and input size (32 px), built without lookalike."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_ARCH, pretrained=None, force_image_size=32).eval()
    return model, open_clip.get_tokenizer(CLIP_ARCH)


@pytest.fixture(scope="module")
def clip_api(clip_gallery):
    """One opened CLIP gallery for the API tests: its searcher loads the model once."""
    return lookalike.open_gallery(clip_gallery)


def reference_text_vector(clip_reference, text: str) -> np.ndarray:
    import torch

    model, tokenizer = clip_reference
    with torch.no_grad():
        v = model.encode_text(tokenizer([text])).float()
    return (v / v.norm(dim=-1, keepdim=True)).numpy()


# --- the Python API ---


@pytest.mark.slow
def test_text_search_uses_the_galleries_own_clip_and_matches_numpy(clip_api, clip_reference):
    import torch

    g = clip_api
    want = reference_text_vector(clip_reference, TEXT)
    got = searcher_for(g).vector(text=TEXT)
    assert got.shape == (1, 512) and abs(float(np.linalg.norm(got)) - 1) < 1e-5
    np.testing.assert_allclose(got, want, atol=1e-5)  # the same text tower: same seed, same tokenizer, L2-normalised
    # ... and it is the network whose image tower made the gallery: the reference's image tower reproduces a stored row
    from PIL import Image

    from lookalike.embed.transforms import Preprocess, build_transform

    row = int(g.partition().database_ids[0])
    p = Preprocess(**g.manifest.model.preprocess)
    crop = build_transform(p)(Image.open(g.paths[row]).convert("RGB")).numpy().astype(np.float64)
    normalised = ((crop / 255 - np.array(p.mean)) / np.array(p.std)).transpose(2, 0, 1)[None]
    pixels = torch.from_numpy(normalised.astype(np.float32))
    with torch.no_grad():
        image = clip_reference[0].encode_image(pixels).float()
    image = (image / image.norm(dim=-1, keepdim=True)).numpy().ravel()
    assert float(image @ np.asarray(g.embeddings[row])) > 0.99  # bf16 extraction keeps cosine ≥ 0.995

    want_ids, want_scores = numpy_top(g, want, 8)
    for method in ("brute", "flat"):
        hits = g.search(text=TEXT, k=8, method=method)
        assert [h.id for h in hits] == want_ids.tolist()
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-4)
    assert len(g.search(text=TEXT, k=8, method="ivf", nprobe=2)) > 0  # every method takes the text vector


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("car " * 80, "80 tokens long but clip's text tower reads at most 75"),
        ("x" * 5000, "characters long"),
    ],
)
def test_empty_or_over_long_text_is_refused(clip_api, text, words):
    with pytest.raises(TextQueryError, match=words):
        clip_api.search(text=text)


def test_text_at_the_context_limit_is_searched(clip_api):
    """75 tokens plus the start and end markers fill the 77-token context exactly: not an overflow."""
    assert len(clip_api.search(text="car " * 75, k=3)) == 3


def test_text_on_a_model_without_a_text_tower_names_the_models_that_have_one(tiny_gallery, tmp_path):
    import shutil

    # a copy: a searcher of its own (searchers are kept per gallery folder, and other tests load this one's model)
    g = lookalike.open_gallery(shutil.copytree(tiny_gallery, tmp_path / "g"))
    with pytest.raises(TextQueryError, match="resnet18, which has no text tower.*extracted with clip"):
        g.search(text=TEXT)
    assert searcher_for(g)._embedder is None  # refused from the registry, before loading any model
    with pytest.raises(TextQueryError, match="no text tower"):  # an id and a text are two examples: text is refused
        g.search(0, text=TEXT)


@pytest.mark.slow
def test_text_tower_comes_from_the_weights_file(ram_tmp_path):
    """--weights PATH: the text tower is the file's; a file holding only the image tower gives no text search."""
    import torch

    from lookalike.embed.models import load_towers

    source = load_towers("clip", "random", image_size=32, seed=0)  # the suite's kept draw: a copy, no new draw
    projection = source.text.tower.model.text_projection
    with torch.no_grad():  # not the weights `random` draws: a loader ignoring the file would give other embeddings
        projection.add_(0.1 * torch.randn(projection.shape, generator=torch.Generator().manual_seed(3)))
    state = source.text.tower.model.state_dict()  # the whole CLIP model, both towers
    # 600 + 350 MB of weights: in memory where there is room (`ram_tmp_path`, removed after the test)
    full, image_only = ram_tmp_path / "clip-full.pt", ram_tmp_path / "clip-visual.pt"
    try:
        torch.save({"state_dict": state}, full)
        loaded = load_towers("clip", str(full), image_size=32)
        np.testing.assert_allclose(loaded.text.embed(TEXT)[0], source.text.embed(TEXT)[0], atol=1e-6)
        drawn = load_towers("clip", "random", image_size=32, seed=0).text.embed(TEXT)[0]
        assert (
            float((drawn * loaded.text.embed(TEXT)[0]).sum()) < 0.999
        )  # so the file's weights, not a fresh draw, were used
        del loaded
        torch.save({k: v for k, v in state.items() if k.startswith("visual.")}, image_only)
        towers = load_towers("clip", str(image_only), image_size=32)
        assert towers.text is None and "holds no text tower" in towers.no_text
    finally:  # not left for pytest's last three temporary folders either, where the disk's `tmp_path` serves
        full.unlink(missing_ok=True)
        image_only.unlink(missing_ok=True)


def test_compare_reports_exactly_what_ivf_missed(tiny_gallery):
    g = lookalike.open_gallery(tiny_gallery)
    k = 10
    found_a_miss = False
    for query in g.partition().query_ids.tolist():
        c = g.compare(query, k=k, method="ivf", nprobe=1)
        want_ids, _ = numpy_top(g, g.embeddings[query], k)
        got = [h.id for h in c.hits]
        assert [h.id for h in c.exact_hits] == want_ids.tolist()
        assert set(c.missed) == set(want_ids.tolist()) - set(got)
        assert list(c.missed) == [i for i in want_ids.tolist() if i not in got]  # in exact rank order
        padded = np.array([got + [-1] * (k - len(got))])
        assert c.recall == pytest.approx(metrics.recall_per_query(padded, want_ids[None], k)[0])
        assert c.recall == pytest.approx(len(set(got) & set(want_ids.tolist())) / k)
        assert c.in_exact == tuple(i in set(want_ids.tolist()) for i in got)
        assert [h.id for h in c.missed_hits] == list(c.missed)
        assert c.method_ms > 0 and c.exact_ms > 0 and c.exact_method == "brute"
        found_a_miss |= bool(c.missed)
    assert found_a_miss  # nprobe=1 of 10 lists misses neighbours, so the checks above were not all on empty sets


def test_compare_counts_misses_among_the_methods_own_rows(tiny_gallery):
    """An index over other rows (e.g. a tuned one) is compared with exact search over those rows, not the gallery's."""
    from lookalike.search.compare import compare_search, exact_twin

    g = lookalike.open_gallery(tiny_gallery)
    rows = g.partition().database_ids[::2]
    half = make_method("flat", len(rows), g.dim)
    half.build(np.asarray(g.embeddings)[rows], rows)
    exact = exact_twin(g, half, searcher_for(g).method("brute"))
    query = np.asarray(g.embeddings[int(g.partition().query_ids[0])])[None]
    c = compare_search(g, half, exact, query, 5)
    assert set(exact.ids.tolist()) == set(rows.tolist()) and c.recall == 1.0 and c.missed == ()
    assert exact_twin(g, searcher_for(g).method("ivf"), searcher_for(g).method("brute")) is searcher_for(g).method(
        "brute"
    )


# --- the server ---


@pytest.fixture(scope="module")
def clip_client(clip_gallery):
    with ThreadedServer(create_app(clip_gallery)) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        yield c


SAVED = {"hnsw": "HNSW32_Flat", "ivfpq": "IVF4_PQ8x6np_RFlat"}


@pytest.fixture(scope="module")
def resnet_served(tiny_gallery, tmp_path_factory):
    """The session's resnet18 gallery with a saved HNSW and IVF-PQ index over every row (as the server searches),
    served with two compute slots."""
    out = tmp_path_factory.mktemp("served-compare") / "gallery"
    shutil.copytree(tiny_gallery, out)
    gallery = open_gallery(out)
    ids = np.arange(gallery.count)
    for factory in ("HNSW32,Flat", "IVF4,PQ8x6np,RFlat"):
        method = make_method(factory, len(ids), gallery.dim)
        method.build(np.asarray(gallery.embeddings)[ids], ids)
        save_method(gallery, method)
    app = create_app(out, ServerConfig(compute_slots=2))
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        yield app, c


@pytest.mark.slow
def test_text_search_through_the_api(clip_client, clip_gallery, clip_reference):
    info = ok(clip_client.get("/api/gallery"))
    assert info["text"] is True and info["text_note"] is None and info["exact_method"] == "brute"
    # measured at the warm-up's text query; the gallery was extracted pinned to torch fp32, and its text tower follows
    assert (info["text_backend"]["backend"], info["text_backend"]["precision"]) == ("torch", "fp32")
    answer = ok(clip_client.post("/api/search", data={"text": TEXT, "method": "flat", "k": "6"}))
    want_ids, want_scores = numpy_top(open_gallery(clip_gallery), reference_text_vector(clip_reference, TEXT), 6)
    assert [r["id"] for r in answer["results"]] == want_ids.tolist()
    np.testing.assert_allclose([r["score"] for r in answer["results"]], want_scores, atol=1e-4)
    assert answer["query"]["kind"] == "text" and answer["query"]["text"] == TEXT
    assert answer["latency_ms"]["decode_ms"] > 0 and answer["latency_ms"]["embed_ms"] > 0  # tokenizing, the text tower
    assert answer["real"] is False and any(
        "RANDOM weights" in w and "no learned meaning" in w for w in answer["warnings"]
    )
    compared = ok(
        clip_client.post(
            "/api/search", data={"text": TEXT, "method": "ivf", "k": "6", "nprobe": "1", "compare": "exact"}
        )
    )
    assert [r["id"] for r in compared["compare"]["exact_results"]] == want_ids.tolist()


@pytest.mark.parametrize(
    "fields, status, words",
    [
        ({"text": ""}, 422, "the text query is empty"),
        ({"text": "  "}, 422, "the text query is empty"),
        ({"text": "car " * 80}, 422, "80 tokens long"),
        ({"text": "y" * 20_000}, 422, "characters long"),
        ({"id": "1", "text": ""}, 422, "the text query is empty"),
        ({"id": "1", "negative_text": ""}, 422, "the text query is empty"),
        ({"id": "1", "negative_text": "car " * 80}, 422, "80 tokens long"),
        ({"negative_text": TEXT}, 422, "negative_text only says what to move away from"),
        ({"id": "1", "text": TEXT, "positive": ",".join(map(str, range(2, 33)))}, 422, "at most 32 examples"),
    ],
)
def test_bad_text_is_a_clear_4xx(clip_client, fields, status, words):
    response = clip_client.post("/api/search", data=fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert words in body["error"] and body["field"] in ("text", "negative_text", "image", "positive")
    if "negative_text" in fields and "id" in fields:
        assert body["field"] == "negative_text"


def rule(positives: list[np.ndarray], negatives: list[np.ndarray] = ()) -> np.ndarray:
    """The documented rule of several examples, in numpy: normalise(mean(positives) − 0.5 × mean(negatives))."""
    q = np.mean(positives, axis=0) - (0.5 * np.mean(negatives, axis=0) if len(negatives) else 0)
    return q / np.linalg.norm(q)


def test_an_upload_and_a_text_together_follow_the_rule(clip_client, clip_gallery, clip_reference, tiny_collection):
    """An uploaded image plus a text ("this image, but at night") is the mean of the image's and the text's unit
    vectors, normalised: checked against numpy over the stored rows, the image's own stored row standing for the
    upload and open_clip's text tower for the text."""
    gallery = open_gallery(clip_gallery)
    x = np.asarray(gallery.embeddings, dtype=np.float32)
    path = sorted((tiny_collection / "val" / "images").glob("*.JPEG"))[3]
    row = [i for i, p in enumerate(gallery.paths) if p.endswith(f"val/images/{path.name}")]
    assert len(row) == 1  # the uploaded file is a row of the gallery: its stored embedding is the image's vector
    image, night = x[row[0]], reference_text_vector(clip_reference, "at night")[0]
    files = {"image": (path.name, path.read_bytes(), "image/jpeg")}
    fields = {"method": "brute", "k": "8"}
    answer = ok(clip_client.post("/api/search", files=files, data={**fields, "text": "at night"}))
    want_ids, want_scores = numpy_top(gallery, rule([image, night]), 8)
    assert [r["id"] for r in answer["results"]] == want_ids.tolist()
    np.testing.assert_allclose([r["score"] for r in answer["results"]], want_scores, atol=1e-4)
    assert answer["query"] == {**answer["query"], "kind": "upload", "filename": path.name, "text": "at night"}
    assert answer["latency_ms"]["decode_ms"] > 0 and answer["latency_ms"]["embed_ms"] > 0
    alone = ok(clip_client.post("/api/search", files=files, data=fields))
    assert [r["id"] for r in alone["results"]] != want_ids.tolist()  # the text moved the results: the check can fail

    # the same, with a text and gallery ids as negatives: every example from its own reference
    car = reference_text_vector(clip_reference, TEXT)[0]
    answer = ok(
        clip_client.post(
            "/api/search",
            files=files,
            data={**fields, "text": "at night", "negative_text": TEXT, "positive": "40", "negative": "7,90"},
        )
    )
    q = rule([image, night, x[40]], [car, x[7], x[90]])
    scores = x @ q
    scores[[40, 7, 90]] = -np.inf  # example gallery ids are left out of the results
    want = np.argsort(-scores, kind="stable")[:8]
    assert [r["id"] for r in answer["results"]] == want.tolist()
    np.testing.assert_allclose([r["score"] for r in answer["results"]], scores[want], atol=1e-4)
    assert (answer["negative_text"], answer["positive"], answer["negative"]) == (TEXT, [40], [7, 90])


def test_a_gallery_id_and_a_text_together_follow_the_rule(clip_client, clip_gallery, clip_reference):
    """A gallery id plus a text, and a text with a negative text: the stored row and open_clip's texts, in numpy."""
    gallery = open_gallery(clip_gallery)
    x = np.asarray(gallery.embeddings, dtype=np.float32)
    night, car = (reference_text_vector(clip_reference, t)[0] for t in ("at night", TEXT))
    answer = ok(clip_client.post("/api/search", data={"id": "12", "text": "at night", "method": "flat", "k": "6"}))
    scores = x @ rule([x[12], night])
    scores[12] = -np.inf  # the query's own id is an example: left out
    assert [r["id"] for r in answer["results"]] == np.argsort(-scores, kind="stable")[:6].tolist()
    assert answer["query"]["kind"] == "id" and answer["query"]["id"] == 12 and answer["query"]["text"] == "at night"
    assert answer["latency_ms"]["decode_ms"] > 0  # the text's tokenizing; the id's row is stored
    want_ids, _ = numpy_top(gallery, rule([car], [night]), 6)
    answer = ok(
        clip_client.post("/api/search", data={"text": TEXT, "negative_text": "at night", "k": "6", "method": "brute"})
    )
    assert [r["id"] for r in answer["results"]] == want_ids.tolist()
    assert answer["query"]["kind"] == "text" and answer["negative_text"] == "at night"


def test_text_on_a_resnet_gallery_is_a_422_naming_clip(resnet_served):
    _, client = resnet_served
    info = ok(client.get("/api/gallery"))
    assert info["text"] is False and "no text tower" in info["text_note"]
    for text in (TEXT, ""):
        response = client.post("/api/search", data={"text": text})
        assert response.status_code == 422 and response.json()["field"] == "text"
        assert "resnet18, which has no text tower" in response.json()["error"] and "clip" in response.json()["error"]
    # beside an image or an id, as one more example or as a negative one: the same sentence, naming the field
    upload = {"image": ("q.jpg", _jpeg_bytes(), "image/jpeg")}
    for files, fields, field in [
        (upload, {"text": "at night"}, "text"),
        (None, {"id": "3", "text": "at night"}, "text"),
        (upload, {"negative_text": "at night"}, "negative_text"),
        (None, {"id": "3", "negative_text": "at night", "positive": "4"}, "negative_text"),
    ]:
        response = client.post("/api/search", files=files, data=fields)
        assert response.status_code == 422 and response.json()["field"] == field, response.text
        assert "resnet18, which has no text tower" in response.json()["error"]
    assert ok(client.post("/api/search", files=upload))["results"]  # and the server still answers


def test_compare_through_the_api_reports_what_ivf_missed(resnet_served):
    app, client = resnet_served
    gallery = app.state.service.gallery
    k = 10
    misses = 0
    for query in gallery.partition().query_ids[:8].tolist():
        answer = ok(search_id(client, query, method="ivf", k=k, nprobe=1, compare="exact"))
        c = answer["compare"]
        want_ids, want_scores = numpy_top(gallery, gallery.embeddings[query], k)
        got = [r["id"] for r in answer["results"]]
        assert [r["id"] for r in c["exact_results"]] == want_ids.tolist()
        np.testing.assert_allclose([r["score"] for r in c["exact_results"]], want_scores, atol=1e-5)
        assert c["missed_ids"] == [i for i in want_ids.tolist() if i not in got]  # exact minus approximate, exact order
        padded = np.array([got + [-1] * (k - len(got))])
        assert c["recall"] == pytest.approx(metrics.recall_per_query(padded, want_ids[None], k)[0])
        assert [r["in_exact"] for r in answer["results"]] == [i in set(want_ids.tolist()) for i in got]
        assert c["method_ms"] > 0 and c["exact_ms"] > 0 and answer["latency_ms"]["search_ms"] == c["method_ms"]
        assert answer["params"] == {"nprobe": 1} and c["exact_method"] == "brute"
        misses += len(c["missed_ids"])
    assert misses > 0
    plain = ok(search_id(client, 3, method="ivf", k=5))
    assert plain["compare"] is None and all(r["in_exact"] is None for r in plain["results"])


def test_ef_search_and_k_factor_apply_to_one_request(resnet_served):
    app, client = resnet_served
    hnsw, ivfpq = (app.state.service.methods[SAVED[name]].method for name in ("hnsw", "ivfpq"))
    ranges = {m["name"]: m["param_ranges"] for m in ok(client.get("/api/gallery"))["methods"]}
    assert ranges[SAVED["hnsw"]] == {"efSearch": [1, 4096]} and ranges[SAVED["ivfpq"]] == {
        "nprobe": [1, 4],
        "k_factor": [1, 256],
    }

    answer = ok(search_id(client, 7, method=SAVED["hnsw"], k=5, efSearch=1, compare="exact"))
    assert answer["params"] == {"efSearch": 1} and answer["compare"]["recall"] <= 1.0
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 64  # the shared index was not changed by the request
    assert ok(search_id(client, 7, method=SAVED["hnsw"], k=5))["params"] == {"efSearch": 64}

    answer = ok(search_id(client, 7, method=SAVED["ivfpq"], k=5, k_factor=1, nprobe=1, compare="exact"))
    assert answer["params"] == {"nprobe": 1, "k_factor": 1}
    assert faiss.downcast_index(ivfpq.index).k_factor == 4 and faiss.extract_index_ivf(ivfpq.index).nprobe == 4
    full = ok(search_id(client, 7, method=SAVED["ivfpq"], k=5, k_factor=256, nprobe=4, compare="exact"))
    # every list, every candidate re-ranked exactly
    assert full["compare"]["missed_ids"] == [] and full["compare"]["recall"] == 1.0


@pytest.mark.parametrize(
    "fields, words, field",
    [
        ({"method": SAVED["hnsw"], "efSearch": 0}, "efSearch=0 is out of range", "efSearch"),
        ({"method": SAVED["hnsw"], "efSearch": 4097}, "use 1..4096", "efSearch"),
        ({"method": "ivf", "efSearch": 8}, f"methods here that take efSearch: {SAVED['hnsw']}", "efSearch"),
        ({"method": SAVED["ivfpq"], "k_factor": 257}, "k_factor=257 is out of range", "k_factor"),
        ({"method": "flat", "k_factor": 2}, "has no k_factor", "k_factor"),
        ({"method": "ivf", "compare": "approximate"}, "compare=exact", "compare"),
    ],
)
def test_bad_search_parameters_are_422(resnet_served, fields, words, field):
    _, client = resnet_served
    response = search_id(client, 1, **fields)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"] and response.json()["field"] == field


def test_concurrent_ef_search_requests_do_not_see_each_other(resnet_served):
    """Two compute slots, requests with and without a per-call efSearch (and compare) interleaved: each equals its lone
    answer."""
    from concurrent.futures import ThreadPoolExecutor

    _, client = resnet_served
    jobs = [{"efSearch": 1}, {}, {"efSearch": 2, "compare": "exact"}, {"efSearch": 4096}]
    queries = list(range(0, 100, 9))

    def answer(query: int, extra: dict) -> list[int]:
        return [r["id"] for r in ok(search_id(client, query, method=SAVED["hnsw"], k=10, **extra))["results"]]

    reference = {(q, i): answer(q, job) for q in queries for i, job in enumerate(jobs)}
    assert any(reference[(q, 0)] != reference[(q, 1)] for q in queries)  # efSearch=1 changes answers: a leak would show
    work = [(q, i) for _ in range(3) for q in queries for i in range(len(jobs))]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda key: answer(key[0], jobs[key[1]]), work))
    assert [reference[key] for key in work] == got


# --- the CLI ---


@pytest.mark.slow
def test_cli_text_search_and_compare(clip_gallery, tiny_gallery):
    """The CLI's text search, in this process (`run_main`: its output and exit code are the point)."""
    args = ["--text", TEXT, "-k", "5", "--method", "ivf", "--nprobe", "1", "--compare"]
    text = run_main("search", "--gallery", clip_gallery, *args, check=False)
    assert text.returncode == 0, text.stderr
    assert "RANDOM weights: the model is untrained, so these rankings carry no learned meaning" in text.stdout
    assert f"query: text {TEXT!r}" in text.stdout and "this call: {'nprobe': 1}" in text.stdout
    assert "recall@5" in text.stdout and "against exact search (brute)" in text.stdout
    rows = [line for line in text.stdout.splitlines() if line.strip()[:1].isdigit() and ".JPEG" in line]
    assert len(rows) >= 5
    resnet = run_main("search", "--gallery", tiny_gallery, "--text", TEXT, check=False)
    assert resnet.returncode == 2 and "resnet18, which has no text tower" in resnet.stderr
    assert "extracted with clip" in resnet.stderr


def test_the_text_tower_stops_at_the_end_of_text_and_equals_open_clips():
    """The causal mask makes the positions after the end-of-text token irrelevant to the pooled feature: the short
    path must give open_clip's own encode_text, for short and full-length texts and a batch of mixed lengths."""
    import open_clip
    import torch

    from lookalike.embed.registry import causal_text_encoder

    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    encode = causal_text_encoder(model)
    assert encode is not model.encode_text  # the short path is taken for CLIP
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    tokens = torch.cat([tokenizer(t) for t in ("a red car", "x", "car " * 75, "a dog on a beach at night")])
    with torch.inference_mode():
        expected, got = model.encode_text(tokens).numpy(), encode(tokens).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
