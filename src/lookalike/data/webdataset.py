"""webdataset tar shards as an input form: `shards/{00000..00009}.tar`, one `.tar`, or a folder of them.

img2dataset writes image collections this way and clip-retrieval and Ray Data read them. A sample
is the tar members that share a key: the member name up to the first dot of its base name (the
webdataset convention, split as Ray's `read_webdataset` splits it). Its image is its jpg/jpeg/png/webp
member; a cls, txt or json member, in that order of preference, gives its label.

A sample's gallery path is `<shard>.tar#<key>`. Nothing is unpacked to disk: listing reads the tar
headers (and the few bytes of label members) and seeks past the images; `read_member` reads one
image back by its offset, which is what the extractors, the content hash and the server's
thumbnails do. A tar cut short keeps every sample whose image lies whole before the cut; the lost
tail is reported as a problem, like an unreadable file.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache

from ..errors import DataError
from .images import IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_SUFFIXES",
    "MEMBER_SEP",
    "Member",
    "ShardIndex",
    "expand_braces",
    "find_member",
    "find_shards",
    "index_shard",
    "is_member_path",
    "member_stat",
    "read_member",
    "shard_records",
    "split_member_path",
]

MEMBER_SEP = "#"  # `<shard>.tar#<key>`: the gallery path of a sample
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
LABEL_SUFFIXES = ("cls", "txt", "json")  # the first present gives the label
LABEL_BYTES = 4096  # a label member larger than this is a caption or metadata, not a label: only its start is read
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class Member:
    """Where an image member's bytes lie in its tar file."""

    name: str
    offset: int  # of the data, in bytes from the start of the tar file
    size: int


@dataclass(frozen=True)
class ShardIndex:
    """The samples of one tar shard, in tar order, as its headers describe them."""

    path: str  # absolute path of the tar file
    images: dict[str, Member]  # sample key → its image member
    labels: dict[str, str]  # sample key → label, for samples that have one
    problem: str | None  # why listing stopped before the end (a truncated or corrupt tail), else None
    size: int  # the tar file's size and mtime when indexed: a rewritten shard is indexed again
    mtime_ns: int


def expand_braces(pattern: str) -> list[str]:
    """`shards/{00000..00002}.tar` → the three names, zero-padding kept (the notation webdataset and img2dataset
    use)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") or len(first) == len(last) else 0
    lo, hi = int(first), int(last)
    if hi < lo:
        raise DataError(f"brace range {match.group(0)} in {pattern!r} counts down; write it as {{{last}..{first}}}")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for i in range(lo, hi + 1) for name in expand_braces(f"{head}{i:0{width}d}{tail}")]


def find_shards(source: str) -> list[str] | None:
    """The tar shards `source` names (brace pattern, one .tar file, or a folder holding .tar files), or None if it names
    none."""
    text = os.path.expanduser(source)
    if _BRACES.search(text):
        paths = [os.path.abspath(p) for p in expand_braces(text)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(paths)} shards named by {source!r} do not exist (first: {missing[0]});"
                " check the pattern"
            )
        return paths
    if os.path.isfile(text) and text.lower().endswith(".tar"):
        return [os.path.abspath(text)]
    if os.path.isdir(text):
        # A folder of shards holds shards only: a photo folder with a stray backup.tar stays a photo folder.
        with os.scandir(text) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        tars = sorted(os.path.abspath(e.path) for e in entries if e.name.lower().endswith(".tar") and e.is_file())
        if tars and not any(e.is_dir() or e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
            return tars
    return None


def is_member_path(path: str) -> bool:
    return split_member_path(path) is not None


def split_member_path(path: str) -> tuple[str, str] | None:
    """(`<shard>.tar`, key) for a sample's gallery path, None for an ordinary file path."""
    cut = path.lower().find(".tar" + MEMBER_SEP)
    if cut < 0:
        return None
    return path[: cut + 4], path[cut + 5 :]


def index_shard(path: str) -> ShardIndex:
    """The shard's samples; cached per process and file version, so every read after the first is one seek."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return ShardIndex(path, {}, {}, f"cannot read shard {path}: {exc.strerror or exc}", -1, -1)
    return _index(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _index(path: str, size: int, mtime_ns: int) -> ShardIndex:
    images: dict[str, Member] = {}
    label_members: dict[str, dict[str, Member]] = {}
    problem = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError as exc:
                    problem = (
                        f"shard {path} is truncated or corrupt after {len(images)} samples ({exc}); the rest of it is"
                        " lost"
                    )
                    break
                if info is None:
                    break
                if not info.isreg():
                    continue
                if info.offset_data + info.size > size:
                    problem = (
                        f"shard {path} is truncated inside member {info.name}; that sample and any after it are lost"
                    )
                    break
                key, suffix = _key_and_suffix(info.name)
                if key is None:
                    continue
                member = Member(info.name, info.offset_data, info.size)
                if suffix in IMAGE_SUFFIXES:
                    images.setdefault(key, member)
                elif suffix in LABEL_SUFFIXES:
                    label_members.setdefault(key, {}).setdefault(suffix, member)
    except (tarfile.ReadError, OSError, EOFError) as exc:
        return ShardIndex(
            path, {}, {}, f"cannot read shard {path} as a tar file ({exc}); remove or replace it", size, mtime_ns
        )
    labels = {}
    if label_members:
        with open(path, "rb") as fh:
            for key, members in label_members.items():
                if key in images:
                    label = _label(fh, members)
                    if label is not None:
                        labels[key] = label
    return ShardIndex(path, images, labels, problem, size, mtime_ns)


def _key_and_suffix(name: str) -> tuple[str | None, str]:
    """'a/b/000012.seg.jpg' → ('a/b/000012', 'seg.jpg'); the image and label suffixes compared are the last part,
    lower-cased."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None, ""
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.rsplit(".", 1)[-1].lower()


def _label(fh, members: dict[str, Member]) -> str | None:
    for suffix in LABEL_SUFFIXES:
        member = members.get(suffix)
        if member is None:
            continue
        fh.seek(member.offset)
        text = fh.read(min(member.size, LABEL_BYTES)).decode("utf-8", errors="replace").strip()
        if suffix == "json":
            try:
                obj = json.loads(text)
            except ValueError:
                continue
            value = obj.get("label", obj.get("cls")) if isinstance(obj, dict) else obj
            text = str(value).strip() if value is not None and not isinstance(value, (dict, list)) else ""
        if text:
            return text
    return None


def find_member(path: str) -> Member:
    """The image member of the sample at gallery path `<shard>.tar#<key>`; FileNotFoundError when there is none."""
    parts = split_member_path(path)
    if parts is None:
        raise FileNotFoundError(path)
    shard, key = parts
    member = index_shard(shard).images.get(key)
    if member is None:
        raise FileNotFoundError(f"{shard} has no image member for key {key!r}")
    return member


def read_member(path: str) -> bytes:
    """The image bytes of the sample at gallery path `<shard>.tar#<key>`; OSError when it cannot be read."""
    shard = split_member_path(path)[0] if is_member_path(path) else path
    member = find_member(path)
    with open(shard, "rb") as fh:
        fh.seek(member.offset)
        data = fh.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{shard} ends inside member {member.name}")
    return data


def member_stat(path: str) -> tuple[int, int]:
    """(size, mtime_ns) standing for a sample's file stat: its member's size and its shard's mtime (−1, −1: gone).

    Why the shard's mtime: tar writers often stamp every member alike, while any rewrite of the
    shard changes the shard's own mtime, so an update then confirms each sample by its content hash.
    """
    parts = split_member_path(path)
    if parts is None:
        return -1, -1
    index = index_shard(parts[0])
    member = index.images.get(parts[1])
    return (member.size, index.mtime_ns) if member is not None else (-1, -1)


def shard_records(shards: list[str]) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]]]:
    """(gallery path, label) of every sample with an image, in shard then tar order; and (shard, problem) for each
    damaged shard."""
    samples, problems = [], []
    for shard in shards:
        index = index_shard(shard)
        if index.problem:
            problems.append((shard, index.problem))
        samples.extend((f"{shard}{MEMBER_SEP}{key}", index.labels.get(key)) for key in index.images)
    return samples, problems


def shard_root(source: str, shards: list[str]) -> str:
    """What to record as the collection's root: the folder the shards share."""
    if os.path.isdir(os.path.expanduser(source)):
        return os.path.abspath(os.path.expanduser(source))
    return os.path.commonpath([os.path.dirname(s) for s in shards])
