"""Several examples per query (issue 24): positives and negatives, any query form, the rule against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import lookalike
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
from lookalike.search.searcher import MAX_EXAMPLES, Searcher

from .conftest import run_main


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def vectors_gallery(tmp_path_factory):
    x = unit(np.random.default_rng(0).standard_normal((500, 24)).astype(np.float32))
    path = tmp_path_factory.mktemp("examples") / "g"
    write_array_gallery(
        path, x, segments=[Segment("generated", 0, 500, True, "test")], model=generated_model_block(24, 0)
    )
    return lookalike.open_gallery(path), x


def numpy_top(x: np.ndarray, q: np.ndarray, k: int, leave_out=()) -> list[int]:
    scores = x @ q
    scores[list(leave_out)] = -np.inf
    return np.argsort(-scores, kind="stable")[:k].tolist()


def test_positives_and_negatives_by_id_follow_the_documented_rule(vectors_gallery):
    gallery, x = vectors_gallery
    q = unit(x[[3, 40, 77]].mean(axis=0) - 0.5 * x[[5, 9]].mean(axis=0))  # normalise(mean(p) − α·mean(n))
    hits = gallery.search(positive=[3, 40, 77], negative=[5, 9], k=10)
    assert [h.id for h in hits] == numpy_top(x, q, 10, leave_out=(3, 40, 77, 5, 9))
    np.testing.assert_allclose([h.score for h in hits], (x @ q)[[h.id for h in hits]], rtol=1e-5)
    # the first query counts as a positive; a vector is an example like any other; alpha weighs the negatives
    q2 = unit((x[3] + unit(x[10] + x[11])) / 2 - 2.0 * x[5])
    hits = gallery.search(3, positive=[x[10] + x[11]], negative=[5], alpha=2.0, k=5, method="brute")
    assert [h.id for h in hits] == numpy_top(x, q2, 5, leave_out=(3, 5))


def test_one_positive_and_no_negative_is_the_plain_search(vectors_gallery):
    gallery, _ = vectors_gallery
    assert [h.id for h in gallery.search(positive=[7], k=5)] == [h.id for h in gallery.search(7, k=6)][1:]


@pytest.mark.parametrize(
    "positive, negative, alpha, message",
    [
        ((), (4,), None, "at least one positive example"),
        (tuple(range(MAX_EXAMPLES)), (40,), None, f"at most {MAX_EXAMPLES} examples"),
        ((4,), (4,), 1.0, "cancel out"),
        ((4,), (5,), -1.0, "alpha weighs the negatives"),
    ],
)
def test_bad_examples_are_one_sentence(vectors_gallery, positive, negative, alpha, message):
    gallery, _ = vectors_gallery
    with pytest.raises(lookalike.LookalikeError, match=message):
        gallery.search(positive=list(positive), negative=list(negative), alpha=alpha)


def test_text_and_an_image_together_on_a_clip_gallery(clip_gallery):
    gallery = lookalike.open_gallery(clip_gallery)
    searcher = Searcher(gallery)
    image = gallery.paths[5]
    image_vector, text_vector = searcher.vector(image)[0], searcher.text_vector("at night")[0]
    x = np.asarray(gallery.embeddings)
    q = unit((image_vector + text_vector) / 2)
    hits = gallery.search(positive=[image, lookalike.Text("at night")], k=5)
    assert [h.id for h in hits] == numpy_top(x, q, 5)
    assert [h.id for h in gallery.search(image, text="at night", k=5)] == [h.id for h in hits]  # the same query


def test_the_cli_takes_several_images_and_nots(tiny_gallery):
    gallery = lookalike.open_gallery(tiny_gallery)
    a, b, c = gallery.paths[0], gallery.paths[30], gallery.paths[60]
    proc = run_main("search", "--gallery", tiny_gallery, "--image", a, "--image", b, "--not", c, "-k", "5")
    ranked = [line.split()[1] for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    x = np.asarray(gallery.embeddings)
    q = unit(x[[0, 30]].mean(axis=0) - 0.5 * x[60])
    expected = np.sort(x @ q)[::-1][:5]
    np.testing.assert_allclose([float(s) for s in ranked], expected, rtol=1e-4)
    assert f"query: {a} + {b} − {c}" in proc.stdout
