"""`lookalike scale` and the galleries it builds from arrays: synthetic extension, array galleries, the CLI end to
end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.cli import main
from lookalike.data.vectors import fit_cluster_model, make_clustered_embeddings, neighbour_stats
from lookalike.errors import GalleryError, LookalikeError
from lookalike.gallery import open_gallery
from lookalike.gallery.generated import SYNTHETIC_PATH_PREFIX, Segment, generated_model_block, write_array_gallery
from lookalike.search import make_method
from lookalike.study.scale import Pool, ScaleConfig, load_extra, measure_size, parse_sizes, tune_for_recall

from .conftest import manifest_json, run_main


def _strict_json(text: str):
    def reject(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * abs(b)


# --- the synthetic extension ---


CLUSTERED = make_clustered_embeddings(6000, 64, n_clusters=30, rank=8, seed=7)


def clustered_labels_of(rows: np.ndarray) -> np.ndarray:
    x, labels = CLUSTERED
    return labels[[int(np.flatnonzero((x == row).all(axis=1))[0]) for row in rows]]


@pytest.fixture(scope="module")
def clustered():
    """'Real' embeddings with known structure (30 clusters in sibling pairs, rank 8), split into queries / fit /
    held-out."""
    x, labels = CLUSTERED
    return x[:300], x[300:3150], labels[300:3150], x[3150:]


def test_synthetic_extension_keeps_nearest_neighbour_statistics(clustered):
    queries, fit_rows, fit_labels, held_out = clustered
    model = fit_cluster_model(fit_rows, fit_labels, seed=0)
    synthetic, _ = model.sample(len(held_out), seed=1)
    real = neighbour_stats(held_out, queries)
    synth = neighbour_stats(synthetic, queries)
    uniform = np.random.default_rng(0).standard_normal(held_out.shape).astype(np.float32)
    uniform = neighbour_stats(uniform / np.linalg.norm(uniform, axis=1, keepdims=True), queries)

    def matches(s) -> bool:
        return (
            _close(s.query_knn_distance_median, real.query_knn_distance_median, 0.15)
            and _close(s.within_nn_distance_median, real.within_nn_distance_median, 0.25)
            and _close(s.two_nn_dimension, real.two_nn_dimension, 0.35)
        )

    assert matches(synth), (synth, real)
    assert not matches(uniform), "uniform noise must fail the same check, or the check proves nothing"
    assert np.allclose(np.linalg.norm(synthetic, axis=1), 1.0, atol=1e-5)


def test_synthetic_rows_are_not_copies_and_carry_their_clusters_labels(clustered):
    queries, fit_rows, fit_labels, held_out = clustered
    model = fit_cluster_model(fit_rows, fit_labels, seed=0)
    synthetic, clusters = model.sample(1000, seed=2)
    # distance from each synthetic row to its nearest fitted row, against the same for held-out real rows
    to_fit = 1 - (synthetic @ fit_rows.T).max(axis=1)
    real_to_fit = 1 - (held_out[:1000] @ fit_rows.T).max(axis=1)
    assert to_fit.min() > 1e-4
    assert np.median(to_fit) > 0.6 * np.median(real_to_fit)
    # a synthetic row's label agrees with its nearest real row's about as often as a held-out real row's does
    assigned = np.asarray(model.labels, dtype=object)[clusters]
    synthetic_agreement = np.mean(fit_labels[(synthetic @ fit_rows.T).argmax(axis=1)] == assigned)
    real_agreement = np.mean(
        fit_labels[(held_out[:1000] @ fit_rows.T).argmax(axis=1)] == clustered_labels_of(held_out[:1000])
    )
    assert synthetic_agreement > real_agreement - 0.1, (synthetic_agreement, real_agreement)
    assert model.describe()["copies_real_vectors"] is False and model.describe()["clusters"] >= 20


def test_make_clustered_embeddings_is_seeded_unit_and_labelled():
    a, labels = make_clustered_embeddings(500, 32, n_clusters=10, rank=4, seed=3)
    b, _ = make_clustered_embeddings(500, 32, n_clusters=10, rank=4, seed=3)
    c, _ = make_clustered_embeddings(500, 32, n_clusters=10, rank=4, seed=4)
    assert a.shape == (500, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert set(labels) <= {f"g{j:04d}" for j in range(10)} and len(set(labels)) == 10
    same = labels[:, None] == labels[None, :]
    sims = a @ a.T
    assert sims[same].mean() > sims[~same].mean() + 0.1  # rows of a cluster are closer than rows of different clusters
    np.fill_diagonal(sims, -1)
    # … so a row's nearest neighbour mostly shares its label
    assert np.mean(labels[sims.argmax(axis=1)] == labels) > 0.6


# --- galleries written from arrays ---


def test_write_array_gallery_marks_synthetic_rows(tmp_path):
    x, labels = make_clustered_embeddings(120, 16, n_clusters=4, rank=2, seed=0)
    segments = [
        Segment("gallery", 0, 80, False, "rows of a real gallery"),
        Segment("synthetic", 80, 120, True, "fitted model samples"),
    ]
    splits = ["train"] * 100 + ["val"] * 20
    gallery = write_array_gallery(
        tmp_path / "g", x, labels, splits, segments=segments, model=generated_model_block(16, 0)
    )
    again = open_gallery(tmp_path / "g")
    assert again.count == 120 and again.dim == 16 and np.array_equal(np.asarray(again.embeddings), x)
    assert not again.manifest.is_real
    assert "40 SYNTHETIC rows" in gallery.provenance() and "NO MODEL" in gallery.provenance()
    assert [s["synthetic"] for s in manifest_json(again)["data"]["segments"]] == [False, True]
    assert manifest_json(again)["data"]["synthetic_rows"] == 40
    assert all(p.startswith(SYNTHETIC_PATH_PREFIX) for p in again.paths[80:]) and not any(
        p.startswith(SYNTHETIC_PATH_PREFIX) for p in again.paths[:80]
    )
    part = again.partition()
    assert len(part.query_ids) == 20 and len(part.database_ids) == 100
    with pytest.raises(GalleryError, match="already holds a gallery"):
        write_array_gallery(tmp_path / "g", x, segments=segments, model=generated_model_block(16, 0))
    with pytest.raises(LookalikeError, match="segments"):
        write_array_gallery(tmp_path / "h", x, segments=segments[:1], model=generated_model_block(16, 0))


# --- pieces of the scale experiment ---


def test_parse_sizes():
    assert parse_sizes("1M, 10k,100k,10k") == (10_000, 100_000, 1_000_000)
    assert parse_sizes("1.5k,300") == (300, 1500)
    for bad in ("", "ten", "1.5", "10G"):
        with pytest.raises(LookalikeError):
            parse_sizes(bad)


def test_tune_for_recall_picks_the_smallest_nprobe_that_reaches_the_target(clustered):
    queries, fit_rows, _, _ = clustered
    method = make_method("ivf", len(fit_rows), fit_rows.shape[1], nlist=64)
    method.build(fit_rows)
    exact = make_method("brute", len(fit_rows), fit_rows.shape[1])
    exact.build(fit_rows)
    _, truth = exact.search(queries, 10)
    tuning, found = tune_for_recall(method, queries, truth, 10, 0.95)
    nprobe = tuning.params["nprobe"]
    tried = {s["nprobe"]: s["recall"] for s in tuning.sweep}
    assert tuning.reached and tried[nprobe] >= 0.95 and method.params()["nprobe"] == nprobe
    assert all(r < 0.95 for v, r in tried.items() if v < nprobe)
    assert nprobe - 1 in tried or nprobe == 1  # bisection narrowed it down to the last miss
    assert found.shape == (len(queries), 10)


def _exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Independent ground truth: a full sort of the inner products."""
    return np.argsort(-(queries @ database.T), axis=1, kind="stable")[:, :k]


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_scale_tunes_on_validation_queries_and_reports_the_test_queries(clustered):
    queries, fit_rows, fit_labels, _ = clustered
    val, test = queries[:150], queries[150:]
    pool = Pool(fit_rows.copy(), fit_labels.copy(), len(fit_rows), 0, 0, None)
    config = ScaleConfig(sizes=(len(fit_rows),), methods=("brute", "ivf"), k=10, target_recall=0.9, timing_queries=20)
    test_labels = clustered_labels_of(test)
    extraction = {"ms_per_image": 2.0, "single_image_ms": 9.0}
    points = {
        p.method: p
        for p in measure_size(pool, len(fit_rows), val, test, test_labels, config, extraction, progress=lambda _: None)
    }
    truth_test, truth_val = _exact_top_k(fit_rows, test, 10), _exact_top_k(fit_rows, val, 10)
    assert points["brute"].recall == pytest.approx(1.0)
    # label precision of exact search on the test queries, counted by hand
    assert points["brute"].precision == pytest.approx(np.mean(fit_labels[truth_test] == test_labels[:, None]))
    ivf = points["ivf"]
    nprobe = ivf.params["nprobe"]
    # the same IVF (seeded training) rebuilt and searched at the chosen nprobe
    check = make_method("ivf", len(fit_rows), fit_rows.shape[1])
    check.build(fit_rows)
    _, found_test = check.search(test, 10, {"nprobe": nprobe})
    _, found_val = check.search(val, 10, {"nprobe": nprobe})
    assert ivf.recall == pytest.approx(_overlap(found_test, truth_test))  # the reported figure is the test queries'
    assert ivf.val_recall == pytest.approx(_overlap(found_val, truth_val))  # the sweep saw only the validation queries
    assert {s["nprobe"]: s["recall"] for s in ivf.sweep}[nprobe] == pytest.approx(
        _overlap(found_val, truth_val), abs=1e-5
    )
    assert ivf.recall != pytest.approx(ivf.val_recall)
    assert ivf.target_reached == (_overlap(found_test, truth_test) >= 0.9)
    # end to end = one image alone (batch 1) + one query's search, never the batch throughput
    assert ivf.end_to_end_single_ms == pytest.approx(9.0 + ivf.latency.single_ms)
    assert ivf.end_to_end_batch_ms == pytest.approx(2.0 + ivf.latency.batch_ms)


def test_extra_rows_that_copy_a_gallery_row_a_query_or_each_other_are_left_out(tiny_gallery, tmp_path):
    gallery = open_gallery(tiny_gallery)
    part = gallery.partition()
    own = np.asarray(gallery.embeddings[part.database_ids])
    queries = np.asarray(gallery.embeddings[part.query_ids])
    fresh, _ = make_clustered_embeddings(6, gallery.dim, n_clusters=2, rank=4, seed=5)
    # rows 0–5 new, 6–7 copies of gallery rows, 8 a copy of a query, 9 a repeat of row 0
    extra = np.concatenate([fresh, own[[3, 7]], queries[:1], fresh[:1]]).astype(np.float32)
    np.save(tmp_path / "extra.npy", extra)
    rows = load_extra(str(tmp_path / "extra.npy"), gallery, queries, own)
    assert rows.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert "4 rows left out" in rows.how


# --- the command end to end ---


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_scale_cli_end_to_end_with_synthetic_extension(tiny_gallery, tmp_path):
    out = tmp_path / "scale"
    proc = run_main(
        "scale",
        "--gallery",
        tiny_gallery,
        "--sizes",
        "40,100,300",
        "--queries",
        "20",
        "--timing-queries",
        "10",
        "--out",
        out,
    )
    assert "RANDOM weights" in proc.stdout and "SYNTHETIC EXTENSION" in proc.stdout
    rows = _csv(out / "scale.csv")
    timings = open_gallery(tiny_gallery).manifest.timings
    single_ms = timings["single_image_ms"]
    assert single_ms > 0 and single_ms != timings["ms_per_image"]
    assert [(int(r["size"]), r["method"]) for r in rows] == [
        (s, m) for s in (40, 100, 300) for m in ("brute", "flat", "ivf")
    ]
    for r in rows:
        synthetic = int(r["size"]) > 100  # the tiny gallery has 100 train rows
        assert r["uses_synthetic_extension"] == str(synthetic)
        assert int(r["gallery_rows"]) + int(r["extra_rows"]) + int(r["synthetic_rows"]) == int(r["size"])
        assert float(r["search_single_ms"]) > 0 and float(r["memory_bytes"]) > 0
        # end to end = the manifest's batch-1 embedding latency (not the batch throughput) + single-query search
        assert float(r["end_to_end_single_ms"]) == pytest.approx(single_ms + float(r["search_single_ms"]), abs=1e-4)
        assert "random weights" in r["provenance"]
    assert int(rows[-1]["synthetic_rows"]) == 200 and float(rows[-1]["synthetic_result_share"]) > 0
    result = _strict_json((out / "scale.json").read_text())
    assert result["any_synthetic"] and result["extension"]["rows"] == 200 and result["timing_queries"] == 10
    # 20 held out, split as tune splits them
    assert (result["validation_queries"], result["accuracy_queries"]) == (10, 10)
    assert set(result["extension"]["check"]) == {"real", "synthetic"}
    markdown = (out / "scale.md").read_text()
    assert "⚠ SYNTHETIC EXTENSION" in markdown and "| 300 ⚠ |" in markdown and "| 100 |" in markdown
    assert "constant cost per image" in markdown and "![" in markdown
    with Image.open(out / "scale.png") as image:
        image.verify()
    with Image.open(out / "scale.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 400


def _lookalike(*args) -> int:
    """The CLI's own entry point, in this process: the same parsing and error handling as the script, without a new
    interpreter."""
    return main([str(a) for a in args])


def test_scale_grows_with_extra_real_embeddings_before_synthesising(tiny_gallery, tmp_path):
    gallery = open_gallery(tiny_gallery)
    query = np.asarray(gallery.embeddings[gallery.partition().query_ids[:1]])
    extra, _ = make_clustered_embeddings(30, gallery.dim, n_clusters=3, rank=4, seed=1)
    np.save(tmp_path / "extra.npy", np.concatenate([extra, query]))  # a copy of a query must be left out
    out = tmp_path / "scale"
    assert (
        _lookalike(
            "scale",
            "--gallery",
            tiny_gallery,
            "--sizes",
            "100,140",
            "--methods",
            "flat",
            "--extra-embeddings",
            tmp_path / "extra.npy",
            "--queries",
            "20",
            "--out",
            out,
        )
        == 0
    )
    rows = {int(r["size"]): r for r in _csv(out / "scale.csv")}
    assert (rows[100]["extra_rows"], rows[100]["synthetic_rows"]) == ("0", "0")
    assert (rows[140]["gallery_rows"], rows[140]["extra_rows"], rows[140]["synthetic_rows"]) == ("100", "30", "10")
    assert "extra.npy" in (out / "scale.md").read_text()


def test_scale_extra_embeddings_from_a_gallery_folder_of_the_same_model(tiny_gallery, tmp_path, capsys):
    gallery = open_gallery(tiny_gallery)
    extra, labels = make_clustered_embeddings(20, gallery.dim, n_clusters=2, rank=4, seed=2)
    segments = [Segment("generated", 0, 20, True, "stand-in for a larger extraction")]
    same = write_array_gallery(tmp_path / "same", extra, labels, segments=segments, model=gallery.manifest.model)
    other = write_array_gallery(
        tmp_path / "other", extra, labels, segments=segments, model=generated_model_block(gallery.dim, 0)
    )
    out = tmp_path / "scale"
    assert (
        _lookalike(
            "scale",
            "--gallery",
            tiny_gallery,
            "--sizes",
            "120",
            "--methods",
            "flat",
            "--extra-embeddings",
            same.path,
            "--queries",
            "20",
            "--out",
            out,
        )
        == 0
    )
    row = _csv(out / "scale.csv")[0]
    assert (row["gallery_rows"], row["extra_rows"], row["synthetic_rows"]) == ("100", "20", "0")
    assert (
        _lookalike(
            "scale",
            "--gallery",
            tiny_gallery,
            "--sizes",
            "120",
            "--extra-embeddings",
            other.path,
            "--out",
            tmp_path / "o",
        )
        == 2
    )
    assert "not the same model and weights" in capsys.readouterr().err


def test_scale_rejects_bad_input_with_a_clear_error(tiny_gallery, tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.ones((5, 7), np.float32))
    cases = [
        (("--sizes", "200", "--extra-embeddings", tmp_path / "wrong.npy"), "must be (N, 512)"),
        (("--sizes", "5"), "below k=10"),
        (("--sizes", "50", "--methods", "nosuch"), "unknown method"),
        (("--sizes", "lots"), "cannot read size"),
    ]
    for args, message in cases:
        assert _lookalike("scale", "--gallery", tiny_gallery, "--out", tmp_path / "o", *args) == 2
        err = capsys.readouterr().err
        assert err.startswith("lookalike scale: error: ") and message in err, err
    assert not (tmp_path / "o").exists()
