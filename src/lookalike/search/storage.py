"""Saved search methods inside a gallery folder: `indexes/<name>/`, stamped with the gallery and the rows they hold.

`save_method` writes an index atomically (a crash leaves the previous one whole); `load_method`
refuses an index of another gallery, a stale one, or one over other rows than asked;
`get_method` loads a saved index or builds the named method on the fly.

Which rows are searched (the database) is chosen by name, the same way everywhere:
    all      every row of the gallery: what `search`, the API and the server search by default
    heldout  the study's database: every row but the held-out queries (`Gallery.partition`) and their copies
An index records which of these it holds (`database` in method.json, beside the digest of its rows),
and is never searched as if it held the other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError, IndexMismatchError, IndexRowsError, IndexStaleError, LookalikeError
from ..gallery import INDEXES, Gallery
from .base import METHOD_FILE, SearchMethod
from .factory import METHOD_CLASSES, make_method, method_key
from .registry import METHODS
from .rerank import is_run, rows_view, steps_hold

DATABASES = ("all", "heldout")
DIGEST_BLOCK = 1 << 20  # ids hashed at once by `database_digest`
HELD_ROWS = {  # what an index's recorded `database` means, for messages
    "all": "every row of the gallery",
    "heldout": "the study's database, without its held-out queries",
    "other": "another selection of rows: another --queries or seed, or tune's",
}


def database_rows(gallery: Gallery, database: str = "all") -> np.ndarray:
    """The gallery ids searched under `database` ("all" or "heldout", see DATABASES), in ascending order."""
    if database == "all":
        return np.arange(gallery.count, dtype=np.int64)
    if database == "heldout":
        return gallery.partition().database_ids
    raise LookalikeError(
        f"unknown database {database!r}; use all (every row, the default) or heldout (the study's database: the"
        " held-out queries left out)"
    )


def database_label(gallery: Gallery, ids: np.ndarray) -> str:
    """Which named database `ids` are: "all", "heldout", or "other" (any other selection)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == gallery.count and (
        (is_run(ids) and ids[0] == 0) or database_digest(ids) == database_digest(np.arange(gallery.count))
    ):
        return "all"
    try:
        heldout = gallery.partition().database_ids
    except GalleryError:  # too few rows to hold any out
        return "other"
    return "heldout" if database_digest(ids) == database_digest(heldout) else "other"


def describe_database(gallery: Gallery, database: str = "all") -> str:
    """What is searched, in words, for the page and the CLI: every image, or which ones are left out and why."""
    if database == "all":
        return f"all {gallery.count} images"
    partition = gallery.partition()
    left_out = gallery.count - len(partition.database_ids)
    return (
        f"{len(partition.database_ids)} of {gallery.count} images: {left_out} left out as the study's held-out queries"
        f" ({partition.how}); --database all searches every image"
    )


def database_vectors(gallery: Gallery, ids: np.ndarray) -> np.ndarray:
    """The gallery's rows `ids`: a zero-copy memory-mapped view when they are one contiguous run
    (the train split always is), so a 1M-row database is never copied just to be indexed."""
    return rows_view(gallery.embeddings, ids)


def method_dir(gallery: Gallery, name: str, metric: str = "ip") -> Path:
    return gallery.path / INDEXES / (method_key(name) + ("" if metric == "ip" else f"-{metric}"))


def build_dir(gallery: Gallery, name: str, metric: str = "ip") -> Path:
    """Where a build out of core keeps its parts until the index is saved (hidden: never listed as an index)."""
    folder = method_dir(gallery, name, metric)
    return folder.with_name(f".{folder.name}.build")


def database_digest(ids: np.ndarray) -> str:
    """A digest of the set of gallery ids an index holds: two indexes over different rows never share one.

    Sorted first: an index updated in place holds its kept rows, then the added ones (a build
    holds them in ascending order, so digests saved before updates existed are unchanged). Ids
    already in order (every build's) are hashed as they are, a block at a time: no copy of the id
    map, which is 8 GB at 1B rows."""
    ids = np.asarray(ids, dtype=np.int64)
    ordered = ids if steps_hold(ids, lambda step: step >= 0) else np.sort(ids)
    digest = hashlib.sha256()
    for start in range(0, len(ordered), DIGEST_BLOCK):
        digest.update(np.ascontiguousarray(ordered[start : start + DIGEST_BLOCK]))
    return digest.hexdigest()[:32]


def save_method(gallery: Gallery, method: SearchMethod) -> Path:
    """Save under <gallery>/indexes/<name>/, stamped with the gallery fingerprint and the database rows it was built
    from."""
    folder = method_dir(gallery, method.name, method.metric)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(
        tmp,
        {
            "gallery_fingerprint": gallery.fingerprint,
            "model": gallery.model,
            "database_digest": database_digest(method.ids),
            "database": database_label(gallery, method.ids),
        },
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)  # a crash from here on leaves the previous index as .old, never half of one
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(build_dir(gallery, method.name, method.metric), ignore_errors=True)  # its parts are merged in
    return folder


def saved_methods(gallery: Gallery) -> list[str]:
    root = gallery.path / INDEXES
    return (
        sorted(
            p.name
            for p in root.iterdir()
            if (p / METHOD_FILE).is_file() and not p.name.endswith((".tmp", ".old")) and not p.name.startswith(".")
        )
        if root.is_dir()
        else []
    )


def load_method(
    gallery: Gallery, name: str, metric: str = "ip", database_ids: np.ndarray | None = None
) -> SearchMethod:
    """Load a saved method and check that it was built from this very gallery.

    With `database_ids`, also check that it holds exactly those rows: an index over every row
    holds the study's held-out queries, which would find themselves, and one over the held-out
    database hides those queries from a user who asked to search every image.
    """
    folder = method_dir(gallery, name, metric)
    if not (folder / METHOD_FILE).is_file():
        raise GalleryError(
            f"no saved index {name!r} in {gallery.path}; build it with `lookalike index --gallery {gallery.path}"
            f" --method {name}`"
        )
    info = json.loads((folder / METHOD_FILE).read_text())
    stale = info.get("stale") or stale_reason(gallery, info)
    if stale:
        again = info.get("name", name) if info.get("name") in METHODS else info.get("factory") or info.get("name", name)
        raise IndexStaleError(
            f"index {folder} is stale: {stale}; it is not searched — rebuild it with `lookalike index --gallery"
            f" {gallery.path} --method '{again}'`, or delete {folder}"
        )
    if info.get("gallery_fingerprint") != gallery.fingerprint or info.get("dim") != gallery.dim:
        raise IndexMismatchError(
            f"index {folder} was built from another gallery ({info.get('model')}, {info.get('dim')}-d) than"
            f" {gallery.path} ({gallery.model}, {gallery.dim}-d); rebuild it with `lookalike index --gallery"
            f" {gallery.path} --method {name}`"
        )
    if database_ids is not None and info.get("database_digest") != database_digest(database_ids):
        raise IndexRowsError(rows_mismatch(gallery, folder, name, info, database_ids))
    return METHOD_CLASSES[info["kind"]].load(folder, gallery.embeddings)


def rows_mismatch(gallery: Gallery, folder: Path, name: str, info: dict[str, Any], database_ids: np.ndarray) -> str:
    """Why a saved index is not searched here: it holds other rows than asked (say which, and how to fix it)."""
    held = info.get("database") or "other"  # indexes saved before lookalike recorded it: the digest tells them apart
    asked = database_label(gallery, database_ids)
    option = f" --database {asked}" if asked in DATABASES else ""
    again = name if info.get("name") in METHODS else info.get("params", {}).get("factory") or name
    instead = f", search it with --database {held}" if held in DATABASES else ""
    return (
        f"index {folder} holds {info.get('ntotal')} rows ({HELD_ROWS.get(held, held)}), not the {len(database_ids)}"
        f" rows searched here ({HELD_ROWS[asked]}), so it would hide some images or let queries find themselves;"
        f" rebuild it with `lookalike index --gallery {gallery.path} --method '{again}'{option}`{instead}, or delete"
        f" {folder} to search an index built on the fly"
    )


def held_rows(gallery: Gallery, name: str, metric: str = "ip") -> str | None:
    """The `database` a saved index records holding ("all", "heldout", "other"), or None when none is saved."""
    path = method_dir(gallery, name, metric) / METHOD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("database") or "other"


def stale_reason(gallery: Gallery, info: dict[str, Any]) -> str | None:
    """Why an index not yet marked stale is one: it was built on the gallery as it was before its last update."""
    update = gallery.manifest.update
    if update is not None and info.get("gallery_fingerprint") == update.base_fingerprint != gallery.fingerprint:
        return (
            f"it was built before `lookalike extract` updated the gallery ({update.added} added, {update.changed}"
            f" changed, {update.removed} removed) and was not updated with it"
        )
    return None


def get_method(
    gallery: Gallery, name: str, metric: str = "ip", database_ids: np.ndarray | None = None, **options: Any
) -> tuple[SearchMethod, bool]:
    """The saved method if there is one, else a freshly built one; the flag says whether it was built now.

    `database_ids` are the rows searched (default: every row, see `database_rows`). A saved method
    is used only if it holds exactly those rows; otherwise a named method is built afresh over
    them (a custom saved one, e.g. `tune`'s, is refused with IndexMismatchError saying why).
    """
    if database_ids is None:
        database_ids = database_rows(gallery, "all")
    folder = method_dir(gallery, name, metric)
    if name != "brute" and (folder / METHOD_FILE).is_file() and not options:
        try:
            return load_method(gallery, name, metric, database_ids), False
        except IndexMismatchError as mismatch:
            try:
                make_method(name, 1, gallery.dim, metric)
            except LookalikeError:
                raise mismatch from None  # not a method we can rebuild: the mismatch message says how
    method = make_method(name, len(database_ids), gallery.dim, metric, **options)
    method.build(database_vectors(gallery, database_ids), database_ids)
    return method, True
