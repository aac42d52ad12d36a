"""Galleries that follow their folder: the scan, the update plan, and the update's commit.

Every extraction first stats its files (size, mtime in ns) — before reading any of them — and
keeps that scan in `.partial/plan.npz`; the gallery stores it per row. When `extract` runs again on
a gallery made with the same model, weights and preprocessing, it updates the gallery: a row
whose path is still listed is reused when its size and mtime are unchanged, or, where they
differ, when its content hash (sha256) is; only new and changed files are embedded, through the
same resumable shards as a full extraction. Unreadable files are tried again only if they changed.

The commit writes the new gallery aside, in `.partial/commit/`, with updated copies of the
saved indexes, and then moves it in, manifest last (`gallery.install_gallery`). The old gallery
stays whole until that move; a crash during it is finished by the next run. Rows come out in
the order a fresh extraction of the folder gives (split, then path), with the embeddings and
metadata a fresh extraction gives them, so ids (row positions) move when files before them come
or go: `id_map.npy` maps the previous gallery's ids to the new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..data.datasets import Collection, ImageRecord, file_stat
from ..data.images import read_image_bytes
from ..errors import GalleryError
from ..gallery import (
    MANIFEST,
    DataInfo,
    Gallery,
    GalleryWriter,
    Manifest,
    ModelInfo,
    Rows,
    ShardInfo,
    UpdateInfo,
    atomic_write_bytes,
    index_follower,
    install_gallery,
    json_text,
    next_shard_number,
    open_gallery,
    write_manifest,
)

log = logging.getLogger(__name__)

PLAN = "plan.npz"
STAGED = "commit"  # `.partial/commit/`: the updated gallery, complete, before it is moved in
EMBED, CARRY_SKIP = -1, -2  # Plan.reuse codes besides a row number
MODEL_KEYS = ("model", "arch", "family", "dim", "weights", "preprocess")  # what must match for rows of two runs to mix


@dataclass(frozen=True)
class Plan:
    """Per record of the whole collection: its stat before reading, and where its row comes from."""

    sizes: np.ndarray  # int64 bytes, −1: the file was gone at the scan
    mtimes: np.ndarray  # int64 ns
    # int64: the base gallery's row it keeps, EMBED, or CARRY_SKIP (unreadable before, unchanged since)
    reuse: np.ndarray
    hashed: int = 0  # files whose stat differed from the gallery's and were hashed

    @property
    def todo(self) -> np.ndarray:
        """Record numbers this job embeds, in record order."""
        return np.flatnonzero(self.reuse == EMBED)

    def same_scan(self, other: Plan) -> bool:
        return np.array_equal(self.sizes, other.sizes) and np.array_equal(self.mtimes, other.mtimes)


def scan(records: Sequence[ImageRecord]) -> Plan:
    """Stat every record (a cheap syscall each: 20k files take a few tens of ms); everything is to be embedded."""
    stats = np.array([file_stat(r.path) for r in records], dtype=np.int64).reshape(-1, 2)
    return Plan(stats[:, 0].copy(), stats[:, 1].copy(), np.full(len(records), EMBED, dtype=np.int64))


def plan_update(records: Sequence[ImageRecord], fresh: Plan, base: Gallery) -> Plan:
    """Which of `base`'s rows each record keeps: same path, and same (size, mtime) or else same content hash."""
    reuse = fresh.reuse.copy()
    hashes = base.content_hashes
    if hashes is None:
        log.warning(
            "gallery at %s has no content hashes (extracted by an older lookalike): every image is embedded again",
            base.path,
        )
        return fresh
    row_of = {path: i for i, path in enumerate(base.paths)}
    stats = base.file_stats
    skipped = {s["path"]: s for s in base.manifest.skipped if "size" in s}
    hashed = 0
    for i, record in enumerate(records):
        size, mtime = int(fresh.sizes[i]), int(fresh.mtimes[i])
        j = row_of.get(record.path)
        if j is None:
            bad = skipped.get(record.path)
            if bad is not None and size >= 0 and (bad["size"], bad["mtime_ns"]) == (size, mtime):
                reuse[i] = CARRY_SKIP
            continue
        if size < 0:
            continue  # gone since the listing: embedding it reports it as unreadable
        if stats is not None and stats[0][j] == size and stats[1][j] == mtime:
            reuse[i] = j
            continue
        hashed += 1
        try:
            same = hashlib.sha256(read_image_bytes(record.path)).hexdigest() == hashes[j]
        except OSError:
            same = False
        if same:
            reuse[i] = j
    return replace(fresh, reuse=reuse, hashed=hashed)


def unchanged(plan: Plan, base: Gallery, digest: str) -> bool:
    """True when an update would write the same gallery again: same records, every row reused in place, same stats."""
    stats = base.file_stats
    n = base.count
    return (
        base.manifest.extract.get("records_digest") == digest
        and stats is not None
        and not plan.todo.size
        and np.array_equal(plan.reuse[plan.reuse >= 0], np.arange(n))
        and np.array_equal(plan.sizes[plan.reuse >= 0], stats[0])
        and np.array_equal(plan.mtimes[plan.reuse >= 0], stats[1])
    )


def save_plan(partial: Path, plan: Plan) -> None:
    """Kept with the job, so a resumed run records the stats taken before the first run read anything."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, sizes=plan.sizes, mtimes=plan.mtimes, reuse=plan.reuse, hashed=np.int64(plan.hashed))
    atomic_write_bytes(partial / PLAN, buffer.getvalue())


def load_plan(partial: Path, count: int) -> Plan | None:
    try:
        with np.load(partial / PLAN) as z:
            plan = Plan(z["sizes"], z["mtimes"], z["reuse"], int(z["hashed"]))
    except (OSError, KeyError, ValueError):
        return None
    return plan if len(plan.reuse) == count else None


def subset(collection: Collection, plan: Plan) -> Collection:
    """The records this job embeds: all of them for a full extraction, the new and changed ones for an update."""
    todo = plan.todo
    if len(todo) == len(collection.records):
        return collection
    return replace(collection, records=tuple(collection.records[i] for i in todo.tolist()), problems=())


def base_state(base: Gallery) -> dict:
    """The model, backend and precision an update embeds with: the gallery's own, so new rows match old ones."""
    model = base.manifest.model
    return {
        "model": {k: v for k, v in model.to_dict().items() if k not in ("precision", "inference")},
        "precision": dict(model.precision),
        "inference": model.inference.to_dict(),  # set for every gallery read (the manifest's migration)
    }


def check_model(base: Gallery, model: dict) -> None:
    """Refuse to mix rows of two models: the weights file or preprocessing may have changed under the same name."""
    ours, theirs = (
        json.loads(json_text({k: d.get(k) for k in MODEL_KEYS})) for d in (base.manifest.model.to_dict(), model)
    )  # as JSON: tuples are lists
    differ = [k for k in MODEL_KEYS if ours[k] != theirs[k]]
    if differ:
        raise GalleryError(
            f"cannot update {base.path}: the model loaded now differs from the gallery's in {', '.join(differ)} "
            "(e.g. other weights under the same name); re-extract it with --overwrite"
        )


def skipped_entry(path: str, reason: str, plan: Plan, i: int) -> dict[str, Any]:
    """A skipped file, with its stat so an update can tell that it is still the same unreadable file."""
    entry: dict[str, Any] = {"path": path, "reason": reason}
    if plan.sizes[i] >= 0:
        entry |= {"size": int(plan.sizes[i]), "mtime_ns": int(plan.mtimes[i])}
    return entry


# --- the update's commit ---


@dataclass(frozen=True)
class NewRows:
    """What the job's shards hold, with record numbers of the job's own (todo) collection."""

    embeddings: np.ndarray
    indices: np.ndarray
    hashes: list[str] | None
    bad: list[tuple[int, str]]
    seconds: float = 0.0  # decode + embed time summed over shards
    dimensions: np.ndarray | None = None  # (n, 2) width and height of each image; None from older shards


def stage_update(
    partial: Path,
    whole: Collection,
    plan: Plan,
    base: Gallery,
    new: NewRows,
    shard_rows: int,
    *,
    model: ModelInfo,
    timings: dict[str, Any],
    extract: dict[str, Any],
    environment: dict[str, Any],
) -> Gallery:
    """Write the updated gallery, complete, into `.partial/commit/`: old rows reused, new rows from the chunks, in
    fresh-extraction order, one shard at a time; the base gallery's shards that the update leaves alone are linked,
    not rewritten (`kept_shards`)."""
    records = whole.records
    todo = plan.todo
    new_row = np.full(len(records), -1, dtype=np.int64)
    new_row[todo[new.indices]] = np.arange(len(new.indices))
    rows = np.flatnonzero((plan.reuse >= 0) | (new_row >= 0))
    if not len(rows):
        raise GalleryError(
            f"no image of {whole.root} could be decoded; nothing to store (the gallery in {partial.parent} is left as"
            " it was)"
        )
    old = plan.reuse[rows]
    from_old = old >= 0
    hashes = None
    if base.content_hashes is not None and new.hashes is not None:
        hashes = np.where(
            from_old,
            base.content_hashes[np.maximum(old, 0)],
            np.asarray(new.hashes + [""], dtype=object)[new_row[rows]],
        )
    dimensions = None
    if base.image_dimensions is not None and new.dimensions is not None:
        dimensions = np.zeros((len(rows), 2), dtype=np.int64)
        dimensions[from_old] = base.image_dimensions[old[from_old]]
        dimensions[~from_old] = new.dimensions[new_row[rows[~from_old]]]
    id_map = np.full(base.count, -1, dtype=np.int64)
    id_map[old[from_old]] = np.flatnonzero(from_old)

    bad = {int(todo[i]): reason for i, reason in new.bad}
    carried = {s["path"]: s["reason"] for s in base.manifest.skipped}
    bad |= {int(i): carried.get(records[i].path, "unreadable") for i in np.flatnonzero(plan.reuse == CARRY_SKIP)}
    skipped = [{"path": p, "reason": r} for p, r in whole.problems] + [
        skipped_entry(records[i].path, bad[i], plan, i) for i in sorted(bad)
    ]

    listed = {r.path for r in records}
    previous = base.paths
    known = set(previous)
    kept = set(old[from_old].tolist())
    update = UpdateInfo(
        base_fingerprint=base.fingerprint,
        base_count=base.count,
        reused=len(kept),
        added=sum(1 for i in todo.tolist() if records[i].path not in known),
        changed=sum(1 for j, p in enumerate(previous) if p in listed and j not in kept),
        removed=sum(1 for p in previous if p not in listed),
        hashed=plan.hashed,
    )

    def rows_of(start: int, stop: int) -> Rows:
        here, block = rows[start:stop], slice(start, stop)
        return Rows(
            [records[i].path for i in here],
            [records[i].label for i in here],
            [records[i].label_name for i in here],
            [records[i].split for i in here],
            content_hashes=hashes[block].tolist() if hashes is not None else None,
            sizes=plan.sizes[here],
            mtimes=plan.mtimes[here],
            dimensions=dimensions[block] if dimensions is not None else None,
        )

    def vectors_of(start: int, stop: int) -> np.ndarray:
        here, reused, before = rows[start:stop], from_old[start:stop], old[start:stop]
        embeddings = np.empty((len(here), base.dim), dtype=np.float32)
        embeddings[reused] = base.embeddings.take(before[reused])  # one gather per shard of the old rows
        embeddings[~reused] = new.embeddings[new_row[here[~reused]]]
        return embeddings

    kept = kept_shards(base, old, rows_of, shard_rows)
    staged = partial / STAGED
    shutil.rmtree(staged, ignore_errors=True)
    writer = GalleryWriter(staged, base.dim, shard_rows, first_number=next_shard_number(base.shards))
    position = 0
    for start, shard in [*kept, (len(rows), None)]:
        for block in range(position, start, shard_rows):
            stop = min(block + shard_rows, start)
            writer.add(vectors_of(block, stop), rows_of(block, stop))
        if shard is not None:
            writer.keep(base.path, shard)
            position = start + shard.rows
    return writer.finish(
        model=model,
        data=DataInfo.from_dict(whole.provenance()),
        skipped=skipped,
        timings=timings,
        extract=extract,
        environment=environment,
        update=update,
        id_map=id_map,
    )


def kept_shards(
    base: Gallery, old: np.ndarray, rows_of: Callable[[int, int], Rows], shard_rows: int
) -> list[tuple[int, ShardInfo]]:
    """The base gallery's shards an update keeps as they are, each with the position of its first row in the new
    gallery: those whose rows all come back, in one run, in order, with the same metadata (path, label, hash, stat).

    Every other shard is touched: its rows are written again, with the new rows that fall among
    them, in shards of `shard_rows`. A partial shard right before new rows is touched too, so
    that appending fills the last shard instead of adding a small one each time.
    """
    position = np.full(base.count, -1, dtype=np.int64)
    position[old[old >= 0]] = np.flatnonzero(old >= 0)
    kept = []
    for shard in base.shards:
        here = position[shard.first_id : shard.first_id + shard.rows]
        if not shard.rows or (here < 0).any() or here[-1] - here[0] != shard.rows - 1 or (np.diff(here) != 1).any():
            continue
        start = int(here[0])
        ours = pq.read_table(base.path / shard.metadata).drop_columns(["id"])
        if ours.equals(rows_of(start, start + shard.rows).table().drop_columns(["id"])):
            kept.append((start, shard))
    ends = [start + shard.rows for start, shard in kept]
    starts = [start for start, _ in kept[1:]] + [len(old)]
    return [
        (start, shard)
        for (start, shard), end, after in zip(kept, ends, starts)
        if shard.rows >= shard_rows or end == after
    ]


def finish_update(out: Path) -> Gallery | None:
    """Finish a staged update: update the saved indexes into it (if not yet done), move it in, drop `.partial/`.

    Returns None when `out` holds no staged update. Safe to call again after a crash at any point.
    """
    partial = out / ".partial"
    staged = partial / STAGED
    if not (staged / MANIFEST).is_file():
        return None
    manifest = Manifest.read(staged / MANIFEST)
    # the old gallery is still whole: install has not begun
    if manifest.update is not None and manifest.update.indexes is None:
        outcomes, held_out = index_follower().stage(open_gallery(out), open_gallery(staged))
        manifest = replace(manifest, update=replace(manifest.update, indexes=outcomes, held_out=held_out))
        write_manifest(staged, manifest)
    install_gallery(staged, out)
    gallery = open_gallery(out)
    index_follower().after(gallery)
    shutil.rmtree(partial, ignore_errors=True)
    return gallery


def describe_update(update: UpdateInfo) -> list[str]:
    """Lines for the CLI's summary."""
    lines = [
        f"updated from {update.base_count} rows: {update.reused} reused, {update.added} added, {update.changed}"
        f" changed, {update.removed} removed"
        + (f" ({update.hashed} files hashed because their size or mtime differed)" if update.hashed else ""),
        f"ids moved: {update.id_map} maps each previous id to its id now (−1: gone)",
        f"shards: {update.shards_written} written, {update.shards_kept} kept as they were",
    ]
    if update.held_out:
        lines.append(f"held-out queries: {update.held_out}")
    lines += [f"index {name}: {outcome}" for name, outcome in (update.indexes or {}).items()]
    return lines
