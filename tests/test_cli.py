"""The real command line, end to end on tiny generated collections: extract → index → search → bench.

The first extraction runs the real `lookalike` process; the commands after it run `lookalike.cli.main` in this
process (run_main): the same code, without a new interpreter's imports per command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.gallery import open_gallery
from lookalike.search import load_method

from .conftest import PINNED, run_cli, run_main


@pytest.mark.slow
def test_extract_index_search_bench(tiny_collection, tmp_path):
    out = tmp_path / "g"
    extract = run_cli(
        "extract",
        "--data",
        tiny_collection,
        "--out",
        out,
        "--model",
        "resnet18",
        "--weights",
        "random",
        "--image-size",
        "32",
        "--bs",
        "16",
    )
    assert "RANDOM weights" in extract.stdout and "GENERATED data" in extract.stdout
    assert "images/s" in extract.stdout

    # approximate: 2 of 8 lists
    index = run_main("index", "--gallery", out, "--method", "ivf", "--nlist", "8", "--nprobe", "2")
    assert "IVF8,Flat" in index.stdout and (out / "indexes" / "ivf" / "index.faiss").is_file()

    query = next((tiny_collection / "val" / "images").iterdir())
    for method in ("brute", "flat", "ivf"):
        found = run_main("search", "--gallery", out, "--image", query, "--method", method, "-k", "5")
        rows = [line for line in found.stdout.splitlines() if line.strip()[:1].isdigit()]
        assert len(rows) == 5, found.stdout
        assert all("⚠ random weights" in row for row in rows)
        assert "embed" in found.stdout and "search" in found.stdout
    exact = run_main("search", "--gallery", out, "--image", query, "--method", "brute", "-k", "5").stdout
    ivf_all = run_main(
        "search", "--gallery", out, "--image", query, "--method", "ivf", "--nprobe", "8", "-k", "5"
    ).stdout

    def paths(text: str) -> list[str]:
        return [line.split()[-5] for line in text.splitlines() if line.strip()[:1].isdigit()]

    assert paths(exact) == paths(ivf_all)
    # every image is searched by default: the val image finds itself; the study's database leaves it out
    assert "searched: all 120 images" in exact and paths(exact)[0] == str(query)
    heldout = run_main("search", "--gallery", out, "--image", query, "--database", "heldout", "-k", "5").stdout
    assert "searched: 100 of 120 images: 20 left out" in heldout and str(query) not in paths(heldout)
    assert (
        "note: the saved index ivf was not used"
        in run_main("search", "--gallery", out, "--image", query, "--method", "ivf", "--database", "heldout").stdout
    )

    # the study measures on its held-out database: an index saved over it is the one bench uses
    index = run_main(
        "index", "--gallery", out, "--method", "ivf", "--nlist", "8", "--nprobe", "2", "--database", "heldout"
    )
    assert "over 100 vectors (100 of 120 images" in index.stdout
    assert json.loads((out / "indexes" / "ivf" / "method.json").read_text())["database"] == "heldout"
    bench = run_main("bench", "--gallery", out, "--timing-queries", "10")
    assert "| ivf |" in bench.stdout and "recall@k vs exact" in bench.stdout
    result = json.loads((out / "bench.json").read_text())
    assert [m["method"] for m in result["methods"]] == ["brute", "flat", "ivf"]
    assert result["methods"][2]["params"]["nlist"] == 8
    # independently of bench's own ground truth: a full numpy sort over the database rows the index holds
    gallery = open_gallery(out)
    x, labels, part = np.asarray(gallery.embeddings), gallery.labels, gallery.partition()
    queries = x[part.query_ids]
    truth = part.database_ids[np.argsort(-(queries @ x[part.database_ids].T), axis=1, kind="stable")[:, :10]]
    assert not np.isin(truth, part.query_ids).any()
    _, found = load_method(gallery, "ivf").search(queries, 10)
    ivf_recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert result["methods"][2]["recall"] == pytest.approx(ivf_recall) and not result["methods"][2]["built_now"]
    exact_precision = np.mean(labels[truth] == labels[part.query_ids][:, None])
    assert [m["precision"] for m in result["methods"][:2]] == pytest.approx([exact_precision] * 2)
    assert result["real"] is False and result["peak_rss_bytes"] > 0
    assert (out / "bench.md").read_text().count("⚠ random weights") >= 3


@pytest.mark.slow
def test_combined_table_over_two_galleries(tiny_gallery, tiny_collection, tmp_path):
    other = tmp_path / "mobilenet"
    run_main(
        "extract",
        "--data",
        tiny_collection,
        "--out",
        other,
        "--model",
        "mobilenet",
        "--weights",
        "random",
        "--image-size",
        "32",
        "--bs",
        "16",
        *PINNED,
    )
    combined = tmp_path / "table.md"
    proc = run_main("bench", "--gallery", tiny_gallery, other, "--timing-queries", "5", "--out", combined)
    table = combined.read_text()
    assert "| | resnet18 | mobilenet |" in table
    assert "| feature dim | 512 | 1280 |" in table
    assert "Combined table" in proc.stdout


@pytest.mark.slow
def test_class_folders_and_list_files(tiny_collection, tmp_path):
    folders = tmp_path / "folders"
    for wnid_dir in (tiny_collection / "train").iterdir():
        shutil.copytree(wnid_dir / "images", folders / wnid_dir.name)
    listing = tmp_path / "lists" / "all_img_list.txt"
    listing.parent.mkdir()
    images = sorted(folders.rglob("*.JPEG"))[:30]
    listing.write_text(
        "# the study's --all_img_list\n" + "\n".join(str(Path("..") / p.relative_to(tmp_path)) for p in images) + "\n"
    )
    for data, count in ((folders, 100), (listing, 30)):
        out = tmp_path / f"g-{data.name}"
        run_main(
            "extract",
            "--data",
            data,
            "--out",
            out,
            "--model",
            "resnet18",
            "--weights",
            "random",
            "--image-size",
            "32",
            "--bs",
            "16",
            *PINNED,
        )
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["count"] == count


@pytest.mark.slow
def test_user_errors_are_one_clear_line(tmp_path, tiny_gallery):
    missing = run_cli(  # the real process: its exit code and stderr
        "extract", "--data", tmp_path / "nope", "--out", tmp_path / "g", "--weights", "random", check=False
    )
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    no_gallery = run_main("search", "--gallery", tmp_path / "nope", "--image", "x.jpg", check=False)
    assert no_gallery.returncode == 2 and "lookalike extract --out" in no_gallery.stderr
    bad_query = tmp_path / "bad.jpg"
    bad_query.write_bytes(b"not an image")
    bad = run_main("search", "--gallery", tiny_gallery, "--image", bad_query, check=False)
    assert bad.returncode == 2 and "bad.jpg" in bad.stderr and "Traceback" not in bad.stderr


def test_models_lists_the_weight_sources():
    out = run_main("models").stdout
    assert (
        "resnet18" in out
        and "1280" in out
        and "resnet18-f37072fd.pth" in out
        and "vit_base_patch32_clip_224.openai" in out
    )


def test_fetch_offline_says_where_to_put_the_data(tmp_path):
    proc = run_main(
        "fetch", "tiny-imagenet", "--dest", tmp_path, "--url", "http://127.0.0.1:9/tiny-imagenet-200.zip", check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "tiny-imagenet-200" in proc.stderr and str(tmp_path) in proc.stderr
