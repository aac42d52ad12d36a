"""The gallery store: one folder per (collection, model) holding embeddings, metadata and a manifest.

Layout (see README "What each output file holds"):
    manifest.json       what made the gallery (model, weights, data, preprocessing, timings, versions)
    embeddings.npy      (N, d) float32, L2-normalised, memory-mappable
    metadata.parquet    id, path, label, label_name, split, sha256, size, mtime_ns, width, height
                        (row i describes embeddings[i]; the last five are absent in older galleries)
    id_map.npy          after an update: each id of the gallery before it → its id now (−1: gone)
    indexes/<name>/     saved search methods (see lookalike.search)
    cache/              ground truth and other derived data, safe to delete

`manifest.json` is written last and atomically, so its presence means the gallery is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GalleryError
from ..fileio import atomic_save_npy, atomic_write_json, atomic_write_parquet
from .manifest import DataInfo, Manifest, ModelInfo, UpdateInfo

if TYPE_CHECKING:
    from ..search.compare import Comparison
    from ..search.dupes import DuplicateReport
    from ..search.hits import Hit, Query

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.parquet"
INDEXES = "indexes"
CACHE = "cache"
METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("label_name", pa.string()),
        ("split", pa.string()),
    ]
)
CONTENT_HASH = "sha256"  # optional metadata column: sha256 of each image file (galleries extracted before it lack it)
# optional columns: each file's stat before it was read (older galleries lack them)
FILE_SIZE, FILE_MTIME = ("size", "mtime_ns")
# optional columns: each image's full size in pixels, upright (older galleries lack them)
IMAGE_WIDTH, IMAGE_HEIGHT = ("width", "height")
ID_MAP = "id_map.npy"
HELD_OUT_FRACTION = 0.1  # of a collection without a val split, by path hash (see Gallery.partition)
MAX_HELD_OUT_QUERIES = 1000


# --- reading ---


@dataclass(frozen=True)
class Partition:
    """Which gallery rows are searched (database) and which are held-out queries; they never overlap.

    Nor do their files: a database row whose file has the same content (sha256) as a query's,
    e.g. a copy under another path or a symlink, is left out too and counted in `duplicates`.
    """

    database_ids: np.ndarray
    query_ids: np.ndarray
    how: str  # human-readable, e.g. "train (100000) vs val (10000)"
    duplicates: int | None = None  # database rows dropped as copies of a query; None: no content hashes to check
    copy_ids: np.ndarray | None = None  # those rows (the leakage check reports which query each copies)


@dataclass(frozen=True)
class Gallery:
    path: Path
    manifest: Manifest

    @cached_property
    def embeddings(self) -> np.ndarray:
        """(N, d) float32, memory-mapped: opening a 1M-row gallery costs no RAM."""
        return np.load(self.path / EMBEDDINGS, mmap_mode="r")

    @cached_property
    def metadata(self) -> pa.Table:
        return pq.read_table(self.path / METADATA)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self.metadata.column("label").to_pylist(), dtype=object)

    @cached_property
    def splits(self) -> np.ndarray:
        return np.asarray(self.metadata.column("split").to_pylist(), dtype=object)

    @cached_property
    def paths(self) -> list[str]:
        return self.metadata.column("path").to_pylist()

    @property
    def model(self) -> str:
        return self.manifest.model.name

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def fingerprint(self) -> str:
        """Identifies this gallery's content; saved indexes record it and refuse another gallery's."""
        return self.manifest.fingerprint

    @property
    def is_real(self) -> bool:
        return self.manifest.is_real

    def row(self, gallery_id: int) -> dict:
        return {k: v[0] for k, v in self.metadata.slice(int(gallery_id), 1).to_pydict().items()}

    def provenance(self, names_only: bool = False) -> str:
        """Model, weights and data in one line; `names_only` names folders without where they lie (the server)."""
        return self.manifest.describe(names_only)

    # -- front doors: thin, stateless calls into lookalike.search, imported when first used (see docs/api.md) --
    def search(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "flat",
        metric: str = "ip",
        *,
        text: str | None = None,
        database: str = "all",
        **params: Any,
    ) -> list[Hit]:
        """The k nearest images to `query` — an image path, image bytes, a PIL image, a (d,) vector or a gallery id — or
        to `text`.

        `text` ("a red car") needs a model with a text tower (CLIP): it is embedded by the text tower
        of the very model that embedded the gallery. `method` is a named method or a saved index
        ("flat", "ivf", "hnsw", …); `params` such as nprobe=16 or efSearch=128 apply to this call
        only. `database="all"` (the default) searches every row; "heldout" searches the study's
        database, without the held-out queries of `partition`. The query model and the methods are
        loaded once and kept (`lookalike.search.searcher.searcher_for`).
        """
        from ..search.searcher import searcher_for

        return searcher_for(self, database).search(query, k, method, metric, text=text, **params)

    def compare(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "ivf",
        metric: str = "ip",
        *,
        text: str | None = None,
        database: str = "all",
        **params: Any,
    ) -> Comparison:
        """Search like `search` with `method`, and with exact search over the same rows: what the method missed for this
        query.

        Returns a `lookalike.search.compare.Comparison`: both result lists, recall@k, the missed ids and each search's
        ms.
        """
        from ..search.searcher import searcher_for

        return searcher_for(self, database).compare(query, k, method, metric, text=text, **params)

    def duplicates(
        self,
        preset: str | None = "near",
        threshold: float | None = None,
        method: str | None = None,
        against: Gallery | None = None,
        queries_only: bool = False,
        check_files: bool = True,
    ) -> DuplicateReport:
        """Groups of near-duplicate images: identical files first, then pairs above a normalised similarity threshold.

        Returns a `lookalike.search.dupes.DuplicateReport` (groups that do not chain, a suggested
        keeper each, `to_json()`, `to_csv()`, `write(path)`); see that module for the rule and the
        scoring. `against` compares with another gallery of the same model; `queries_only` checks the
        held-out queries of `partition` against its database (leakage). `check_files=False` skips the
        check that the files are as extracted (for a collection that moved: the report then names
        the files where they were).
        """
        from ..search.dupes import find_duplicates

        return find_duplicates(self, preset, threshold, method, against, queries_only, check_files)

    def partition(self, max_queries: int = MAX_HELD_OUT_QUERIES, seed: int = 0) -> Partition:
        """The study's held-out queries: the val split when there is one, else a seeded sample left out of the rest.

        Only the study (bench, tradeoff, tune, scale, report) and `database="heldout"` use this;
        search, the API and the server search every row by default.

        Searching gallery members for themselves flatters recall (each finds itself at rank 1),
        so queries are never part of the database. The sample is chosen by a seeded hash of each
        row's path, not by row position: a row is held out when its hash falls in the lowest
        HELD_OUT_FRACTION (at least 1 row, at most `max_queries`: the lowest hashes). So an update
        that adds or removes files never moves a remaining row between queries and database, except
        at the `max_queries` cap (collections over 10,000 images), where rows near the cut may.
        """
        splits = self.splits
        train = np.flatnonzero(splits == "train")
        val = np.flatnonzero(splits == "val")
        if len(train) and len(val):
            queries = val if len(val) <= max_queries else np.sort(val[self._path_order(val, seed)[:max_queries]])
            return self._without_copies(train, queries, f"train ({len(train)}) vs val ({len(queries)} of {len(val)})")
        pool = np.flatnonzero((splits != "test") & (splits != "val")) if len(train) == 0 else train
        if len(pool) < 2:
            raise GalleryError(f"gallery at {self.path} has {len(pool)} searchable images; it needs at least 2")
        order, fractions = self._path_order(pool, seed, with_fractions=True)
        n_queries = int(np.clip(np.count_nonzero(fractions < HELD_OUT_FRACTION), 1, min(max_queries, len(pool) - 1)))
        queries = np.sort(pool[order[:n_queries]])
        database = np.setdiff1d(pool, queries, assume_unique=True)
        return self._without_copies(database, queries, f"{{database}} images vs {n_queries} held-out (seed {seed})")

    def _path_order(self, rows: np.ndarray, seed: int, with_fractions: bool = False):
        """`rows` positions ordered by a seeded hash of their paths (and each hash as a fraction of its range)."""
        hashes = self._path_hashes(seed)[rows]
        order = np.argsort(hashes, kind="stable")
        if not with_fractions:
            return order
        return order, hashes[order].astype(np.float64) / 2.0**64

    @cached_property
    def content_hashes(self) -> np.ndarray | None:
        """sha256 of each row's file, or None for a gallery extracted before the column existed."""
        if CONTENT_HASH not in self.metadata.column_names:
            return None
        return np.asarray(self.metadata.column(CONTENT_HASH).to_pylist(), dtype=object)

    def _path_hashes(self, seed: int) -> np.ndarray:
        """A seeded 64-bit hash of every row's path, computed once per seed (about 1 s for 1M rows)."""
        cache = self.__dict__.setdefault("_path_hash_cache", {})
        if seed not in cache:
            salt = str(seed).encode()[:16]
            cache[seed] = np.fromiter(
                (
                    int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8, salt=salt).digest(), "big")
                    for p in self.paths
                ),
                dtype=np.uint64,
                count=self.count,
            )
        return cache[seed]

    @cached_property
    def file_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(size, mtime_ns) of each row's file when it was read, or None for a gallery extracted before they were
        stored."""
        names = self.metadata.column_names
        if FILE_SIZE not in names or FILE_MTIME not in names:
            return None
        return (
            self.metadata.column(FILE_SIZE).to_numpy().astype(np.int64),
            self.metadata.column(FILE_MTIME).to_numpy().astype(np.int64),
        )

    @cached_property
    def image_dimensions(self) -> np.ndarray | None:
        """(N, 2) width and height of each row's image as the file holds it, or None for a gallery without them
        (extracted before they were stored, or written from arrays)."""
        names = self.metadata.column_names
        if IMAGE_WIDTH not in names or IMAGE_HEIGHT not in names:
            return None
        return np.stack(
            [self.metadata.column(name).to_numpy().astype(np.int64) for name in (IMAGE_WIDTH, IMAGE_HEIGHT)], axis=1
        )

    def _without_copies(self, database: np.ndarray, queries: np.ndarray, how: str) -> Partition:
        """Drop database rows whose file content equals a query's; `how` may hold a {database} field for the final
        count."""
        hashes = self.content_hashes
        if hashes is None:
            # an older or generated gallery: paths only
            return Partition(database, queries, how.format(database=len(database)))
        query_hashes = {h for h in hashes[queries] if h}
        copies = np.fromiter((h in query_hashes for h in hashes[database]), dtype=bool, count=len(database))
        kept = database[~copies]
        if len(kept) == 0:
            raise GalleryError(
                f"gallery at {self.path}: every database image is a copy of a held-out query; it needs distinct images"
            )
        dropped = int(copies.sum())
        note = f" ({dropped} copies of queries left out of the database)" if dropped else ""
        return Partition(kept, queries, how.format(database=len(kept)) + note, dropped, database[copies])


def open_gallery(path: str | os.PathLike) -> Gallery:
    """Open and validate a gallery folder; every inconsistency is a GalleryError that says what to do."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise GalleryError(
            f"no gallery at {path}: the folder does not exist; create one with `lookalike extract --out {path}`"
        )
    if not manifest_path.is_file():
        hint = (
            " (an extraction was started here: rerun the same `lookalike extract` to finish it)"
            if (path / ".partial").exists()
            else ""
        )
        raise GalleryError(f"{path} is not a complete gallery: {MANIFEST} is missing{hint}")
    gallery = Gallery(path, Manifest.read(manifest_path))
    for name in (EMBEDDINGS, METADATA):
        if not (path / name).is_file():
            raise GalleryError(f"gallery at {path} is missing {name}; re-extract with `lookalike extract --overwrite`")
    try:
        shape, dtype = gallery.embeddings.shape, gallery.embeddings.dtype
        rows = pq.read_metadata(path / METADATA).num_rows
    except Exception as exc:
        raise GalleryError(
            f"gallery at {path} has an unreadable {EMBEDDINGS} or {METADATA} ({exc}); re-extract it"
        ) from exc
    if shape != (gallery.count, gallery.dim) or dtype != np.float32 or rows != gallery.count:
        raise GalleryError(
            f"gallery at {path} is inconsistent: manifest says {gallery.count}×{gallery.dim} float32, "
            f"{EMBEDDINGS} is {shape} {dtype} and {METADATA} has {rows} rows; re-extract with --overwrite"
        )
    return gallery


# --- writing: the one writer every gallery goes through (extraction, the Ray engine, generated arrays) ---


@dataclass(frozen=True)
class Rows:
    """The metadata of each embedding row, in row order."""

    paths: Sequence[str]
    labels: Sequence[str | None]
    label_names: Sequence[str | None]
    splits: Sequence[str]
    content_hashes: Sequence[str] | None = None  # sha256 of each image file, when the writer hashed them
    sizes: Sequence[int] | None = (
        None  # each file's size and mtime (ns) before it was read, so an update can skip unchanged files
    )
    mtimes: Sequence[int] | None = None
    dimensions: np.ndarray | Sequence[tuple[int, int]] | None = None  # (width, height) of each image, when decoded

    def __post_init__(self) -> None:
        optional = (self.content_hashes, self.sizes, self.mtimes, self.dimensions)
        lengths = {len(self.paths), len(self.labels), len(self.label_names), len(self.splits)} | {
            len(c) for c in optional if c is not None
        }
        if len(lengths) != 1:
            raise GalleryError(
                f"{len(self.paths)} paths but {len(self.labels)} labels, {len(self.label_names)} label names,"
                f" {len(self.splits)} splits and {len(self.content_hashes or [])} content hashes"
            )

    def table(self) -> pa.Table:
        n = len(self.paths)
        table = pa.Table.from_pydict(
            {
                "id": np.arange(n, dtype=np.int64),
                "path": list(self.paths),
                "label": list(self.labels),
                "label_name": list(self.label_names),
                "split": list(self.splits),
            },
            schema=METADATA_SCHEMA,
        )
        if self.content_hashes is not None:
            table = table.append_column(CONTENT_HASH, pa.array(list(self.content_hashes), pa.string()))
        if self.sizes is not None and self.mtimes is not None:
            table = table.append_column(FILE_SIZE, pa.array(np.asarray(self.sizes, dtype=np.int64), pa.int64()))
            table = table.append_column(FILE_MTIME, pa.array(np.asarray(self.mtimes, dtype=np.int64), pa.int64()))
        if self.dimensions is not None:
            dims = np.asarray(self.dimensions, dtype=np.int32).reshape(-1, 2)
            table = table.append_column(IMAGE_WIDTH, pa.array(dims[:, 0], pa.int32()))
            table = table.append_column(IMAGE_HEIGHT, pa.array(dims[:, 1], pa.int32()))
        return table


def records_digest(paths: Sequence[str], labels: Sequence[str | None], splits: Sequence[str]) -> str:
    """sha256 over (path, label, split) lines: identifies an image list and its labelling."""
    h = hashlib.sha256()
    for path, label, split in zip(paths, labels, splits):
        h.update(f"{path}\t{label}\t{split}\n".encode())
    return h.hexdigest()


def embeddings_digest(embeddings: np.ndarray, block_rows: int = 65_536) -> str:
    """sha256 of the float32 rows, read in blocks so a memory-mapped 1M-row array is never copied whole."""
    h = hashlib.sha256()
    for start in range(0, len(embeddings), block_rows):
        h.update(np.ascontiguousarray(embeddings[start : start + block_rows], dtype=np.float32).tobytes())
    return h.hexdigest()


def write_gallery(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    rows: Rows,
    *,
    model: ModelInfo,
    data: DataInfo,
    skipped: Sequence[dict[str, str]] = (),
    timings: dict[str, Any] | None = None,
    extract: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
    update: UpdateInfo | None = None,
    id_map: np.ndarray | None = None,
) -> Gallery:
    """Write embeddings, metadata and — last — the manifest, each atomically; return the opened gallery.

    An update (`update`, with `id_map`: old id → new id, −1 for rows gone) is written into a
    staging folder and moved over the old gallery by `install_gallery`.
    """
    path = Path(path)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise GalleryError(f"a gallery holds an (N, d) float32 array, got {embeddings.shape} {embeddings.dtype}")
    n, d = embeddings.shape
    if len(rows.paths) != n:
        raise GalleryError(f"{n} embeddings but metadata for {len(rows.paths)} rows")
    if model.dim != d:
        raise GalleryError(f"the model {model.name} gives {model.dim}-d embeddings but the array is {d}-d")
    atomic_save_npy(path / EMBEDDINGS, embeddings)
    atomic_write_parquet(path / METADATA, rows.table())
    if update is not None:
        if id_map is None:
            raise GalleryError("an updated gallery needs its id map (old id → new id)")
        atomic_save_npy(path / update.id_map, np.asarray(id_map, dtype=np.int64))
    fingerprint = embeddings_digest(embeddings)[:16] + "-" + records_digest(rows.paths, rows.labels, rows.splits)[:16]
    manifest = Manifest(
        model=model,
        data=data,
        count=n,
        fingerprint=fingerprint,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        skipped=tuple(skipped),
        timings=dict(timings or {}),
        extract=dict(extract or {}),
        environment=dict(environment or {}),
        update=update,
    )
    write_manifest(path, manifest)
    return open_gallery(path)


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Replace a gallery's manifest (e.g. to add timings measured elsewhere), atomically."""
    atomic_write_json(Path(path) / MANIFEST, manifest.to_dict())


@dataclass(frozen=True)
class IndexFollower:
    """How a gallery's saved indexes follow it when an update replaces it: `stage(old, staged)` writes updated copies
    into the staged gallery and returns each one's outcome and a note on the held-out queries; `after(gallery)`
    marks, once it is installed, the ones that could not follow.

    The search package, which owns the indexes, registers it (search.update); the gallery and embed packages, which
    write galleries, call it without importing search. `import lookalike` imports search, so it is always there.
    """

    stage: Callable[[Gallery, Gallery], tuple[dict[str, str], str]]
    after: Callable[[Gallery], object]


_index_followers: list[IndexFollower] = []


def follow_indexes_with(follower: IndexFollower) -> None:
    _index_followers[:] = [follower]


def index_follower() -> IndexFollower:
    if not _index_followers:  # only a program that imports lookalike.gallery or .embed alone, never lookalike
        raise GalleryError("no index follower is registered: import lookalike (or lookalike.search) before updating")
    return _index_followers[0]


def install_gallery(staged: Path, path: Path) -> None:
    """Move the complete gallery written in `staged` over the one at `path`: its manifest goes first, the new one last.

    Why: an update reads the old gallery while writing the new one, so the new one is written
    aside (its saved indexes too) and then moved in by renames. Without a manifest nobody reads
    a mix of old and new files; a crash part-way leaves `path` incomplete and `staged` holding
    what is left to move, so calling this again finishes the job.
    """
    staged, path = Path(staged), Path(path)
    if not (staged / MANIFEST).is_file():
        raise GalleryError(f"nothing to install from {staged}: it holds no complete gallery")
    (path / MANIFEST).unlink(missing_ok=True)
    for name in (EMBEDDINGS, METADATA, ID_MAP):
        if (staged / name).exists():
            os.replace(staged / name, path / name)
    if (staged / INDEXES).is_dir():
        (path / INDEXES).mkdir(exist_ok=True)
        for folder in sorted((staged / INDEXES).iterdir()):
            target = path / INDEXES / folder.name
            if target.exists():
                shutil.rmtree(target)  # a crash here leaves the staged copy, which the next call moves in
            os.replace(folder, target)
    os.replace(staged / MANIFEST, path / MANIFEST)


def clear_gallery(path: Path) -> None:
    """Remove what lookalike wrote in `path` (for --overwrite), and nothing else the user keeps there."""
    for name in (MANIFEST, EMBEDDINGS, METADATA, ID_MAP):
        (path / name).unlink(missing_ok=True)
    for name in (INDEXES, CACHE, ".partial"):
        shutil.rmtree(path / name, ignore_errors=True)
    for produced in path.glob("bench.*"):
        produced.unlink()
