"""The public Python API (`import lookalike`), checked against numpy computations and the CLI's own gallery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import lookalike
from lookalike.gallery import Manifest
from lookalike.search.searcher import searcher_for


def expected_top(gallery, vector: np.ndarray, k: int, database: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Brute force in numpy over every row (or the study's held-out database): an independent reference."""
    database = np.arange(gallery.count) if database == "all" else gallery.partition().database_ids
    scores = np.asarray(gallery.embeddings)[database] @ vector.ravel()
    order = np.argsort(-scores, kind="stable")[:k]
    return database[order], scores[order]


def test_version_and_front_door():
    assert lookalike.__version__ and lookalike.__version__[0].isdigit()
    assert {"open_gallery", "extract", "build_index", "Gallery", "Hit"} <= set(lookalike.__all__)


@pytest.mark.slow
def test_search_with_every_query_form_matches_numpy(tiny_gallery):
    g = lookalike.open_gallery(tiny_gallery)
    assert isinstance(g.manifest, Manifest) and g.count == 120 and g.dim == 512
    assert g.metadata.num_rows == 120
    query_id = int(g.partition().query_ids[0])
    stored = np.asarray(g.embeddings[query_id], dtype=np.float32)
    want_ids, want_scores = expected_top(g, stored, 5)

    by_id = g.search(query_id, k=5)
    assert [h.id for h in by_id] == want_ids.tolist()
    assert by_id[0].id == query_id  # every row is searched by default: a held-out row finds itself
    np.testing.assert_allclose([h.score for h in by_id], want_scores, rtol=1e-5, atol=1e-6)
    assert [h.rank for h in by_id] == [1, 2, 3, 4, 5]
    row = g.row(by_id[0].id)
    assert (by_id[0].path, by_id[0].label, by_id[0].split) == (row["path"], row["label"], row["split"])

    scaled = g.search(3.0 * stored, k=5)  # an unnormalised vector is searched by its direction
    assert [h.id for h in scaled] == want_ids.tolist()

    path = g.row(query_id)["path"]
    by_path = g.search(path, k=5)
    by_pil = g.search(Image.open(path), k=5)
    assert [h.id for h in by_path] == [h.id for h in by_pil]
    # the file embedded now is the row stored at extraction (bf16 may differ in the last bits)
    got = np.array([h.score for h in by_path])
    ref_ids, ref_scores = expected_top(g, searcher_for(g).vector(path), 5)
    assert [h.id for h in by_path] == ref_ids.tolist()
    np.testing.assert_allclose(got, ref_scores, rtol=1e-4, atol=1e-5)
    assert float((searcher_for(g).vector(path) @ stored)[0]) > 0.99


def test_every_row_is_found_by_default_and_heldout_leaves_the_queries_out(tiny_gallery):
    g = lookalike.open_gallery(tiny_gallery)
    x = np.asarray(g.embeddings)
    held_out = set(g.partition().query_ids.tolist())
    assert held_out  # the tiny gallery has a val split: these are the study's queries
    found = {h.id for q in range(g.count) for h in g.search(x[q], k=1)}
    assert found == set(range(g.count))  # each row is its own nearest neighbour, held-out rows included
    for query in sorted(held_out)[:5]:
        vector = x[query]
        want, scores = expected_top(g, vector, 10, "heldout")
        hits = g.search(vector, k=10, database="heldout")
        assert [h.id for h in hits] == want.tolist() and not held_out & {h.id for h in hits}
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5, atol=1e-6)
        comparison = g.compare(vector, k=10, method="ivf", database="heldout")
        assert not held_out & {h.id for h in comparison.exact_hits}
    with pytest.raises(lookalike.LookalikeError, match="use all .* or heldout"):
        g.search(0, database="train")


def test_search_parameters_apply_to_one_call(tiny_gallery):
    g = lookalike.open_gallery(tiny_gallery)
    query = int(g.partition().query_ids[1])
    exact = [h.id for h in g.search(query, k=10, method="flat")]
    ivf = searcher_for(g).method("ivf")
    nlist = ivf.params()["nlist"]
    default = ivf.params()["nprobe"]
    queries = g.partition().query_ids.tolist()
    one_list = [{h.id for h in g.search(q, k=10, method="ivf", nprobe=1)} for q in queries]
    full = [{h.id for h in g.search(q, k=10, method="flat")} for q in queries]
    assert one_list != full  # nprobe=1 reached the index: one list of ten misses neighbours
    assert ivf.params()["nprobe"] == default  # the call's nprobe did not stick
    assert [h.id for h in g.search(query, k=10, method="ivf", nprobe=nlist)] == exact  # every list probed: exact


@pytest.mark.parametrize(
    "query, message",
    [
        ("no/such/file.jpg", "does not exist"),
        (np.zeros(512, np.float32), "zero"),
        (np.ones(7, np.float32), "shape"),
        (True, "bool"),
        (10**6, "no gallery image"),
    ],
)
def test_bad_queries_say_what_to_pass(tiny_gallery, query, message):
    g = lookalike.open_gallery(tiny_gallery)
    with pytest.raises(lookalike.LookalikeError, match=message):
        g.search(query)


@pytest.mark.slow
def test_extract_and_build_index_match_the_cli(tiny_collection, tiny_gallery, tmp_path):
    cli = lookalike.open_gallery(tiny_gallery)  # made by `lookalike extract` with the same arguments
    chosen = cli.manifest.model.inference  # `auto` measures afresh each run: give this run the CLI run's choice
    made = lookalike.extract(
        tiny_collection,
        tmp_path / "api",
        model="resnet18",
        weights="random",
        image_size=32,
        batch_size=16,
        decode_threads=0,
        backend=chosen.backend,
        precision=chosen.precision,
        threads=chosen.threads,
    )
    np.testing.assert_array_equal(np.asarray(made.embeddings), np.asarray(cli.embeddings))
    assert made.paths == cli.paths

    copy = tmp_path / "copy"
    shutil.copytree(tiny_gallery, copy)
    g = lookalike.open_gallery(copy)
    built = lookalike.build_index(g, "ivf", nlist=4, nprobe=4)
    assert (copy / "indexes" / "ivf" / "index.faiss").is_file()
    assert built.params()["nlist"] == 4 and built.params()["nprobe"] == 4
    assert built.ntotal == g.count  # every row, as search searches
    query = int(g.partition().query_ids[0])
    want, _ = expected_top(g, np.asarray(g.embeddings[query]), 10)
    assert [
        h.id for h in lookalike.open_gallery(copy).search(query, k=10, method="ivf")
    ] == want.tolist()  # nprobe = nlist: exact

    # an index of the study's database records it, and is not searched as if it held every row
    heldout = lookalike.build_index(g, "ivf", nlist=4, nprobe=4, database="heldout")
    info = json.loads((copy / "indexes" / "ivf" / "method.json").read_text())
    assert info["database"] == "heldout" and heldout.ntotal == len(g.partition().database_ids)
    assert [h.id for h in g.search(query, k=10, method="ivf")] == want.tolist()  # rebuilt over every row
    want_heldout, _ = expected_top(g, np.asarray(g.embeddings[query]), 10, "heldout")
    assert [h.id for h in g.search(query, k=10, method="ivf", database="heldout")] == want_heldout.tolist()

    with pytest.raises(lookalike.LookalikeError, match="ExtractConfig"):
        lookalike.extract(tiny_collection, tmp_path / "x", no_such_option=1)


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {})
    assert (tmp_path / "runs/api-example/resnet18/indexes/ivf/index.faiss").is_file()
