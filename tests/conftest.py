"""Shared fixtures: tiny generated collections and galleries, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.data.synthetic import generate_collection

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Converted models (OpenVINO IR) go to a folder of this test session, never the user's ~/.cache (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["LOOKALIKE_CACHE"] = str(path)
    return path
LOOKALIKE = [sys.executable, "-m", "lookalike.cli"]  # the same entry point as the `lookalike` script


def run_cli(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `lookalike` command line and return the finished process (stdout/stderr as text)."""
    proc = subprocess.run([*LOOKALIKE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"lookalike {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """5 classes × (20 train + 4 val) images of 64×64 in the tiny-ImageNet layout."""
    return generate_collection(tmp_path_factory.mktemp("data") / "tiny", n_classes=5, train_per_class=20, val_per_class=4, seed=0)


@pytest.fixture(scope="session")
def tiny_gallery(tiny_collection, tmp_path_factory) -> Path:
    """A resnet18 gallery (random weights, 32-px input) over `tiny_collection`; treat it as read-only."""
    out = tmp_path_factory.mktemp("galleries") / "resnet18"
    run_cli("extract", "--data", tiny_collection, "--out", out, "--model", "resnet18", "--weights", "random", "--image-size", "32", "--bs", "16")
    return out


@pytest.fixture(scope="session")
def clip_gallery(tiny_collection, tmp_path_factory) -> Path:
    """A CLIP gallery (random weights, seed 0, 32-px input) over `tiny_collection`: text queries work on it; read-only."""
    out = tmp_path_factory.mktemp("galleries") / "clip"
    run_cli("extract", "--data", tiny_collection, "--out", out, "--model", "clip", "--weights", "random", "--image-size", "32", "--bs", "16")
    return out


def manifest_json(gallery) -> dict:
    """The manifest as written on disk, read independently of `lookalike.gallery.Manifest`."""
    import json

    return json.loads((Path(gallery.path) / "manifest.json").read_text())
