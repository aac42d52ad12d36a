"""exact-lowp: an int8 or 16-bit scan plus fp32 re-ranking returns exactly fp32 brute force's top k."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.search import exact_lowp as lowp
from lookalike.search.exact_lowp import UNIT_ROUNDOFF, ExactLowPrecision, quantize_rows, score_error_bound


def numpy_top_k(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: fp32 scores by plain numpy, best first, ties to the lower row."""
    scores = q @ x.T
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def near_ties(seed: int = 1, d: int = 96, n: int = 12000, step: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """For each query, 40 rows whose scores climb in steps of `step` (1e-5: far below bf16's resolution,
    ~4e-3), 300 exact duplicates of them (ties), and random filler."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((30, d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ladder = []
    for q in queries:
        for c in 0.95 + step * np.arange(40):
            r = rng.standard_normal(d)
            r -= (r @ q) * q
            ladder.append(c * q + np.sqrt(1 - c * c) * r / np.linalg.norm(r))
    ladder = np.array(ladder)
    rows = np.concatenate(
        [ladder, ladder[rng.integers(0, len(ladder), 300)], rng.standard_normal((n - len(ladder) - 300, d))]
    )
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows[rng.permutation(len(rows))].astype(np.float32), queries.astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "bf16", "fp16", "fp32", "auto"])
def test_near_ties_give_exactly_the_fp32_ids(precision):
    x, q = near_ties()
    method = ExactLowPrecision(precision=precision)
    method.build(x)
    want_scores, want_ids = numpy_top_k(x, q, 25)
    scores, ids = method.search(q, 25)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    single_scores, single_ids = method.search(q[3], 25)  # one query at a time takes the same path
    np.testing.assert_array_equal(single_ids[0], want_ids[3])


def test_streamed_int8_candidates_are_the_one_pass_candidates_and_hold_every_row_within_the_margin(monkeypatch):
    """The candidate pairs themselves (the search's fallbacks would hide a too-high floor): every row whose exact
    integer
    product is within the margin of its query's k-th (numpy, int64) is among them, and streaming over 70 parts
    changes nothing against one pass."""
    import torch

    rng = np.random.default_rng(3)
    n, b, d, k = 10_003, 24, 64, 10
    codes = rng.integers(-127, 128, (n, d), dtype=np.int8)
    q_codes = rng.integers(-127, 128, (b, d), dtype=np.int8)
    # the k-th and the best are ~5000 apart here: a floor off by that shows
    margin = rng.integers(0, 3000, b).astype(np.int64)
    products = q_codes.astype(np.int64) @ codes.astype(np.int64).T
    kth = -np.sort(-products, axis=1)[:, k - 1]

    def candidates(part_rows: int) -> set[tuple[int, int]]:
        monkeypatch.setattr(lowp, "INT8_PART_BYTES", 4 * b * part_rows)
        workspace = torch.empty(b * max(part_rows, lowp.INT8_ROW_BLOCK), dtype=torch.int32)
        q, r = lowp._streamed_int8_pairs(torch.from_numpy(codes), q_codes, torch.from_numpy(margin), k, workspace)
        return set(zip(q.tolist(), r.tolist()))

    monkeypatch.setattr(lowp, "INT8_ROW_BLOCK", 48)
    streamed = candidates(144)
    within = {(i, j) for i, j in zip(*np.nonzero(products >= (kth - margin)[:, None]))}
    assert within <= streamed
    monkeypatch.setattr(lowp, "INT8_ROW_BLOCK", 4096)
    assert streamed == candidates(n)


@pytest.mark.parametrize("d", [512, 1280])
def test_few_query_int8_candidates_are_exactly_the_rows_within_the_margin(d):
    """One query's candidates against numpy's int64 products: at d = 512 numkong's scores come back in float32, at
    d = 1280 (MobileNetV2's width) the products pass 2²⁴, so they come back in float64."""
    import torch

    rng = np.random.default_rng(4)
    n, b, k = 4000, 3, 10
    codes = np.where(rng.random((n, d)) < 0.97, 127, rng.integers(-127, 128, (n, d))).astype(np.int8)
    q_codes = np.where(rng.random((b, d)) < 0.97, 127, rng.integers(-127, 128, (b, d))).astype(np.int8)
    products = q_codes.astype(np.int64) @ codes.astype(np.int64).T
    kth = -np.sort(-products, axis=1)[:, k - 1]
    rows = lowp.Int8Rows(torch.from_numpy(codes), 1.0, 0.0, 1.0)  # only the codes matter here
    for margin in (np.zeros(b, np.int64), rng.integers(1, 200, b), rng.integers(200, 5000, b)):
        q, r = lowp._few_int8_pairs(q_codes, rows, margin, k)
        assert set(zip(q.tolist(), r.tolist())) == {
            (i, j) for i, j in zip(*np.nonzero(products >= (kth - margin)[:, None]))
        }


def test_the_error_bound_is_what_keeps_it_exact(monkeypatch):
    """Without the margin (and without the slack the group maxima add) the bf16 scan drops true neighbours:
    the near-tie test above can fail."""
    x, q = near_ties(step=1e-4)  # a ladder about as wide as bf16's rounding: its order gets scrambled
    monkeypatch.setattr(lowp, "GROUPS", 1)
    method = ExactLowPrecision(precision="bf16")
    method.build(x)
    np.testing.assert_array_equal(method.search(q, 25)[1], numpy_top_k(x, q, 25)[1])  # with the margin: exact
    monkeypatch.setattr(lowp, "score_error_bound", lambda precision, d: 0.0)
    monkeypatch.setattr(lowp, "gamma", lambda d: 0.0)
    method = ExactLowPrecision(precision="bf16")
    method.build(x)
    assert not np.array_equal(method.search(q, 25)[1], numpy_top_k(x, q, 25)[1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_bound_covers_the_real_rounding_error(precision):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 256))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * rng.standard_normal((50, 256))  # near neighbours: large scores, large absolute errors
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    approx = (
        torch.mm(torch.from_numpy(q.astype(np.float32)).to(dtype), torch.from_numpy(x.astype(np.float32)).to(dtype).T)
        .double()
        .numpy()
    )
    error = np.abs(approx - q @ x.T).max()
    bound = score_error_bound(precision, 256)
    assert error <= bound
    assert bound < 4 * UNIT_ROUNDOFF[precision]  # and not uselessly loose


def test_l2_and_a_saved_method_agree_with_brute_force(tiny_gallery, tmp_path):
    import shutil

    from lookalike.gallery import open_gallery
    from lookalike.search import get_method, load_method, save_method

    copy = tmp_path / "g"
    shutil.copytree(tiny_gallery, copy)
    gallery = open_gallery(copy)
    queries = np.asarray(gallery.embeddings)[gallery.partition().query_ids]
    for metric in ("ip", "l2"):
        brute = get_method(gallery, "brute", metric)[0]
        built = get_method(gallery, "exact-lowp", metric)[0]
        save_method(gallery, built)
        loaded = load_method(gallery, "exact-lowp", metric)
        for key in ("precision", "few_precision", "fp32_products", "probe"):
            assert loaded.params().get(key) == built.params().get(key)
        want = brute.search(queries, 10)
        for method in (built, loaded):
            scores, ids = method.search(queries, 10)
            np.testing.assert_array_equal(ids, want[1])
            np.testing.assert_allclose(scores, want[0], atol=1e-5)


def test_densely_packed_data_is_exact_without_gathering_the_whole_gallery(monkeypatch):
    """An untrained model's embeddings nearly coincide: most of the gallery lies within the bound of the k-th score.
    Those queries take the dense fp32 product; spread-out queries in the same batch keep the gathered path."""
    rng = np.random.default_rng(2)
    d = 64
    centre = rng.standard_normal(d)
    packed = centre + 0.02 * rng.standard_normal((3000, d))  # cosines ~0.99 to each other
    spread = rng.standard_normal((3000, d))
    x = np.concatenate([packed, spread])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = np.concatenate([x[:20] + 0.01 * rng.standard_normal((20, d)), rng.standard_normal((20, d))])
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    gathered = []
    original = lowp._exact_scores
    monkeypatch.setattr(lowp, "_exact_scores", lambda *a: gathered.append(len(a[2])) or original(*a))
    method = ExactLowPrecision(precision="bf16")
    method.build(x)
    scores, ids = method.search(q, 10)
    want_scores, want_ids = numpy_top_k(x, q, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    # the packed queries were not gathered row by row
    assert sum(gathered) < 20 * len(x) // lowp.DENSE_SHARE + 20 * len(x) // 10


def crowded(seed: int = 3, d: int = 64, n: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """Queries with 600 rows each within 2e-3 of one another: all of them inside the int8 bound."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((6, d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = [rng.standard_normal((n - 600 * len(queries), d))]
    for q in queries:
        r = rng.standard_normal((600, d))
        r -= (r @ q)[:, None] * q
        c = 0.9 + 2e-3 * rng.random(600)
        rows.append(c[:, None] * q + np.sqrt(1 - c * c)[:, None] * r / np.linalg.norm(r, axis=1, keepdims=True))
    x = np.concatenate(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(len(x))].astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("few", ["int8", "fp16"])
@pytest.mark.parametrize("count", [1, lowp.FEW_QUERIES, lowp.FEW_QUERIES + 1])
def test_int8_is_exact_for_a_few_crowded_queries_and_for_a_batch(count, few):
    """1 and FEW_QUERIES queries scan the few-query copy (numkong's int8 kernel, or fp16); one more takes torch's int8
    product."""
    x, q = crowded()
    method = ExactLowPrecision(precision="int8", few_precision=few)
    method.build(x)
    scores, ids = method.search(q[:count], 20)
    want_scores, want_ids = numpy_top_k(x, q[:count], 20)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_the_int8_bounds_cover_the_real_rounding_error():
    """|⟨q,x⟩ − αβ⟨q̂,x̂⟩| ≤ e·X + ‖αq̂‖·F (module docstring), and the rows alone are within F."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 128))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:40] + 0.05 * rng.standard_normal((40, 128))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = quantize_rows(x.astype(np.float32))
    codes = rows.codes.numpy().astype(np.float64)
    exact = q @ x.T
    assert np.abs(rows.scale * (q @ codes.T) - exact).max() <= rows.max_error
    alpha = np.abs(q).max(axis=1) / 127
    q_codes = np.clip(np.rint(q / alpha[:, None]), -127, 127)
    e = np.linalg.norm(q - alpha[:, None] * q_codes, axis=1)
    bound = e * rows.max_norm + alpha * np.linalg.norm(q_codes, axis=1) * rows.max_error
    assert (np.abs(alpha[:, None] * rows.scale * (q_codes @ codes.T) - exact) <= bound[:, None]).all()


def test_the_int8_margin_is_what_keeps_it_exact(monkeypatch):
    x, q = crowded()
    monkeypatch.setattr(lowp, "GROUPS", 1)
    method = ExactLowPrecision(precision="int8")
    method.build(x)
    want = numpy_top_k(x, q, 20)[1]
    np.testing.assert_array_equal(method.search(q, 20)[1], want)
    monkeypatch.setattr(lowp, "int8_margin", lambda queries, *rest: np.zeros(len(queries), dtype=np.int64))
    assert not np.array_equal(method.search(q, 20)[1], want)


def test_auto_keeps_what_the_probe_chose_for_batches_and_for_a_few_queries(monkeypatch):
    found = {
        "batch": "int8",
        "few": "fp16",
        "fp32_products": {"batch": "torch", "few": "numpy"},
        "probe": {"chosen": {"batch": "int8", "few": "fp16"}, "why": {"batch": "measured", "few": "measured"}},
    }
    monkeypatch.setattr(lowp, "probe_precisions", lambda vectors: found)
    x, q = crowded()
    method = ExactLowPrecision()
    method.build(x)
    assert (method.precision, method.few_precision) == ("int8", "fp16")
    assert method.memory_bytes() >= x.nbytes + x.size + 2 * x.size  # the fp32 rows, the int8 copy and the fp16 copy
    assert method.params()["probe"] == found["probe"]
    np.testing.assert_array_equal(method.search(q[:1], 5)[1], numpy_top_k(x, q[:1], 5)[1])


def looks_fast(low_ms: float, fp32_ms: float = 1.0, torch_ms: float = 2.0):
    """A stand-in for the probe's clock: every bounded scan takes `low_ms`, the fp32 scan `fp32_ms` (by numpy) or
    `torch_ms` (by torch), so only what the probe measured about candidates decides."""

    def seconds(call, repeats):
        method = call.func.__self__
        if method.precision != "fp32" and method.few_precision != "fp32":
            return low_ms
        return torch_ms if method.fp32_products["batch"] == "torch" else fp32_ms

    return seconds


@pytest.mark.slow
def test_bunched_scores_make_the_probe_scan_fp32_directly(monkeypatch):
    """On bunched embeddings (all pairs above 0.9, as a random-weight CNN over photographs of one kind) the int8 and
    bf16 bounds keep most of the gallery: past their break-even they are never used, even when their scans look 100×
    faster, and the fp32 scan is fp32 brute force itself: no copy, no re-rank, numpy's ids."""
    from lookalike.data.vectors import make_bunched_embeddings

    x, _ = make_bunched_embeddings(6000, 64, seed=1)
    q, x = x[:300], x[300:]
    monkeypatch.setattr(lowp, "_best_seconds", looks_fast(0.01))
    method = ExactLowPrecision()
    method.build(x)
    probe = method.params()["probe"]
    for precision in ("int8", "bf16"):
        measured = probe["rerank"][precision]
        assert measured["candidate_fraction"] > 0.5 and measured["rerank_cost_share"] >= lowp.BREAK_EVEN[precision]
        assert precision not in probe["ms_per_query"]["batch"]  # not even timed
        assert f"{precision} re-ranks" in probe["why"]["batch"]
    assert method.precision not in ("int8", "bf16") and method.few_precision not in ("int8", "bf16")
    assert probe["chosen"] == {"batch": method.precision, "few": method.few_precision}
    assert probe["sample"].startswith("512 gallery rows as queries against 5188 other rows")
    # the chosen scans are exact
    for count in (1, 300):
        scores, ids = method.search(q[:count], 10)
        want_scores, want_ids = numpy_top_k(x, q[:count], 10)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    # and when every bounded scan is past its break-even, the fp32 scan is all that runs
    monkeypatch.setattr(lowp, "BREAK_EVEN", {"int8": 0.0, "bf16": 0.0, "fp16": 0.0})
    method = ExactLowPrecision()
    method.build(x)
    assert (method.precision, method.few_precision) == ("fp32", "fp32")
    assert method.params()["fp32_products"] == {"batch": "numpy", "few": "numpy"}
    assert method.memory_bytes() == x.nbytes + method.ids.nbytes  # no scan copy
    monkeypatch.setattr(method, "_rerank", lambda *a: pytest.fail("the fp32 scan re-ranked"))
    np.testing.assert_array_equal(method.search(q, 10)[1], numpy_top_k(x, q, 10)[1])


def test_well_separated_rows_keep_the_bounded_scan_that_the_probe_timed_faster(monkeypatch):
    """Clustered rows: every bound prunes to a few rows per query, so the scans are timed; a bounded scan is kept only
    when it beat the fp32 scan by LOWP_MARGIN."""
    from lookalike.data.vectors import make_clustered_embeddings

    x, _ = make_clustered_embeddings(6000, 64, seed=1, n_clusters=60)
    monkeypatch.setattr(lowp, "_best_seconds", looks_fast(0.5))
    method = ExactLowPrecision()
    method.build(x)
    probe = method.params()["probe"]
    assert all(probe["rerank"][p]["rerank_cost_share"] < lowp.BREAK_EVEN[p] for p in lowp.LOW_PRECISIONS)
    assert method.precision == "int8" and method.few_precision == "int8"  # all as fast: the narrowest for one query
    assert "fp32_products" not in method.params()
    monkeypatch.setattr(lowp, "_best_seconds", looks_fast(1 / lowp.LOWP_MARGIN * 1.02))  # 8% faster only
    method = ExactLowPrecision()
    method.build(x)
    assert (method.precision, method.few_precision) == ("fp32", "fp32")
    assert f"not {lowp.LOWP_MARGIN}× faster" in method.params()["probe"]["why"]["batch"]


def test_the_choice_rules():
    measured = {p: {"rerank_cost_share": 0.9, "candidate_fraction": 0.5} for p in lowp.LOW_PRECISIONS}
    fp32 = "fp32 (numpy)"
    assert lowp._choose("batch", {fp32: 4.0}, fp32, measured)[0] == "fp32"  # every scan past its break-even
    assert lowp._choose("batch", {"int8": 3.5, "bf16": 3.0, fp32: 4.0}, fp32, measured)[0] == "bf16"
    assert lowp._choose("batch", {"int8": 3.7, fp32: 4.0}, fp32, measured)[0] == "fp32"  # within the margin
    # a few queries: the narrowest within FEW_TIE of the fastest bounded scan, if that beats fp32 by the margin
    assert lowp._choose("few", {"int8": 3.3, "fp16": 3.0, fp32: 4.0}, fp32, measured)[0] == "int8"
    assert lowp._choose("few", {"int8": 3.3, "fp16": 3.0, fp32: 3.5}, fp32, measured)[0] == "fp32"


def test_the_probe_asks_other_gallery_rows_and_scales_k_to_its_sample(monkeypatch):
    """Queries are gallery rows outside the probe's sample; with 2000 of 8000 rows sampled, the full gallery's 10th
    score is about the sample's 3rd (ceil(10 · 2000 / 8000))."""
    monkeypatch.setattr(lowp, "PROBE_ROWS", 2000)
    monkeypatch.setattr(lowp, "PROBE_QUERIES", 100)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8000, 32)).astype(np.float32)
    x[:, 0] = np.arange(8000)  # each row names itself
    rows, queries, how = lowp.probe_sample(x)
    assert len(rows) == 2000 and len(queries) == 100
    assert not set(rows[:, 0].tolist()) & set(queries[:, 0].tolist())
    assert how == "100 gallery rows as queries against 2000 other rows"
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert lowp.probe_precisions(x)["probe"]["k"] == 3
    assert lowp.probe_sample(x[:3])[2] == "3 gallery rows as queries against all 3 rows, themselves included"


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp16"])
def test_candidate_counts_hold_the_true_top_k_and_stay_within_the_bound(precision):
    """Independently of the scan: at least every row scoring ≥ the exact k-th, at most those within 4 bounds of it."""
    from lookalike.data.vectors import make_bunched_embeddings

    x, _ = make_bunched_embeddings(3000, 64, seed=2)
    q, x = x[:40], x[40:]
    method = ExactLowPrecision(precision=precision)
    method.build(x)
    counts = method.candidate_counts(q, 10)
    exact = q.astype(np.float64) @ x.T.astype(np.float64)
    kth = -np.sort(-exact, axis=1)[:, 9]
    slack = 0.05 if precision == "int8" else 4 * score_error_bound(precision, 64) + 1e-6
    assert (counts >= (exact >= kth[:, None] - 1e-6).sum(axis=1)).all()
    assert (counts <= (exact >= kth[:, None] - slack).sum(axis=1) + lowp.GROUPS).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("product", ["numpy", "torch"])
def test_the_fp32_scan_is_brute_force_by_either_product(metric, product):
    x, q = near_ties()
    method = ExactLowPrecision(metric=metric, precision="fp32", fp32_products={"batch": product, "few": product})
    method.build(x)
    want_scores, want_ids = numpy_top_k(x, q, 25)
    for count in (1, len(q)):
        scores, ids = method.search(q[:count], 25)
        np.testing.assert_array_equal(ids, want_ids[:count])
        want = want_scores[:count] if metric == "ip" else np.maximum(2 - 2 * want_scores[:count], 0)
        np.testing.assert_allclose(scores, want, atol=1e-5)


@pytest.mark.parametrize(
    "row_block, part_bytes, n, part_rows",
    [
        (1008, 1, 12000, 1008),  # one row block per part
        (
            48,
            4 * 30 * 144,
            12003,
            144,
        ),  # three blocks of 3 groups per part; the last part: 51 rows, blocks of 48 and 3, 3 rows past its last group
    ],
)
def test_the_int8_product_streamed_over_many_parts_is_exact(monkeypatch, row_block, part_bytes, n, part_rows):
    """Early parts keep pairs against a lower running floor, the final floor filters them."""
    monkeypatch.setattr(lowp, "INT8_ROW_BLOCK", row_block)
    monkeypatch.setattr(lowp, "INT8_PART_BYTES", part_bytes)
    x, q = near_ties(n=n)
    method = ExactLowPrecision(precision="int8")
    method.build(x)
    assert lowp._int8_part_rows(len(x), len(q)) == part_rows
    want_scores, want_ids = numpy_top_k(x, q, 25)
    scores, ids = method.search(q, 25)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 3])
def test_the_few_query_int8_candidates_are_exactly_the_integer_products_at_or_above_the_floor(monkeypatch, threads):
    """numkong's kernel and the top list: with margin 0 the pairs are exactly the rows whose integer product
    reaches the k-th (numpy's int64 products); with a wide margin the list is not enough and rows are compared in full.
    On 3 threads the rows are split in 3 uneven parts, each with its own top list."""
    monkeypatch.setattr(lowp, "search_threads", lambda: threads)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5 * lowp.ROW_BLOCK + 7, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = quantize_rows(x.astype(np.float32))
    q_codes = rng.integers(-127, 128, (lowp.FEW_QUERIES, 64)).astype(np.int8)
    exact = q_codes.astype(np.int64) @ rows.codes.numpy().astype(np.int64).T
    for margin in (0, 40_000):  # 40,000: the queries' top lists are not enough, so rows are compared in full
        kth = np.sort(exact, axis=1)[:, -10]
        want = set(zip(*np.nonzero(exact >= (kth - margin)[:, None])))
        got = lowp._few_int8_pairs(q_codes, rows, np.full(len(q_codes), margin), 10)
        assert set(zip(*got)) == want and len(got[0]) == len(want)
        assert margin == 0 or len(want) > lowp.WIDE * len(q_codes)


def test_the_kept_int8_buffer_is_reused_counted_and_never_shared():
    x, q = crowded()
    method = ExactLowPrecision(precision="int8")
    method.build(x)
    before = method.memory_bytes()
    want = numpy_top_k(x, q, 20)[1]
    np.testing.assert_array_equal(method.search(q, 20)[1], want)
    kept = method._spare
    assert kept is not None and method.memory_bytes() == before + kept.numel() * 4
    np.testing.assert_array_equal(method.search(q, 20)[1], want)
    assert method._spare is kept  # the same buffer, not a fresh one
    borrowed = method._borrow(kept.numel())  # a search in progress holds it: another one gets its own
    assert borrowed is kept and method._borrow(kept.numel()) is not kept


def test_a_few_queries_scan_the_narrowest_copy_the_probe_found_about_as_fast():
    from lookalike.search.exact_lowp import fewest_bytes_within

    # one query reads the whole copy
    assert fewest_bytes_within({"int8": 2.74, "bf16": 7.4, "fp16": 2.63, "fp32": 13.7}, 1.15) == "int8"
    # clearly faster: measured wins
    assert fewest_bytes_within({"int8": 4.0, "bf16": 7.4, "fp16": 2.63, "fp32": 13.7}, 1.15) == "fp16"
    # same width: the faster
    assert fewest_bytes_within({"int8": 9.0, "bf16": 2.0, "fp16": 2.1, "fp32": 13.7}, 1.15) == "bf16"


def test_the_fp32_scans_selection_breaks_ties_to_the_lower_row_as_numpy_does():
    """torch.topk alone breaks ties arbitrarily: rows tying at the k-th place and within the top k."""
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 6, (40, 300)).astype(np.float32)  # many equal scores everywhere
    scores[:20, :12] = 9  # rows 0-19: the top 12 tie, the top 10 are the first ten columns
    want = np.lexsort((np.broadcast_to(np.arange(300), scores.shape), -scores), axis=1)[:, :10]
    best, where = lowp.top_k_exact(scores, 10)
    np.testing.assert_array_equal(where, want)
    np.testing.assert_array_equal(best, np.take_along_axis(scores, want, 1))
    distinct = rng.permutation(300 * 40).reshape(40, 300).astype(np.float32)  # no ties: torch.topk's set as is
    np.testing.assert_array_equal(lowp.top_k_exact(distinct, 7)[1], np.argsort(-distinct, axis=1)[:, :7])
    np.testing.assert_array_equal(
        lowp.top_k_exact(distinct[:, :5], 5)[1], np.argsort(-distinct[:, :5], axis=1)
    )  # k = n
