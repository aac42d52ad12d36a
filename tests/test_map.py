"""A map of the gallery (issue 24): PCA against numpy's, the compact answer over HTTP, the CLI's PNG."""

from __future__ import annotations

import base64
import sys

import numpy as np
import pytest

import lookalike
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
from lookalike.study.projection import GRID, encode_map, gallery_map

from .conftest import run_main


def grid(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u2")


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """1,200 rows in 4 labelled clusters, written in shards of 500 (the PCA reads them block by block)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 3
    labels = np.repeat(np.arange(4), 300)
    x = (centres[labels] + rng.standard_normal((1200, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("map") / "g"
    write_array_gallery(
        path,
        x,
        labels=[f"c{i}" for i in labels],
        segments=[Segment("generated", 0, 1200, True, "test")],
        model=generated_model_block(16, 0),
        shard_rows=500,
    )
    return lookalike.open_gallery(path), x


def test_the_pca_map_is_numpys_pca_and_is_cached_per_content(clustered):
    gallery, x = clustered
    mapped = gallery_map(gallery, "pca")
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # independent: the SVD of the centred rows
    for axis, coords in enumerate((mapped.x, mapped.y)):
        expected = centred @ vt[axis]
        sign = np.sign(np.dot(coords, expected))
        np.testing.assert_allclose(coords, sign * expected, atol=1e-4)
    assert "explain" in mapped.note
    cached = list((gallery.path / "cache").glob(f"map-pca-{gallery.fingerprint}.npz"))
    assert len(cached) == 1
    again = gallery_map(gallery, "pca")
    np.testing.assert_array_equal(again.x, mapped.x)


def test_the_compact_answer_decodes_to_every_row(clustered):
    gallery, _ = clustered
    mapped = gallery_map(gallery)
    answer = encode_map(gallery, mapped)
    xs, ys, index = grid(answer["x"]), grid(answer["y"]), grid(answer["label_index"])
    assert len(xs) == len(ys) == len(index) == gallery.count and answer["grid"] == GRID
    assert xs.min() == 0 and xs.max() == GRID  # the coordinates fill the grid
    order = np.argsort(mapped.x, kind="stable")
    assert np.all(np.diff(xs[order].astype(int)) >= 0)  # positions keep the coordinates' order
    assert [answer["labels"][i] for i in index[:3]] == list(gallery.labels[:3])


def test_umap_without_its_extra_and_an_unknown_method_are_one_sentence(clustered, monkeypatch):
    gallery, _ = clustered
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` fails, as when umap-learn is not installed
    with pytest.raises(lookalike.LookalikeError, match=r"pip install 'lookalike\[map\]'"):
        gallery_map(gallery, "umap")
    with pytest.raises(lookalike.LookalikeError, match="unknown map method"):
        gallery_map(gallery, "tsne")


def test_the_server_answers_the_map_and_the_cli_draws_it(clustered, tmp_path):
    import httpx

    from lookalike.serve import create_app

    from .test_server import ThreadedServer, ok

    gallery, _ = clustered
    with ThreadedServer(create_app(gallery.path)) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        response = c.get("/api/map")
        answer = ok(response)
        assert answer["count"] == gallery.count and len(grid(answer["x"])) == gallery.count
        assert answer["real"] is False and "SYNTHETIC" in answer["provenance"]
        assert len(response.content) < 10 * gallery.count + 2000  # compact: a few bytes a point
        assert str(gallery.path.parent) not in response.text
        bad = c.get("/api/map", params={"method": "tsne"})
        assert bad.status_code == 422
    out = tmp_path / "map.png"
    proc = run_main("map", "--gallery", gallery.path, "--out", out)
    assert out.stat().st_size > 10_000 and "GENERATED" in proc.stdout and "explain" in proc.stdout
