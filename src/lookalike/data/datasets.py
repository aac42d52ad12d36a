"""Reading image collections: tiny-ImageNet-200, class-folder trees, list files and webdataset tar shards.

`load_collection` looks at what the user gave and finds the image paths and labels without
opening any image, so listing 100k files takes a fraction of a second. Decoding, and
reporting unreadable files, is the extractor's job (see `lookalike.data.images`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lookalike.data.images import is_image_path
from lookalike.data.webdataset import find_shards, member_stat, shard_records, shard_root
from lookalike.errors import DataError

__all__ = [
    "SPLITS",
    "KINDS",
    "SYNTHETIC_MARKER",
    "ImageRecord",
    "Collection",
    "load_collection",
    "file_stat",
]

#: Every split a record can belong to, in the order records are sorted.
SPLITS = ("train", "val", "test", "gallery")

#: The forms `load_collection` recognises, as stored in `Collection.kind`.
KINDS = ("tiny-imagenet", "class-folders", "list", "webdataset")

#: File written at a collection's root by `lookalike.data.synthetic`.
SYNTHETIC_MARKER = "SYNTHETIC.json"

_TINY_DIRNAME = "tiny-imagenet-200"
_SPLIT_ORDER = {name: i for i, name in enumerate(SPLITS)}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a collection; `path` may not exist for list files (the extractor reports it)."""

    path: str  # absolute, normalised path
    label: str | None  # class id (e.g. wnid "n01443537"); None when unknown
    split: str  # "train" | "val" | "test" | "gallery"
    label_name: str | None = None  # human name (from words.txt), else None


@dataclass(frozen=True)
class Collection:
    """The records of one collection, plus where they came from."""

    root: str  # absolute path of what the user gave
    kind: str  # "tiny-imagenet" | "class-folders" | "list" | "webdataset"
    records: tuple[ImageRecord, ...]  # sorted: split order train, val, test, gallery; then path
    synthetic: dict | None  # content of SYNTHETIC.json when made by lookalike.data.synthetic, else None
    problems: tuple[
        tuple[str, str], ...
    ] = ()  # (path, reason) of inputs that lost images while listing (a truncated tar)

    def __len__(self) -> int:
        return len(self.records)

    def split_counts(self) -> dict[str, int]:
        """Number of records per split, in SPLITS order, leaving out empty splits."""
        counts = Counter(r.split for r in self.records)
        return {s: counts[s] for s in SPLITS if counts[s]}

    def provenance(self) -> dict:
        """A JSON-ready summary to store next to results, so a reader knows what was indexed."""
        return {
            "kind": self.kind,
            "root": self.root,
            "count": len(self.records),
            "synthetic": self.synthetic is not None,
            "generator": dict(self.synthetic) if self.synthetic is not None else None,
            "splits": self.split_counts(),
        }


def load_collection(source: str | os.PathLike, splits: Sequence[str] | None = None) -> Collection:
    """List the images of a collection, auto-detecting its form.

    `source` is a tiny-ImageNet-200 folder (or the folder holding `tiny-imagenet-200/`), a
    folder of class folders, a text file with one image path per line, or webdataset tar shards
    (`shards/{00000..00009}.tar`, one .tar, or a folder of .tar files; see lookalike.data.webdataset).
    `splits` keeps only those splits (e.g. ["train", "val"]); asking for a split with no images is an error.
    """
    wanted = _check_splits(splits)
    shards = find_shards(os.fspath(source))
    if shards is not None:
        return _webdataset_collection(os.fspath(source), shards, wanted)
    given = Path(os.path.expanduser(os.fspath(source)))
    root = os.path.abspath(given)
    if not given.exists():
        raise DataError(
            f"{root} does not exist; pass a tiny-ImageNet-200 folder, a folder of class folders "
            "or a text file listing image paths"
        )

    if given.is_dir():
        tiny = _find_tiny_root(given)
        if tiny is not None:
            kind, records, marker_dir = "tiny-imagenet", _tiny_records(tiny, wanted), tiny
        else:
            kind, records, marker_dir = "class-folders", _class_folder_records(given, wanted), given
    else:
        entries = _list_entries(given)
        if not entries:
            raise DataError(f"list file {root} names no images; put one image path per line in it")
        kind, records, marker_dir = "list", _list_records(given, entries, wanted), given.parent

    if not records:
        if kind == "list" or (wanted is not None and _has_any_image(given, kind)):
            raise DataError(
                f"{root} has no images in split(s) {', '.join(sorted(wanted or ()))}; "
                f"it is a {kind} collection, so ask for split(s) it has or drop the splits filter"
            )
        raise DataError(
            f"no images found under {root}: expected tiny-ImageNet layout (train/<wnid>/images), "
            "class folders (<class>/*.jpg) or a text file listing image paths"
        )

    records.sort(key=lambda r: (_SPLIT_ORDER[r.split], r.path))
    return Collection(
        root=root,
        kind=kind,
        records=tuple(records),
        synthetic=_read_marker(Path(marker_dir)),
    )


def file_stat(path: str) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a record's image, taken before it is read; (−1, −1) when it is gone.

    An update compares them with the gallery's to skip unchanged files without reading them.
    """
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return member_stat(path)


def _check_splits(splits: Sequence[str] | None) -> frozenset[str] | None:
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    unknown = [s for s in splits if s not in _SPLIT_ORDER]
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    return frozenset(splits)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _image_files(folder: str | os.PathLike) -> Iterator[str]:
    """Absolute paths of the visible image files directly inside `folder` (no recursion)."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if _visible(entry.name) and is_image_path(entry.name) and entry.is_file():
                    yield os.path.abspath(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return


def _subdirs(folder: str | os.PathLike) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(
                (e for e in it if _visible(e.name) and e.is_dir()),
                key=lambda e: e.name,
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _walk_images(folder: str | os.PathLike) -> Iterator[str]:
    """Image files anywhere below `folder`, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        for name in filenames:
            if _visible(name) and is_image_path(name):
                yield os.path.abspath(os.path.join(dirpath, name))


# --- tiny-ImageNet-200 -----------------------------------------------------------------


def _looks_tiny(folder: Path) -> bool:
    if (folder / "wnids.txt").is_file():
        return True
    return any((Path(d.path) / "images").is_dir() for d in _subdirs(folder / "train"))


def _find_tiny_root(folder: Path) -> Path | None:
    """The tiny-ImageNet root: `folder` itself, or its `tiny-imagenet-200/` child."""
    if _looks_tiny(folder):
        return folder
    child = folder / _TINY_DIRNAME
    if child.is_dir() and _looks_tiny(child):
        return child
    return None


def _read_words(path: Path) -> dict[str, str]:
    """wnid -> first human name, from words.txt ("n01443537<TAB>goldfish, Carassius auratus")."""
    names: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return names
    for line in text.splitlines():
        wnid, sep, words = line.partition("\t")
        first = words.split(",")[0].strip()
        if sep and wnid.strip() and first:
            names[wnid.strip()] = first
    return names


def _read_val_annotations(path: Path) -> dict[str, str]:
    """file name -> wnid, from val_annotations.txt (filename, wnid, x0, y0, x1, y1; tab-separated)."""
    labels: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return labels
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].strip() and fields[1].strip():
            labels[fields[0].strip()] = fields[1].strip()
    return labels


def _tiny_records(root: Path, wanted: frozenset[str] | None) -> list[ImageRecord]:
    words = _read_words(root / "words.txt")
    records: list[ImageRecord] = []

    def add(path: str, label: str | None, split: str) -> None:
        records.append(ImageRecord(path, label, split, words.get(label) if label else None))

    if wanted is None or "train" in wanted:
        for class_dir in _subdirs(root / "train"):
            images = Path(class_dir.path) / "images"
            # Real tiny-ImageNet keeps images in train/<wnid>/images; accept them one level up too.
            for path in _image_files(images if images.is_dir() else class_dir.path):
                add(path, class_dir.name, "train")

    if wanted is None or "val" in wanted:
        val = root / "val"
        annotations = _read_val_annotations(val / "val_annotations.txt")
        for path in _image_files(val / "images"):
            add(path, annotations.get(os.path.basename(path)), "val")
        # Some users regroup val into val/<wnid>/(images/); the folder then gives the label.
        for class_dir in _subdirs(val):
            if class_dir.name != "images":
                for path in _walk_images(class_dir.path):
                    add(path, class_dir.name, "val")

    if wanted is None or "test" in wanted:
        for path in _walk_images(root / "test"):
            add(path, None, "test")
    return records


# --- class folders --------------------------------------------------------------------


def _class_folder_records(root: Path, wanted: frozenset[str] | None) -> list[ImageRecord]:
    if wanted is not None and "gallery" not in wanted:
        return []
    records = [ImageRecord(p, None, "gallery") for p in _image_files(root)]
    for class_dir in _subdirs(root):
        records.extend(ImageRecord(p, class_dir.name, "gallery") for p in _walk_images(class_dir.path))
    return records


def _has_any_image(folder: Path, kind: str) -> bool:
    """Whether an unfiltered load would find images (to word the split-filter error)."""
    if kind == "tiny-imagenet":
        tiny = _find_tiny_root(folder)
        return tiny is not None and bool(_tiny_records(tiny, None))
    return bool(_class_folder_records(folder, None))


# --- list files -----------------------------------------------------------------------


def _list_entries(path: Path) -> list[tuple[str, str | None]]:
    """(path as written, label or None) for each non-blank, non-comment line."""
    if is_image_path(path.name):
        raise DataError(
            f"{os.path.abspath(path)} is an image, not a folder or list file; "
            "pass the folder that contains it or a text file listing image paths"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"cannot read list file {os.path.abspath(path)} as UTF-8 text ({exc.reason}); "
            "pass a text file with one image path per line"
        ) from exc
    except OSError as exc:
        raise DataError(
            f"cannot read list file {os.path.abspath(path)} ({exc.strerror or exc}); check its permissions"
        ) from exc
    entries = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        first, _, rest = stripped.partition("\t")
        entries.append((first.strip(), rest.split("\t")[0].strip() or None))
    return entries


def _list_records(
    path: Path, entries: list[tuple[str, str | None]], wanted: frozenset[str] | None
) -> list[ImageRecord]:
    """Gallery records for a list file; relative paths are resolved against its folder."""
    base = os.path.dirname(os.path.abspath(path))
    if wanted is not None and "gallery" not in wanted:
        return []
    seen: set[str] = set()
    records = []
    for written, label in entries:
        full = os.path.abspath(os.path.join(base, os.path.expanduser(written)))
        if full in seen:  # the same image twice would show up twice in every result list
            continue
        seen.add(full)
        records.append(ImageRecord(full, label, "gallery"))
    return records


# --- webdataset shards -----------------------------------------------------------------


def _webdataset_collection(source: str, shards: list[str], wanted: frozenset[str] | None) -> Collection:
    """Samples of tar shards, as gallery-split records `<shard>.tar#<key>` (the image bytes stay in the tar)."""
    root = shard_root(source, shards)
    if wanted is not None and "gallery" not in wanted:
        raise DataError(f"webdataset shards under {root} have only the gallery split; drop the splits filter")
    samples, problems = shard_records(shards)
    if not samples:
        detail = f" ({problems[0][1]})" if problems else ""
        raise DataError(f"no sample with a jpg, png or webp member in the {len(shards)} shard(s) under {root}{detail}")
    records = sorted((ImageRecord(path, label, "gallery") for path, label in samples), key=lambda r: r.path)
    return Collection(
        root=root,
        kind="webdataset",
        records=tuple(records),
        synthetic=_read_marker(Path(root)),
        problems=tuple(problems),
    )


# --- provenance -----------------------------------------------------------------------


def _read_marker(folder: Path) -> dict | None:
    """The generator's SYNTHETIC.json content, or None for real (or unmarked) data."""
    try:
        data = json.loads((folder / SYNTHETIC_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("generator") == "lookalike.synthetic":
        return data
    return None
