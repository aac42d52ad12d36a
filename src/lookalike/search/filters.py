"""Filtered search: the gallery rows a `where` keeps — by label, split, path glob, file mtime range or id list.

`Where` is parsed once from the API's dict (`gallery.search(q, where={"label": "cat", "split": "val"})`)
or the CLI's `--where label=cat --where path='*/2024/*'` (conditions combine with AND; a list of
values within one condition is an OR), and `Where.rows(gallery)` gives the matching gallery ids,
computed column by column with Arrow over the metadata. Methods then search only those rows
(`SearchMethod.search_within`): FAISS indexes through an IDSelector in their SearchParameters, exact
methods over the matching rows alone, so they return the true top k among them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import LookalikeError

if TYPE_CHECKING:
    from ..gallery import Gallery

KEYS = ("label", "split", "path", "mtime", "ids")


class FilterError(LookalikeError):
    """A `where` that is malformed, or that no row of the gallery matches."""


@dataclass(frozen=True)
class Where:
    """Which rows to search: every condition given must hold (AND); within `label` or `split`, any value (OR)."""

    label: tuple[str, ...] = ()  # a row's label or its label name
    split: tuple[str, ...] = ()
    path: str | None = None  # a glob over the path as stored ("*/holidays/*", "*.png")
    mtime: tuple[float | None, float | None] | None = None  # seconds since the epoch, inclusive; None: open
    ids: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, where: Mapping[str, Any] | Where | None) -> Where | None:
        """The API's form: {"label": "cat" or [...], "split": …, "path": "glob", "mtime": (lo, hi), "ids": [...]}."""
        if where is None or isinstance(where, Where):
            return where
        if not isinstance(where, Mapping):
            raise FilterError(
                f"where is a dict such as {{'label': 'cat', 'split': 'val'}}, not a {type(where).__name__}"
            )
        unknown = sorted(set(where) - set(KEYS))
        if unknown:
            raise FilterError(f"where has no condition {unknown[0]!r}; use {', '.join(KEYS)}")
        return cls(
            label=_strings("label", where.get("label")),
            split=_strings("split", where.get("split")),
            path=_glob(where.get("path")),
            mtime=_range(where.get("mtime")),
            ids=_ids(where.get("ids")),
        )

    @classmethod
    def from_cli(cls, items: Sequence[str]) -> Where | None:
        """`--where KEY=VALUE`, repeatable: label=a,b  split=val  path=GLOB  mtime=LO..HI (dates or epoch seconds)
        ids=1,2,3."""
        if not items:
            return None
        found: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise FilterError(f"--where takes KEY=VALUE with KEY one of {', '.join(KEYS)}; got {item!r}")
            key = key.strip()
            if key in ("label", "split", "ids"):
                values = [v.strip() for v in value.split(",") if v.strip()]
                found[key] = [*found.get(key, []), *values]
            elif key == "mtime":
                lo, dots, hi = value.partition("..")
                if not dots:
                    raise FilterError(f"--where mtime=LO..HI (either may be empty), e.g. 2024-01-01..; got {value!r}")
                found[key] = (lo or None, hi or None)
            else:
                found[key] = value
        return cls.parse(found)

    def describe(self) -> str:
        parts = []
        if self.label:
            parts.append(f"label in {list(self.label)}")
        if self.split:
            parts.append(f"split in {list(self.split)}")
        if self.path:
            parts.append(f"path like {self.path!r}")
        if self.mtime:
            lo, hi = (
                datetime.fromtimestamp(t).isoformat(timespec="seconds") if t is not None else "…" for t in self.mtime
            )
            parts.append(f"mtime {lo} to {hi}")
        if self.ids is not None:
            parts.append(f"{len(self.ids)} ids")
        return " and ".join(parts) or "every row"

    def rows(self, gallery: Gallery) -> np.ndarray:
        """The sorted gallery ids every condition keeps; FilterError when none does."""
        meta = gallery.metadata
        keep = pa.array(np.ones(gallery.count, dtype=bool))
        if self.label:
            wanted = pa.array(self.label, pa.string())
            by_label = pc.is_in(meta.column("label"), value_set=wanted)
            by_name = pc.is_in(meta.column("label_name"), value_set=wanted)
            keep = pc.and_(keep, pc.fill_null(pc.or_(by_label, by_name), False))
        if self.split:
            keep = pc.and_(keep, pc.fill_null(pc.is_in(meta.column("split"), value_set=pa.array(self.split)), False))
        if self.path:
            pattern = glob_regex(self.path)
            keep = pc.and_(keep, pc.fill_null(pc.match_substring_regex(meta.column("path"), pattern), False))
        if self.mtime:
            if "mtime_ns" not in meta.column_names:
                raise FilterError(
                    "this gallery records no file times (it was extracted before they were kept, or from arrays);"
                    " filter by label, split, path or ids instead"
                )
            lo, hi = self.mtime
            mtime = meta.column("mtime_ns")
            if lo is not None:
                keep = pc.and_(keep, pc.fill_null(pc.greater_equal(mtime, int(lo * 1e9)), False))
            if hi is not None:
                keep = pc.and_(keep, pc.fill_null(pc.less_equal(mtime, int(hi * 1e9)), False))
        rows = np.flatnonzero(np.asarray(keep, dtype=bool))
        if self.ids is not None:
            rows = np.intersect1d(rows, np.asarray(self.ids, dtype=np.int64))
        if not len(rows):
            raise FilterError(f"no image of this gallery matches the filter ({self.describe()}); loosen it")
        return rows.astype(np.int64)


def glob_regex(glob: str) -> str:
    """A shell glob as a whole-string regular expression Arrow's RE2 runs (`fnmatch.translate` uses atomic groups RE2
    lacks): `*` any characters ("/" too, as fnmatch), `?` one, `[…]` a class; everything else literal."""
    out, i = ["^"], 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in glob[i + 2 :] or char == "[" and glob[i + 1 : i + 2] == "]":
            end = glob.index("]", i + 2)
            body = glob[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out) + "$"


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if values is None or not all(isinstance(v, str) and v for v in values):
        raise FilterError(f"where[{name!r}] is a string or a list of strings, got {value!r}")
    return tuple(values)


def _glob(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FilterError(f"where['path'] is a glob such as '*/holidays/*.jpg', got {value!r}")
    return value


def _time(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    raise FilterError(f"a time in where['mtime'] is seconds since the epoch or an ISO date (2024-06-30), got {value!r}")


def _range(value: Any) -> tuple[float | None, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise FilterError(f"where['mtime'] is a pair (from, to), either None, got {value!r}")
    lo, hi = _time(value[0]), _time(value[1])
    if lo is not None and hi is not None and lo > hi:
        raise FilterError(f"where['mtime'] runs from {value[0]} to {value[1]}: the start is after the end")
    return lo, hi


def _ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        ids = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise FilterError(f"where['ids'] is a list of gallery ids, got {value!r}") from None
    return ids
