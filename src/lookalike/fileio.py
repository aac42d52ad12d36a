"""The bottom layer every package may import: atomic file writes and the strict JSON writer.

Why one low module: galleries, saved indexes, study outputs, Ray staging and generated collections all
write files that a reader (or a crash) must never see half-written, and every JSON file must be strict
(no bare NaN). Kept here, importing nothing of lookalike, so the search methods and the data generators
use them without importing the gallery package (which would make the packages import each other).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "require_free_disk",
    "atomic_save_npy_parts",
    "atomic_write_parquet",
    "json_text",
]

# --- atomic writes: a reader (or a crash) never sees a half-written file under a final name ---


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_text(obj).encode())


def json_text(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON for every file we write: NaN and ±inf become null (json.dumps would write bare NaN, which no JSON
    parser accepts)."""
    return json.dumps(_json_safe(obj), indent=indent, sort_keys=sort_keys, default=str, allow_nan=False) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, dict):
        return {key: _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    return obj


def require_free_disk(path: Path, needed_bytes: int, what: str) -> None:
    """Refuse a job before it starts when the filesystem of `path` has less free space than it will write."""
    from .errors import LookalikeError

    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if needed_bytes > free:
        raise LookalikeError(
            f"not enough free disk for {what}: it writes about {needed_bytes / 2**30:.2f} GiB at {path}, and"
            f" {free / 2**30:.2f} GiB are free there; free some space or choose a folder on a larger disk"
        )


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(path, write)


def atomic_save_npy_parts(path: Path, parts: Sequence[np.ndarray]) -> None:
    """Save the row-wise concatenation of 2-D arrays of one dtype as one `.npy`, without ever concatenating them."""
    rows = sum(len(p) for p in parts)
    header = {"descr": np.lib.format.dtype_to_descr(parts[0].dtype), "fortran_order": False}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {**header, "shape": (rows, *parts[0].shape[1:])})
            for part in parts:
                np.ascontiguousarray(part).tofile(f)

    _atomic(path, write)


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a gallery file gets the mode any normal write would
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask both sets and gets)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
