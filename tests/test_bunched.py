"""Bunched generated embeddings: nearly every pair scores above 0.9, as with a random-weight CNN; clusters are kept."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.data.vectors import make_bunched_embeddings, make_clustered_embeddings


@pytest.mark.parametrize("d", [64, 512])
def test_nearly_all_pairs_score_above_0_9_and_neighbours_still_share_a_cluster(d):
    x, labels = make_bunched_embeddings(2000, d, seed=4, n_clusters=50)
    assert x.shape == (2000, d) and x.dtype == np.float32
    # independently, in float64: unit rows, and the 1st percentile of every pair's cosine over 0.9
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(x64, axis=1), 1.0, atol=1e-5)
    cos = x64 @ x64.T
    pairs = cos[np.triu_indices(len(x), 1)]
    assert np.percentile(pairs, 1) > 0.9
    # neighbourhoods mean something: a row's nearest other row shares its cluster far more often than chance
    np.fill_diagonal(cos, -np.inf)
    nearest = cos.argmax(axis=1)
    same = np.mean(labels[nearest] == labels)
    chance = np.mean(labels[np.random.default_rng(0).permutation(len(x))] == labels)
    assert same > 0.3 and same > 5 * chance


def test_bunched_rows_keep_the_clustered_generators_labels_and_neighbours():
    """The same seed draws the same clusters: the common direction moves the scores, not who is near whom."""
    x, labels = make_bunched_embeddings(1500, 128, seed=5, n_clusters=30)
    y, same_labels = make_clustered_embeddings(1500, 128, seed=5, n_clusters=30)
    np.testing.assert_array_equal(labels, same_labels)
    top_x = np.argsort(-(x[:50] @ x.T), axis=1)[:, 1:11]
    top_y = np.argsort(-(y[:50] @ y.T), axis=1)[:, 1:11]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_x, top_y)])
    assert overlap > 0.5
    spread = lambda v: np.percentile((v @ v.T)[np.triu_indices(len(v), 1)], [1, 99])  # noqa: E731
    assert np.diff(spread(x))[0] < 0.2 < np.diff(spread(y))[0]  # bunched: a narrow band of scores


def test_bunched_generator_is_seeded_and_checks_its_weight():
    from lookalike.errors import LookalikeError

    a, _ = make_bunched_embeddings(300, 32, seed=7)
    b, _ = make_bunched_embeddings(300, 32, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, make_bunched_embeddings(300, 32, seed=8)[0])
    with pytest.raises(LookalikeError, match="common_weight"):
        make_bunched_embeddings(10, 32, common_weight=1.0)
