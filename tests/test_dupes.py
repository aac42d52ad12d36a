"""Near-duplicate groups (issue 23): identical files, the non-chaining rule, the block scan, the keeper, the outputs.

Every expectation is computed independently of lookalike.search.dupes: files grouped by their bytes,
pairs by a brute numpy all-pairs product, the keeper from os.stat.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery
from lookalike.search import dupes

from .conftest import LARGER_PX

COPIES = 6  # files copied under other names in the collection with copies


@pytest.fixture(scope="module")
def copied(tiny_collection, tmp_path_factory):
    """A copy of the tiny collection with COPIES train files duplicated under new names (some copies made older than
    their originals) and one val file copied into train, and its gallery (resnet18, random weights, 32 px)."""
    root = tmp_path_factory.mktemp("dupes") / "data"
    shutil.copytree(tiny_collection, root)
    originals = sorted(root.glob("train/*/images/*"))[::17][:COPIES]
    for n, original in enumerate(originals):
        copy = original.with_name(f"copy{n}_{original.name}")
        shutil.copy(original, copy)
        if n % 2:  # older than the original: the keeper rule must prefer it
            st = original.stat()
            os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9 * (n + 1)))
    held_out = sorted(root.glob("val/images/*"))[0]  # a held-out query's copy in the database: every row counts
    shutil.copy(held_out, next(root.glob("train/*/images")) / f"valcopy_{held_out.name}")
    gallery = lookalike.extract(
        root, root.parent / "gallery", model="resnet18", weights="random", image_size=32, batch_size=16
    )
    return root, gallery


def pairs_of(groups) -> set[frozenset]:
    return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}


@pytest.mark.slow
def test_identical_files_found_with_precision_and_recall_one(copied):
    root, gallery = copied
    by_bytes = defaultdict(list)
    for i, path in enumerate(gallery.paths):
        by_bytes[Path(path).read_bytes()].append(i)
    expected = pairs_of(ids for ids in by_bytes.values() if len(ids) > 1)
    assert len(expected) >= COPIES

    report = gallery.duplicates(preset="exact")
    found = set()
    for group in report.groups:
        keeper_bytes = Path(gallery.paths[group.keep]).read_bytes()
        same = [m.id for m in group.members if Path(m.path).read_bytes() == keeper_bytes]
        found |= pairs_of([same])
        for m in group.members:
            if m.reason == "identical content":
                assert Path(m.path).read_bytes() == keeper_bytes
                assert m.score == 1.0
    assert found == expected  # recall and precision 1 on identical files
    splits = gallery.splits
    assert any({splits[m.id] for m in g.members} == {"train", "val"} for g in report.groups)
    assert report.identical_tier.startswith("checked")


def test_keeper_is_largest_then_oldest_then_lowest_id(copied):
    _, gallery = copied
    report = gallery.duplicates(preset="similar")
    assert report.groups
    for group in report.groups:
        stats = {m.id: os.stat(m.path) for m in group.members}
        expected = min(stats, key=lambda i: (-stats[i].st_size, stats[i].st_mtime_ns, i))
        assert group.keep == expected
        assert group.members[0].id == expected and group.members[0].reason == "keeper"
    # a copy made older than its original (same size) always wins over it
    checked = 0
    for group in report.groups:
        names = {Path(m.path).name: m.id for m in group.members}
        for name in names:
            if name.startswith(("copy1_", "copy3_")) and name.split("_", 1)[1] in names:
                assert group.keep != names[name.split("_", 1)[1]]
                checked += 1
    assert checked == 2


def test_json_and_csv_outputs(copied, tmp_path):
    _, gallery = copied
    report = gallery.duplicates(preset="near")
    path = report.write(tmp_path / "d.json")
    data = json.loads(path.read_text())
    assert {"gallery", "provenance", "preset", "threshold", "scoring", "groups"} <= set(data)
    assert data["provenance"] == gallery.manifest.describe()
    assert "random" in data["provenance"].lower()
    assert data["preset"] == "near" and data["threshold"] == dupes.PRESETS["near"]
    assert data["scoring"]["formula"] and 0 < data["scoring"]["neighbour_k"] <= dupes.NEIGHBOUR_K
    for group in data["groups"]:
        assert group["min_similarity"] >= data["threshold"] - 1e-6
        assert group["keep"] in [m["id"] for m in group["members"]]
        for m in group["members"]:
            assert set(m) >= {"id", "path", "score", "reason"}
            assert m["path"] == gallery.paths[m["id"]]
            assert m["reason"] in ("keeper", "identical content", "similarity")
    rows = list(csv.DictReader(io.StringIO(report.write(tmp_path / "d.csv").read_text())))
    assert len(rows) == sum(len(g["members"]) for g in data["groups"])
    assert [int(r["id"]) for r in rows] == [m["id"] for g in data["groups"] for m in g["members"]]
    with pytest.raises(LookalikeError, match=r"\.json or \.csv"):
        report.write(tmp_path / "d.txt")


def independent_baselines(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's cosine to its k-th nearest other row (every row is in the sample below 2,000 rows)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return np.sort(sims, axis=1)[:, -k]


def array_gallery(path: Path, x: np.ndarray, splits=None):
    return write_array_gallery(
        path,
        x.astype(np.float32),
        splits=splits,
        segments=[Segment("generated", 0, len(x), True, "test vectors")],
        model=generated_model_block(x.shape[1], 0),
    )


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_groups_do_not_chain(tmp_path):
    """A~B and B~C but not A~C: connected components would join all three; complete linkage must not."""
    rng = np.random.default_rng(0)
    d = 64
    strangers = unit(rng.standard_normal((200, d)))
    angle = np.deg2rad(12)
    e1, e2 = np.eye(d)[0], np.eye(d)[1]
    abc = np.stack([e1, np.cos(angle) * e1 + np.sin(angle) * e2, np.cos(2 * angle) * e1 + np.sin(2 * angle) * e2])
    x = np.concatenate([abc, strangers])
    gallery = array_gallery(tmp_path / "g", x)

    r = independent_baselines(x, dupes.NEIGHBOUR_K)
    score = lambda i, j: (x[i] @ x[j] - (r[i] + r[j]) / 2) / (1 - (r[i] + r[j]) / 2)  # noqa: E731
    threshold = 0.93
    assert score(0, 1) >= threshold and score(1, 2) >= threshold and score(0, 2) < threshold  # the chain exists

    report = gallery.duplicates(threshold=threshold)
    np.testing.assert_allclose(report.scoring.baselines, r, atol=1e-5)
    assert report.scoring.neighbour_k == dupes.NEIGHBOUR_K
    assert report.identical_tier.startswith("skipped")  # generated rows have no content hashes
    members = [{m.id for m in g.members} for g in report.groups]
    assert not any({0, 2} <= m for m in members)
    assert sum(1 in m for m in members) == 1 and any({0, 1} <= m or {1, 2} <= m for m in members)
    for group in report.groups:
        ids = [m.id for m in group.members]
        lowest = min(score(i, j) for i, j in itertools.combinations(ids, 2))
        assert group.min_similarity == pytest.approx(lowest, abs=1e-5) and lowest >= threshold - 1e-6


def brute_scores(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Every pair's normalised score, in float64: (cosine − b) / (1 − b), b the mean of the two rows' r."""
    b = (r[:, None].astype(np.float64) + r[None, :]) / 2
    return (x.astype(np.float64) @ x.T.astype(np.float64) - b) / (1 - b)


def test_block_scan_equals_brute_all_pairs(monkeypatch):
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((20, 16)))
    x = unit(centres[rng.integers(0, 20, 300)] + 0.08 * rng.standard_normal((300, 16))).astype(np.float32)
    r = independent_baselines(x, dupes.NEIGHBOUR_K)
    assert np.ptp(r) > 0.05  # rows differ in their neighbourhoods, so each pair's own baseline matters
    threshold = 0.3
    scores = brute_scores(x, r)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(scores >= threshold, 1)))}
    assert 50 < len(expected) < 300 * 299 / 2
    monkeypatch.setattr(dupes, "BLOCK_BYTES", 4 * 300 * 7)  # 7 rows per block: many blocks, a ragged last one
    found = dupes.find_pairs(x, x, threshold, same_rows=True, method="exact")
    np.testing.assert_allclose(found.r_left, r, atol=1e-5)
    near = np.abs(scores - threshold) < 1e-4  # float32 vs float64 ties
    margin = {(a, b) for a, b in zip(*np.nonzero(np.triu(near, 1)))}
    assert set(zip(found.i.tolist(), found.j.tolist())) ^ expected <= margin
    np.testing.assert_allclose(found.cosine, np.einsum("nd,nd->n", x[found.i], x[found.j]), atol=1e-5)
    assert found.recall is None

    ivf = dupes.find_pairs(x, x, threshold, same_rows=True, method="ivf")
    assert 0 <= ivf.recall <= 1 and np.all(ivf.i < ivf.j)
    got = set(zip(ivf.i.tolist(), ivf.j.tolist()))
    assert len(got & expected) >= ivf.recall * len(expected) / 2  # most exact pairs, not noise


def test_cross_set_modes(copied, tiny_gallery, tmp_path):
    _, gallery = copied
    other = lookalike.open_gallery(tiny_gallery)
    report = gallery.duplicates(preset="exact", against=other)
    # every file of the tiny collection is in both galleries, byte for byte: each pairs with its counterpart
    digest = lambda p: Path(p).read_bytes()  # noqa: E731
    other_bytes = {digest(p) for p in other.paths}
    both = {i for i, p in enumerate(gallery.paths) if digest(p) in other_bytes}
    grouped = {m.id for g in report.groups for m in g.members if m.gallery == str(gallery.path)}
    assert both <= grouped
    for group in report.groups:
        assert {m.gallery for m in group.members} == {str(gallery.path), str(other.path)}

    leak = gallery.duplicates(preset="exact", queries_only=True)
    part = gallery.partition()
    queries, database = set(part.query_ids.tolist()), set(part.database_ids.tolist())
    assert part.duplicates == 1 and any("1 identical copies" in note for note in leak.notes)  # the val file's copy
    for group in leak.groups:
        ids = {m.id for m in group.members}
        assert ids & queries and ids & database

    mismatched = array_gallery(tmp_path / "g", unit(np.random.default_rng(0).standard_normal((20, 8))))
    with pytest.raises(LookalikeError, match="same model"):
        gallery.duplicates(against=mismatched)
    with pytest.raises(LookalikeError, match="itself"):
        gallery.duplicates(against=lookalike.open_gallery(gallery.path))


def test_cli_end_to_end(copied, tmp_path, capsys):
    _, gallery = copied
    out = tmp_path / "dupes.json"
    assert main(["dupes", "--gallery", str(gallery.path), "--preset", "exact", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert gallery.provenance() in printed
    assert f"{len(data['groups'])} groups" in printed
    assert data == gallery.duplicates(preset="exact").to_json()
    csv_out = tmp_path / "dupes.csv"
    assert main(["dupes", "--gallery", str(gallery.path), "--threshold", "0.9", "--out", str(csv_out)]) == 0
    assert csv_out.read_text().startswith("group,keep,id,path,score")
    assert main(["dupes", "--gallery", str(gallery.path), "--queries"]) == 0
    assert "held-out queries" in capsys.readouterr().out


@pytest.mark.parametrize("threshold", ["1.5", "0", "-0.2", "nan"])
def test_threshold_outside_range_is_an_error(copied, threshold, capsys):
    _, gallery = copied
    assert main(["dupes", "--gallery", str(gallery.path), "--threshold", threshold]) == 2
    err = capsys.readouterr().err
    assert "outside (0, 1]" in err and err.count("\n") == 1
    with pytest.raises(LookalikeError, match=r"outside \(0, 1\]"):  # the API says the same
        gallery.duplicates(threshold=float(threshold))


@pytest.mark.slow
def test_empty_gallery_and_changed_files_are_errors(copied, tmp_path):
    empty = array_gallery(tmp_path / "empty", np.zeros((0, 8), np.float32))
    with pytest.raises(LookalikeError, match="is empty"):
        empty.duplicates()

    single = array_gallery(tmp_path / "one", unit(np.ones((1, 8))))
    assert single.duplicates().groups == ()

    root, _ = copied
    data = tmp_path / "data"
    shutil.copytree(root, data)
    gallery = lookalike.extract(data, tmp_path / "g", model="resnet18", weights="random", image_size=32, batch_size=16)
    victim = Path(gallery.paths[3])
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(LookalikeError, match="changed or vanished since extraction") as caught:
        gallery.duplicates()
    assert str(victim) in str(caught.value)


def test_one_preset_finds_the_same_copies_on_spread_and_bunched_galleries(tmp_path):
    """Raw cosines bunched near 1 (a shared direction added, as random-weight CNNs give) must not change what a
    preset finds: the planted near-copies, and nothing else, on both galleries (640 rows: whitened). The `exact`
    preset: at `near`, 640 random 64-d vectors always hold a few chance pairs as close, relative to their
    neighbourhoods, as the bench's copies; they are not what this test is about."""
    rng = np.random.default_rng(3)
    d, n, copies = 64, 600, 40
    originals = unit(rng.standard_normal((n, d)))
    planted = unit(originals[:copies] + 0.02 * rng.standard_normal((copies, d)))
    spread = np.concatenate([originals, planted])
    expected = {frozenset((i, n + i)) for i in range(copies)}
    shared = unit(rng.standard_normal(d))
    bunched = unit(spread + 3.0 * shared)
    sims = bunched @ bunched.T
    assert sims[np.triu_indices(len(bunched), 1)].min() > 0.75 and np.median(sims) > 0.88

    for name, x in (("spread", spread), ("bunched", bunched)):
        report = array_gallery(tmp_path / name, x).duplicates(preset="exact")
        assert report.scoring.whitened_dims == d
        found = {frozenset(m.id for m in g.members) for g in report.groups}
        assert found == expected, name


def test_extraction_records_each_images_size_and_the_keeper_has_the_most_pixels(planted):
    """The planted enlarged copy (128² in a smaller file than its 64² original) is kept: the pixel key decides."""
    from PIL import Image

    gallery = lookalike.open_gallery(planted.gallery)
    sizes = [Image.open(p).size for p in gallery.paths]  # read from the files' headers, apart from extraction
    assert gallery.image_dimensions.tolist() == [list(s) for s in sizes]
    larger, original = (str(planted.root / p) for p in (planted.larger.copy, planted.larger.original))
    assert Image.open(larger).size == (LARGER_PX, LARGER_PX) and Image.open(original).size == (64, 64)
    assert os.path.getsize(larger) < os.path.getsize(original)
    # `exact`: the planted copies only (this collection's drawings of one class are near-identical: `near` joins them)
    group = next(g for g in gallery.duplicates("exact").groups if larger in {m.path for m in g.members})
    assert {m.path for m in group.members} == {larger, original}
    assert gallery.paths[group.keep] == larger and group.members[0].path == larger


def older_copy(planted, folder: Path, drop: list[str]) -> lookalike.Gallery:
    """A copy of the planted gallery without some metadata columns, as a gallery from an older lookalike has it."""
    import pyarrow.parquet as pq

    shutil.copytree(planted.gallery, folder)
    pq.write_table(pq.read_table(folder / "metadata.parquet").drop_columns(drop), folder / "metadata.parquet")
    return lookalike.open_gallery(folder)


def test_an_older_gallery_opens_and_its_keeper_falls_back_to_the_largest_file(planted, tmp_path):
    older = older_copy(planted, tmp_path / "older", ["width", "height"])
    assert older.image_dimensions is None
    larger, original = (str(planted.root / p) for p in (planted.larger.copy, planted.larger.original))
    group = next(g for g in older.duplicates().groups if larger in {m.path for m in g.members})
    assert older.paths[group.keep] == original  # no pixel counts: the larger file wins


def test_cli_without_content_hashes_skips_the_identical_tier_and_says_so(planted, tmp_path, capsys):
    older = older_copy(planted, tmp_path / "older", ["sha256"])
    out = tmp_path / "d.json"
    assert main(["dupes", "--gallery", str(older.path), "--preset", "exact", "--out", str(out)]) == 0
    assert "identical content: skipped: the gallery has no content hashes" in capsys.readouterr().out
    data = json.loads(out.read_text())
    found = {
        frozenset(Path(m["path"]).relative_to(planted.root).as_posix() for m in g["members"]) for g in data["groups"]
    }
    assert found == planted.pairs()  # byte copies are still found, by similarity (score 1)
    assert {m["reason"] for g in data["groups"] for m in g["members"]} == {"keeper", "similarity"}


def test_cli_refuses_an_empty_gallery_in_one_line(tmp_path, capsys):
    empty = array_gallery(tmp_path / "empty", np.zeros((0, 8), np.float32))
    assert main(["dupes", "--gallery", str(empty.path)]) == 2
    err = capsys.readouterr().err
    assert "is empty; extract a collection into it first" in err and err.count("\n") == 1


def test_a_moved_collection_is_refused_unless_the_check_is_skipped(planted, tmp_path, capsys):
    """The collection moved after extraction: every recorded path is gone, the embeddings still hold."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    moved = tmp_path / "gallery"
    shutil.copytree(planted.gallery, moved)
    table = pq.read_table(moved / "metadata.parquet")
    old_root = str(planted.root)
    paths = [p.replace(old_root, str(tmp_path / "was-here"), 1) for p in table.column("path").to_pylist()]
    column = table.column_names.index("path")
    pq.write_table(table.set_column(column, "path", pa.array(paths, pa.string())), moved / "metadata.parquet")
    gallery = lookalike.open_gallery(moved)

    assert main(["dupes", "--gallery", str(moved)]) == 2
    err = capsys.readouterr().err
    assert f"{gallery.count} files changed or vanished since extraction" in err and "--no-check-files" in err
    assert err.count("\n") == 1
    with pytest.raises(LookalikeError, match="check_files=False"):
        gallery.duplicates()

    out = tmp_path / "d.csv"
    assert main(["dupes", "--gallery", str(moved), "--no-check-files", "--preset", "exact", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    groups = defaultdict(set)
    for row in rows:
        groups[row["group"]].add(Path(row["path"]).relative_to(tmp_path / "was-here").as_posix())
    assert set(map(frozenset, groups.values())) == planted.pairs()  # named where they were
    found = {frozenset(m.path for m in g.members) for g in gallery.duplicates("exact", check_files=False).groups}
    assert found == {frozenset(str(tmp_path / "was-here" / p) for p in pair) for pair in planted.pairs()}
