"""The gallery store: one folder per (collection, model) holding embeddings, metadata and a manifest.

Layout (see README "What each output file holds"):
    manifest.json       what made the gallery (model, weights, data, preprocessing, timings, versions)
    embeddings.npy      (N, d) float32, L2-normalised, memory-mappable
    metadata.parquet    id, path, label, label_name, split, sha256, size, mtime_ns, width, height
                        (row i describes embeddings[i]; the last five are absent in older galleries)
    id_map.npy          after an update: each id of the gallery before it → its id now (−1: gone)
    indexes/<name>/     saved search methods (see lookalike.search)
    cache/              ground truth and other derived data, safe to delete

`manifest.json` is written last and atomically, so its presence means the gallery is complete. It
lists the shards (file names, rows, first id, sha256 of the rows); `Gallery.embeddings` reads them
all through one `ShardedArray`, and `GalleryWriter` writes them one at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GalleryError
from ..fileio import atomic_save_npy, atomic_save_npy_parts, atomic_write_json, atomic_write_parquet
from .manifest import ONE_FILE_EMBEDDINGS, ONE_FILE_METADATA, DataInfo, Manifest, ModelInfo, ShardInfo, UpdateInfo
from .shards import BLOCK_ROWS, ShardedArray

if TYPE_CHECKING:
    from ..search.compare import Comparison
    from ..search.dupes import DuplicateReport
    from ..search.hits import Hit, Query

MANIFEST = "manifest.json"
EMBEDDINGS, METADATA = ONE_FILE_EMBEDDINGS, ONE_FILE_METADATA
DEFAULT_SHARD_ROWS = 262_144  # 512 MiB at 512-d: a gallery of tiny-ImageNet's size stays one file
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
    def embeddings(self) -> ShardedArray:
        """(N, d) float32 over the memory-mapped shards: opening a gallery costs no RAM, and rows are read by id
        (`take`, `[ids]`) or by block (`blocks`); `np.asarray` of a one-shard gallery is its memory map."""
        files = [self.path / s.embeddings for s in self.shards]
        return ShardedArray([np.load(f, mmap_mode="r") for f in files], self.dim, [(str(f), 0) for f in files])

    @cached_property
    def metadata(self) -> pa.Table:
        tables = [pq.read_table(self.path / s.metadata) for s in self.shards]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    def verify(self) -> None:
        """Read every shard and compare its sha256 with the manifest's: an altered shard is a GalleryError naming it.

        Opening checks each file's presence and shape (cheap); this reads every byte, so the
        builds that read the whole gallery anyway call it, not `open_gallery`.
        """
        for shard in self.shards:
            if shard.digest is None:
                continue
            found = embeddings_digest(np.load(self.path / shard.embeddings, mmap_mode="r"))
            if found != shard.digest:
                raise GalleryError(
                    f"gallery at {self.path}: shard {shard.embeddings} (rows {shard.first_id}–"
                    f"{shard.first_id + shard.rows - 1}) was altered since it was written (sha256 differs);"
                    " re-extract with `lookalike extract --overwrite`"
                )

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
        positive: Sequence[Query] = (),
        negative: Sequence[Query] = (),
        alpha: float | None = None,
        where: dict[str, Any] | None = None,
        **params: Any,
    ) -> list[Hit]:
        """The k nearest images to `query` — an image path, image bytes, a PIL image, a (d,) vector or a gallery id — or
        to `text`, or to several examples.

        `text` ("a red car") needs a model with a text tower (CLIP): it is embedded by the text tower
        of the very model that embedded the gallery. `method` is a named method or a saved index
        ("flat", "ivf", "hnsw", …); `params` such as nprobe=16 or efSearch=128 apply to this call
        only. `database="all"` (the default) searches every row; "heldout" searches the study's
        database, without the held-out queries of `partition`. The query model and the methods are
        loaded once and kept (`lookalike.search.searcher.searcher_for`).

        `positive` and `negative` take several examples of any of those forms (`lookalike.Text("at
        night")` for a text, CLIP galleries): the query is normalise(mean(positives) − alpha ·
        mean(negatives)) (alpha None: `searcher.NEGATIVE_WEIGHT`, 0.5), `query` and `text` counting
        as positives; example gallery ids are not returned.

        `where` ({"label": "cat" or [...], "split": "val", "path": "*/2024/*", "mtime": (lo, hi), "ids": [...]})
        searches only the rows it keeps: exact methods give the true top k among them, FAISS indexes filter
        inside the search (`lookalike.search.filters`).
        """
        from ..search.searcher import searcher_for

        return searcher_for(self, database).search(
            query,
            k,
            method,
            metric,
            text=text,
            positive=positive,
            negative=negative,
            alpha=alpha,
            where=where,
            **params,
        )

    def compare(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "ivf",
        metric: str = "ip",
        *,
        text: str | None = None,
        database: str = "all",
        where: dict[str, Any] | None = None,
        **params: Any,
    ) -> Comparison:
        """Search like `search` with `method`, and with exact search over the same rows: what the method missed for this
        query.

        Returns a `lookalike.search.compare.Comparison`: both result lists, recall@k, the missed ids and each search's
        ms.
        """
        from ..search.searcher import searcher_for

        return searcher_for(self, database).compare(query, k, method, metric, text=text, where=where, **params)

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
    _check_shards(gallery)
    return gallery


def _check_shards(gallery: Gallery) -> None:
    """Every shard's files are there, of the shape and row count the manifest lists, covering ids 0 … N − 1 in
    order. Cheap (file headers only); `Gallery.verify` compares the contents' sha256."""
    path, first_id = gallery.path, 0
    fix = "re-extract with `lookalike extract --overwrite`"
    for shard in gallery.shards:
        for name in (shard.embeddings, shard.metadata):
            if not (path / name).is_file():
                raise GalleryError(f"gallery at {path} is missing {name}; {fix}")
        try:
            vectors = np.load(path / shard.embeddings, mmap_mode="r")
            rows = pq.read_metadata(path / shard.metadata).num_rows
        except Exception as exc:
            raise GalleryError(
                f"gallery at {path} has an unreadable {shard.embeddings} or {shard.metadata} ({exc}); {fix}"
            ) from exc
        expected = (shard.rows, gallery.dim)
        if vectors.shape != expected or vectors.dtype != np.float32 or rows != shard.rows or shard.first_id != first_id:
            raise GalleryError(
                f"gallery at {path} is inconsistent: the manifest lists {shard.embeddings} as rows {shard.first_id}–"
                f"{shard.first_id + shard.rows - 1} ({shard.rows}×{gallery.dim} float32, expected from row {first_id}),"
                f" the file is {vectors.shape} {vectors.dtype} and {shard.metadata} has {rows} rows (a truncated or"
                f" replaced file); {fix}"
            )
        first_id += shard.rows
    if first_id != gallery.count:
        raise GalleryError(
            f"gallery at {path} is inconsistent: its shards hold {first_id} rows, the manifest says {gallery.count};"
            f" {fix}"
        )


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

    def table(self, first_id: int = 0) -> pa.Table:
        n = len(self.paths)
        table = pa.Table.from_pydict(
            {
                "id": np.arange(first_id, first_id + n, dtype=np.int64),
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
        h.update(
            np.ascontiguousarray(embeddings[start : start + block_rows], dtype=np.float32)
        )  # a mapped view: no copy
    return h.hexdigest()


def shard_file_names(number: int) -> tuple[str, str]:
    """The files of shard `number` while a gallery has (or may have) several; a gallery of one keeps the one-file
    names."""
    return f"embeddings-{number:05d}.npy", f"metadata-{number:05d}.parquet"


SHARD_FILE_PATTERNS = ("embeddings-*.npy", "metadata-*.parquet")


class GalleryWriter:
    """Writes a gallery shard by shard, each file once and atomically as its shard fills; `finish` writes the
    manifest last.

    Why: a gallery larger than memory is never held whole. The writer holds at most one shard's
    rows (`shard_rows`) besides the block being added, and computes each shard's sha256 and the
    gallery's fingerprint as the rows pass, so extraction, updates and generated galleries of any
    size are written in the memory of one shard.
    """

    def __init__(self, path: str | os.PathLike, dim: int, shard_rows: int = DEFAULT_SHARD_ROWS, first_number: int = 0):
        if shard_rows < 1:
            raise GalleryError(f"--shard-size must be at least 1 row, got {shard_rows}")
        self.path, self.dim, self.shard_rows = Path(path), int(dim), int(shard_rows)
        self.shards: list[ShardInfo] = []
        self.number = first_number  # of the next shard file written: an update numbers past the files it keeps
        self.written: set[str] = set()  # embeddings files this writer wrote (not kept from another gallery)
        self.pending: list[tuple[np.ndarray, pa.Table]] = []
        self.pending_rows = self.count = 0
        self.columns: list[str] | None = None
        self.vectors_hash, self.records_hash = hashlib.sha256(), hashlib.sha256()
        self.path.mkdir(parents=True, exist_ok=True)

    def add(self, embeddings: np.ndarray, rows: Rows) -> None:
        """Append rows (ids continue from the last added); whole shards are written as soon as they fill."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.dtype != np.float32 or embeddings.shape[1] != self.dim:
            raise GalleryError(
                f"a gallery of {self.dim}-d rows takes (n, {self.dim}) float32, got {embeddings.shape}"
                f" {embeddings.dtype}"
            )
        if len(rows.paths) != len(embeddings):
            raise GalleryError(f"{len(embeddings)} embeddings but metadata for {len(rows.paths)} rows")
        table = rows.table(self.count)
        if self.columns is None:
            self.columns = table.column_names
        elif table.column_names != self.columns:
            raise GalleryError(f"rows with columns {table.column_names} after rows with {self.columns}")
        self.vectors_hash.update(np.ascontiguousarray(embeddings))
        for path, label, split in zip(rows.paths, rows.labels, rows.splits):
            self.records_hash.update(f"{path}\t{label}\t{split}\n".encode())
        self.pending.append((embeddings, table))
        self.pending_rows += len(embeddings)
        self.count += len(embeddings)
        while self.pending_rows >= self.shard_rows:
            self._write_shard(self.shard_rows)

    def _write_shard(self, rows: int) -> None:
        parts, need = [], rows
        while need or not parts:
            vectors, table = self.pending[0]
            if len(vectors) <= need:
                parts.append(self.pending.pop(0))
                need -= len(vectors)
            else:
                parts.append((vectors[:need], table.slice(0, need)))
                self.pending[0] = (vectors[need:], table.slice(need))
                need = 0
        table = parts[0][1] if len(parts) == 1 else pa.concat_tables([t for _, t in parts])
        embeddings_name, metadata_name = self._next_names()
        self.written.add(embeddings_name)
        atomic_save_npy_parts(self.path / embeddings_name, [v for v, _ in parts])  # never concatenated in memory
        atomic_write_parquet(self.path / metadata_name, table)
        digest = hashlib.sha256()
        for vectors, _ in parts:
            digest.update(np.ascontiguousarray(vectors))
        self.shards.append(ShardInfo(embeddings_name, metadata_name, rows, self._written_rows(), digest.hexdigest()))
        self.pending_rows -= rows
        self.pending = [(v, t) for v, t in self.pending if len(v)]

    def _next_names(self) -> tuple[str, str]:
        self.number += 1
        return shard_file_names(self.number - 1)

    def _written_rows(self) -> int:
        return self.shards[-1].first_id + self.shards[-1].rows if self.shards else 0

    def keep(self, folder: Path, shard: ShardInfo) -> None:
        """Append a shard of another gallery (the one an update replaces) as it is: its embeddings file is linked, not
        rewritten, and its metadata is linked too unless its ids move (then only that small file is written anew).

        Why: an update that adds ten images to a 10M-row gallery should not rewrite 20 GB. The
        shard's rows are still read once, for the gallery's fingerprint (a read, not a write).
        """
        if self.pending:  # the rows added before it end their own shard
            self._write_shard(self.pending_rows)
        folder, first_id = Path(folder), self._written_rows()
        vectors = np.load(folder / shard.embeddings, mmap_mode="r")
        if vectors.shape != (shard.rows, self.dim):
            raise GalleryError(f"{folder / shard.embeddings} is {vectors.shape}, its manifest says ({shard.rows}, d)")
        for start in range(0, len(vectors), BLOCK_ROWS):
            self.vectors_hash.update(np.ascontiguousarray(vectors[start : start + BLOCK_ROWS]))
        table = pq.read_table(folder / shard.metadata)
        if self.columns is None:
            self.columns = table.column_names
        elif table.column_names != self.columns:
            raise GalleryError(
                f"shard {shard.metadata} has columns {table.column_names} after rows with {self.columns}"
            )
        columns = (table.column(name).to_pylist() for name in ("path", "label", "split"))
        for path, label, split in zip(*columns):
            self.records_hash.update(f"{path}\t{label}\t{split}\n".encode())
        _link_or_copy(folder / shard.embeddings, self.path / shard.embeddings)
        metadata = shard.metadata
        if shard.first_id == first_id:
            _link_or_copy(folder / shard.metadata, self.path / metadata)
        else:  # the ids are positions: rows before this shard came or went
            _, metadata = self._next_names()
            ids = pa.array(np.arange(first_id, first_id + shard.rows, dtype=np.int64))
            atomic_write_parquet(self.path / metadata, table.set_column(0, "id", ids))
        self.shards.append(replace(shard, metadata=metadata, first_id=first_id))
        self.count += shard.rows

    def finish(
        self,
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
        """Write what is left as the last shard, then the manifest; return the opened gallery."""
        if model.dim != self.dim:
            raise GalleryError(f"the model {model.name} gives {model.dim}-d embeddings but the rows are {self.dim}-d")
        if not self.count:  # an empty gallery is one empty shard
            self.pending = [(np.zeros((0, self.dim), np.float32), Rows([], [], [], []).table())]
        if self.pending:
            self._write_shard(self.pending_rows)
        if len(self.shards) == 1 and self.shards[0].embeddings in self.written:  # one shard keeps the one-file names
            only = self.shards[0]
            os.replace(self.path / only.embeddings, self.path / EMBEDDINGS)
            os.replace(self.path / only.metadata, self.path / METADATA)
            self.shards[0] = replace(only, embeddings=EMBEDDINGS, metadata=METADATA)
        if update is not None:
            written = len(self.written)
            update = replace(update, shards_kept=len(self.shards) - written, shards_written=written)
            if id_map is None:
                raise GalleryError("an updated gallery needs its id map (old id → new id)")
            atomic_save_npy(self.path / update.id_map, np.asarray(id_map, dtype=np.int64))
        manifest = Manifest(
            model=model,
            data=data,
            count=self.count,
            fingerprint=self.vectors_hash.hexdigest()[:16] + "-" + self.records_hash.hexdigest()[:16],
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            skipped=tuple(skipped),
            timings=dict(timings or {}),
            extract=dict(extract or {}),
            environment=dict(environment or {}),
            update=update,
            shards=tuple(self.shards),
        )
        write_manifest(self.path, manifest)
        return open_gallery(self.path)


def write_gallery(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    rows: Rows,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    **manifest: Any,
) -> Gallery:
    """Write an (N, d) float32 array and its rows as a gallery (shards of `shard_rows`), manifest last; `manifest`
    takes `GalleryWriter.finish`'s fields (model, data, …).

    An update (`update`, with `id_map`: old id → new id, −1 for rows gone) is written into a
    staging folder and moved over the old gallery by `install_gallery`.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise GalleryError(f"a gallery holds an (N, d) float32 array, got {embeddings.shape} {embeddings.dtype}")
    writer = GalleryWriter(path, embeddings.shape[1], shard_rows)
    writer.add(embeddings, rows)
    return writer.finish(**manifest)


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
    listed = Manifest.read(staged / MANIFEST).shards
    (path / MANIFEST).unlink(missing_ok=True)
    for name in (*(n for shard in listed for n in (shard.embeddings, shard.metadata)), ID_MAP):
        if (staged / name).exists():
            os.replace(staged / name, path / name)
    _remove_unlisted_shards(path, listed)
    if (staged / INDEXES).is_dir():
        (path / INDEXES).mkdir(exist_ok=True)
        for folder in sorted((staged / INDEXES).iterdir()):
            target = path / INDEXES / folder.name
            if target.exists():
                shutil.rmtree(target)  # a crash here leaves the staged copy, which the next call moves in
            os.replace(folder, target)
    os.replace(staged / MANIFEST, path / MANIFEST)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (free, and the same bytes), or a copy on a filesystem without links."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def next_shard_number(shards: Sequence[ShardInfo]) -> int:
    """One past the highest number in the shards' file names (0 for a one-file gallery): a writer that keeps some of
    these shards numbers its new files from here, so that no name of the new gallery is one of the old gallery's."""
    numbers = [int(name[len("embeddings-") : -len(".npy")]) for s in shards if (name := s.embeddings) != EMBEDDINGS]
    numbers += [int(name[len("metadata-") : -len(".parquet")]) for s in shards if (name := s.metadata) != METADATA]
    return max(numbers, default=-1) + 1


def _remove_unlisted_shards(path: Path, listed: Sequence[ShardInfo]) -> None:
    """Drop shard files of an earlier version of the gallery that the new manifest does not list."""
    keep = {name for shard in listed for name in (shard.embeddings, shard.metadata)}
    for pattern in (*SHARD_FILE_PATTERNS, EMBEDDINGS, METADATA):
        for file in path.glob(pattern):
            if file.name not in keep:
                file.unlink()


def clear_gallery(path: Path) -> None:
    """Remove what lookalike wrote in `path` (for --overwrite), and nothing else the user keeps there."""
    for name in (MANIFEST, ID_MAP):
        (path / name).unlink(missing_ok=True)
    _remove_unlisted_shards(path, ())
    for name in (INDEXES, CACHE, ".partial"):
        shutil.rmtree(path / name, ignore_errors=True)
    for produced in path.glob("bench.*"):
        produced.unlink()
