"""Saved indexes that follow a gallery update: updated in place, rebuilt, or marked stale.

`lookalike extract` updating a gallery writes the new gallery aside (embed.incremental) and calls
`stage_indexes` to write an updated copy of each saved index next to it, before anything is moved
in. Each index keeps holding the rows it recorded (`database` in method.json: every row, or the
study's held-out database): rows whose file went or changed (or, in the held-out database, that
became a held-out query) are dropped and the new rows of its database are added:

    brute, exact-lowp, flat, sq8/sqfp16   in place (their rows are the gallery's, or flat codes)
    IVF families (ivf, IVF…,PQ…, ivfpq-mmap)   in place: `remove_ids`, then `add`; the coarse quantiser
                                       is not retrained, so rebuild after the collection has changed much
    hnsw, usearch, hnswlib             new rows join the graph in place; with removals, rebuilt
    anything else (ivfpq's refine, OPQ)  with removals, marked stale

A stale index keeps its files but its `method.json` says why; `load_method` refuses it (the CLI's
search, the API and the server alike) with the `lookalike index` command that rebuilds it, so an
old index is never searched against the new gallery.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import GalleryError
from ..fileio import atomic_write_json
from ..gallery import INDEXES, Gallery, IndexFollower, Partition, follow_indexes_with
from ..runtime import as_float32_c
from .base import IDS_FILE, METHOD_FILE
from .factory import METHOD_CLASSES
from .storage import database_digest, database_vectors, save_method, saved_methods


def stage_indexes(old: Gallery, new: Gallery) -> tuple[dict[str, str], str]:
    """Write an updated copy of each of `old`'s saved indexes into `new` (the staged gallery); return each one's outcome
    and a note on the held-out queries."""
    id_map = np.load(new.path / new.manifest.update.id_map)
    try:
        before, after = old.partition(), new.partition()
        held_out = held_out_note(before, after, id_map)
    except GalleryError as exc:  # too few rows to hold any out: only the indexes over every row can follow
        before = after = None
        held_out = str(exc)
    outcomes = {}
    for name in saved_methods(old):
        started = time.perf_counter()
        try:
            outcome = _stage_one(old, new, name, id_map, before, after, held_out)
        except Exception as exc:  # noqa: BLE001 - an index that cannot follow is marked stale, the update itself goes on
            outcome = f"stale: updating it failed ({type(exc).__name__}: {exc})"
        outcomes[name] = (
            outcome if outcome.startswith("stale") else f"{outcome} in {time.perf_counter() - started:.2f} s"
        )
    return outcomes, held_out


def _rows_held(
    old: Gallery, new: Gallery, held: str, before: Partition | None, after: Partition | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows an index of database `held` holds before the update and should hold after it; None when unknown."""
    if held == "all":
        return np.arange(old.count, dtype=np.int64), np.arange(new.count, dtype=np.int64)
    if held == "heldout" and before is not None and after is not None:
        return before.database_ids, after.database_ids
    return None


def _stage_one(
    old: Gallery,
    new: Gallery,
    name: str,
    id_map: np.ndarray,
    before: Partition | None,
    after: Partition | None,
    held_out: str,
) -> str:
    folder = old.path / INDEXES / name
    info = json.loads((folder / METHOD_FILE).read_text())
    if info.get("stale"):
        return f"stale: {info['stale']}"
    if info.get("gallery_fingerprint") != old.fingerprint:
        return "stale: it was built for another version of the gallery before this update"
    old_ids = np.load(folder / IDS_FILE)
    held = info.get("database", "heldout")  # indexes saved before lookalike recorded it held the held-out database
    rows = _rows_held(old, new, held, before, after)
    if held == "heldout" and rows is None:
        return f"stale: {held_out}"
    if rows is None or info.get("database_digest") != database_digest(rows[0]):
        return "stale: it holds another held-out sample's database rows (built with --queries or a seed of its own)"
    database = rows[1]
    mapped = id_map[old_ids]
    keep = (mapped >= 0) & np.isin(mapped, database)
    added = np.setdiff1d(database, mapped[keep])
    method = METHOD_CLASSES[info["kind"]].load(folder, old.embeddings)
    if method.apply_update(
        keep, as_float32_c(np.asarray(new.embeddings[added])) if len(added) else np.zeros((0, new.dim), np.float32)
    ):
        method.ids = np.concatenate([mapped[keep], added]).astype(np.int64)
        outcome = f"updated in place (−{int((~keep).sum())} +{len(added)} rows)"
    else:
        rebuilt = method.fresh()
        if rebuilt is None:
            return (
                f"stale: {info['kind']} {info.get('params', {}).get('factory', '')} cannot drop rows in place".replace(
                    "  ", " "
                )
            )
        rebuilt.build(database_vectors(new, database), database)
        method = rebuilt
        outcome = f"rebuilt ({int((~keep).sum())} rows removed)"
    save_method(new, method)
    return outcome


def held_out_note(before: Partition, after: Partition, id_map: np.ndarray) -> str:
    """Whether the held-out queries moved: rows kept by the update that changed sides between queries and database."""
    was_query = np.zeros(len(id_map), dtype=bool)
    was_query[before.query_ids] = True
    kept = np.flatnonzero(id_map >= 0)
    now_query = np.isin(id_map[kept], after.query_ids)
    moved = int((was_query[kept] != now_query).sum())
    if not moved:
        return f"stable: no kept row changed sides ({len(after.query_ids)} queries, {after.how})"
    return f"{moved} kept rows changed sides between queries and database (the held-out sample's cap: {after.how})"


def mark_stale_indexes(gallery: Gallery) -> list[str]:
    """Write into `method.json` of each index the update could not follow why it is stale (idempotent); returns their
    names."""
    update = gallery.manifest.update
    marked = []
    for name, outcome in ((update.indexes or {}) if update is not None else {}).items():
        path = Path(gallery.path) / INDEXES / name / METHOD_FILE
        if not outcome.startswith("stale") or not path.is_file():
            continue
        info = json.loads(path.read_text())
        if not info.get("stale"):
            info["stale"] = outcome.removeprefix("stale: ")
            atomic_write_json(path, info)
        marked.append(name)
    return marked


follow_indexes_with(IndexFollower(stage_indexes, mark_stale_indexes))
