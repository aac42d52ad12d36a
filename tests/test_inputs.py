"""What goes into a gallery: the pixel limit of `extract` and its option, and copies of query files.

Each test builds a small generated collection, extracts it with random weights and checks the
gallery against facts computed here from the files themselves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.cli import build_parser
from lookalike.cli.core import extract_config
from lookalike.data.synthetic import generate_collection
from lookalike.embed.extract import ExtractConfig, extract
from lookalike.gallery import CONTENT_HASH, open_gallery

from .conftest import run_main


def _config(data: Path, out: Path, **kw) -> ExtractConfig:
    """Backend and precision named: `auto` would calibrate (seconds) in every extraction of these tests."""
    settings = dict(model="resnet18", weights="random", image_size=32, batch_size=8, chunk_size=16, decode_threads=0)
    return ExtractConfig(data=str(data), out=str(out), **{**settings, "backend": "torch", "precision": "fp32", **kw})


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_extract_max_pixels_refuses_by_default_names_the_option_and_can_be_raised(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=4, val_per_class=1)
    wnid = (data / "wnids.txt").read_text().split()[0]
    big = data / "train" / wnid / "images" / "large.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(big)  # 120,000 px

    refused = extract(_config(data, tmp_path / "g", max_pixels=100_000), progress=False)
    reasons = {Path(f["path"]).name: f["reason"] for f in refused.manifest.skipped}
    assert set(reasons) == {"large.png"}
    assert "--max-pixels" in reasons["large.png"] and "120000 pixels" in reasons["large.png"]

    raised = extract(_config(data, tmp_path / "g", max_pixels=120_000, overwrite=True), progress=False)
    assert len(raised.manifest.skipped) == 0
    assert str(big) in raised.paths and raised.count == refused.count + 1
    assert raised.manifest.extract["identity"]["max_pixels"] == 120_000


def test_extract_cli_passes_max_pixels_and_refuses_nonsense(tmp_path):
    args = build_parser().parse_args(["extract", "--data", "d", "--out", "o", "--max-pixels", "200000000"])
    assert extract_config(args).max_pixels == 200_000_000
    default = extract_config(build_parser().parse_args(["extract", "--data", "d", "--out", "o"]))
    assert "max_pixels" not in default.identity()  # galleries made before the option keep their identity
    proc = run_main("extract", "--data", tmp_path, "--out", tmp_path / "g", "--max-pixels", "0", check=False)
    assert proc.returncode == 2 and "--max-pixels must be a positive number" in proc.stderr


def test_a_copy_or_symlink_of_a_query_is_left_out_of_the_database(tmp_path):
    data = generate_collection(tmp_path / "data", n_classes=2, train_per_class=6, val_per_class=2)
    wnid = (data / "wnids.txt").read_text().split()[0]
    val_images = sorted((data / "val" / "images").glob("*.JPEG"))
    train_dir = data / "train" / wnid / "images"
    shutil.copyfile(val_images[0], train_dir / "copy_of_a_query.JPEG")
    os.symlink(val_images[1], train_dir / "link_to_a_query.JPEG")

    gallery = extract(_config(data, tmp_path / "g"), progress=False)
    assert CONTENT_HASH in gallery.metadata.column_names
    paths = gallery.paths
    assert [h for h in gallery.content_hashes] == [_sha(p) for p in paths]  # hashes of the files' bytes

    partition = gallery.partition()
    query_bytes = {_sha(paths[i]) for i in partition.query_ids}
    database_names = {Path(paths[i]).name for i in partition.database_ids}
    assert not any(_sha(paths[i]) in query_bytes for i in partition.database_ids)
    assert {"copy_of_a_query.JPEG", "link_to_a_query.JPEG"}.isdisjoint(database_names)
    assert partition.duplicates == 2 and "2 copies of queries" in partition.how
    train_rows = [i for i, s in enumerate(gallery.splits) if s == "train"]
    assert len(partition.database_ids) == len(train_rows) - 2

    # A query's own copy would be its nearest neighbour at distance 0: now no query finds a bit-identical row.
    emb = np.asarray(gallery.embeddings)
    best = (emb[partition.query_ids] @ emb[partition.database_ids].T).max(axis=1)
    assert np.all(best < 1 - 1e-6)


def test_a_gallery_without_content_hashes_still_opens_and_partitions(tmp_path, tiny_gallery):
    import pyarrow.parquet as pq

    old = tmp_path / "old"
    shutil.copytree(tiny_gallery, old)
    table = pq.read_table(old / "metadata.parquet")
    pq.write_table(table.drop_columns([CONTENT_HASH]), old / "metadata.parquet")
    gallery = open_gallery(old)
    assert gallery.content_hashes is None
    partition = gallery.partition()
    assert partition.duplicates is None
    assert np.array_equal(partition.database_ids, open_gallery(tiny_gallery).partition().database_ids)


# --- files we write ---


def test_atomic_writes_respect_the_umask_like_a_normal_write(tmp_path):
    from lookalike.gallery import atomic_write_bytes

    old = os.umask(0o002)
    try:
        atomic_write_bytes(tmp_path / "shared.bin", b"x")
        (tmp_path / "plain.bin").write_bytes(b"x")  # what open() would have made
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("shared.bin") == mode("plain.bin") == 0o664
    assert mode("private.bin") == 0o600


def test_json_outputs_are_strict_json_even_with_nan_figures(tmp_path):
    import json

    from lookalike.gallery import atomic_write_json

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    figures = {
        "recall": float("nan"),
        "qps": [np.float32("inf"), -float("inf"), 1.5],
        "n": np.int64(3),
        "ok": np.float64(0.25),
    }
    atomic_write_json(tmp_path / "bench.json", figures)
    text = (tmp_path / "bench.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"recall": None, "qps": [None, None, 1.5], "n": 3, "ok": 0.25}
