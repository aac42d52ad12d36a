"""`lookalike report` end to end: two tiny galleries (random-weight CNN, generated embeddings) → one Markdown report."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from lookalike.cli import main
from lookalike.gallery import open_gallery
from lookalike.gallery.generated import write_generated_gallery
from lookalike.study.leakage import LEAKAGE_THRESHOLD, check_leakage, leakage_markdown

from .conftest import run_main


@pytest.mark.slow
def test_report_end_to_end_on_two_galleries(tiny_gallery, tmp_path):
    generated = write_generated_gallery(tmp_path / "generated", 600, 32, val=60, n_clusters=12, rank=4, seed=0).path
    out = tmp_path / "report"
    proc = run_main("report", "--gallery", tiny_gallery, generated, "--out", out, "--sizes", "60,200")
    assert "report written to" in proc.stdout
    text = (out / "report.md").read_text()

    # what produced it: weights, data, synthetic extension, versions, threads
    assert "RANDOM weights (seed 0)" in text and "no model — the embeddings were generated" in text
    assert "GENERATED data" in text and "SYNTHETIC embeddings" in text and "NOT A REAL RESULT" in text
    assert re.search(r"Versions: .*torch [\d.]+.*faiss-cpu [\d.]+", text)
    assert re.search(r"Threads: torch \d+, faiss_omp \d+", text)

    # the generated summary answers both questions with measured numbers
    summary = text.split("## Summary", 1)[1].split("## Timing table", 1)[0]
    assert "(i)" in summary and "(ii)" in summary and "from 60 to 200" in summary
    assert re.search(r"resnet18, recall@10 ≥ 0\.95: .* ms/query single", summary)
    assert re.search(
        r"generated, 60 → 200 rows[^\n]*\n(  - [^\n]*\n)*  - flat: search [\d.]+ → [\d.]+ ms/query single", summary
    )
    assert "⚠ 200 with synthetic extension" in summary  # the tiny gallery has 100 train rows

    # every plot it links exists and is a sane PNG; every table file is there
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 4  # tradeoff + scale for each gallery
    for link in links:
        with Image.open(out / link) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    info = json.loads((out / "report.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert [g["real"] for g in info["galleries"]] == [False, False]
    assert (
        info["galleries"][0]["synthetic_extension"]["rows"] == 100
        and info["galleries"][1]["synthetic_extension"] is None
    )
    for g in info["galleries"]:
        assert all((out / path).is_file() for path in g["files"].values())
    assert "| feature dim | 512 | 32 |" in text  # the combined bench table has one column per gallery

    # the leakage section: the tiny collection has no copies; the generated rows have no content hashes
    leakage = text.split("## Leakage", 1)[1].split("## Timing table", 1)[0]
    assert "precision@k" in leakage and "| val (20) | 0 of 20 | 0 of 20 |" in leakage
    assert "skipped (no content hashes)" in leakage
    assert info["galleries"][0]["leakage"]["splits"][0] | {"identical_examples": []} == {
        "split": "val",
        "queries": 20,
        "identical": 0,
        "similar": 0,
        "identical_examples": [],
        "similar_examples": [],
    }


def test_report_refuses_a_missing_gallery_before_measuring_anything(tiny_gallery, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(["report", "--gallery", str(tiny_gallery), str(tmp_path / "nope"), "--out", str(out), "--sizes", "60"])
        == 2
    )
    assert "lookalike report: error: no gallery at" in capsys.readouterr().err
    assert not out.exists()


def planted_leaks(planted, tier: str) -> set[tuple[str, str]]:
    """(query, database copy) of the copies planted from val into train, in `tier`: the ground truth."""
    return {(c.original, c.copy) for c in planted.copies if c.held_out and c.tier == tier}


def test_leakage_counts_equal_the_planted_copies(planted):
    leak = check_leakage(open_gallery(planted.gallery))
    val = sorted((planted.root / "val" / "images").glob("*.JPEG"))
    assert leak.preset is None and leak.threshold == LEAKAGE_THRESHOLD and leak.identical_tier.startswith("checked")
    (split,) = leak.splits
    identical, similar = planted_leaks(planted, "identical content"), planted_leaks(planted, "similarity")
    assert (split.split, split.queries) == ("val", len(val))
    assert (split.identical, split.similar) == (len(identical), len(similar)) == (2, 2)
    assert {(p.query, p.database) for p in split.identical_examples} == identical
    assert {(p.query, p.database) for p in split.similar_examples} == similar
    assert all(p.score == 1.0 for p in split.identical_examples)
    assert all(LEAKAGE_THRESHOLD <= p.score < 1 for p in split.similar_examples)
    text = "\n".join(leakage_markdown([leak]))
    assert f"| val ({len(val)}) | 2 of {len(val)} | 2 of {len(val)} |" in text and "precision@k" in text
    for query, copy in identical | similar:
        assert f"`{query}` ↔ `{copy}`" in text


def test_leakage_without_content_hashes_finds_byte_copies_by_similarity(planted, tmp_path):
    """An older gallery (no sha256 column): the partition cannot leave the byte copies out, so they stay in the
    database, where the similarity tier finds them (score 1) beside the re-encoded ones."""
    older = tmp_path / "older"
    shutil.copytree(planted.gallery, older)
    table = pq.read_table(older / "metadata.parquet")
    pq.write_table(table.drop_columns(["sha256"]), older / "metadata.parquet")
    leak = check_leakage(open_gallery(older))
    assert leak.identical_tier.startswith("skipped")
    (split,) = leak.splits
    assert split.identical is None and split.identical_examples == ()
    everything = planted_leaks(planted, "identical content") | planted_leaks(planted, "similarity")
    assert split.similar == len(everything) and {(p.query, p.database) for p in split.similar_examples} <= everything
    assert "skipped (no content hashes)" in "\n".join(leakage_markdown([leak]))
