"""What `lookalike study` remembers between runs: the state file, the fingerprints that key each step, and results
read back from their JSON files.

Why a state file: a rerun must know which steps finished and on which inputs, without measuring
anything again. Each finished unit (one step for one model) records the key it ran under (a hash of
its configuration and of its inputs' fingerprints) and the fingerprint of what it produced; a unit
whose key is unchanged and whose files are still there is skipped. The file is rewritten atomically
after every unit, so a failure or Ctrl-C keeps everything finished.

Why results are read back from JSON rather than pickled: the experiments already write strict JSON
(bench.json, tradeoff.json, …) that people and other tools read; `from_dict` rebuilds the typed
result from it, so the report of a resumed study is built from exactly the files it links to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import LookalikeError
from ..fileio import atomic_write_json, json_text

STATE_FILE = "study.json"
STATE_VERSION = 1


class StudyError(LookalikeError):
    """A study that cannot start or go on; the message is one sentence for the user."""


@dataclass(frozen=True)
class UnitRecord:
    """One finished unit of work: the key it ran under, what it produced, and its files (relative to --out)."""

    unit: str  # "extract resnet18", "report"
    key: str  # hash of the unit's configuration and its inputs' fingerprints
    output: str  # fingerprint of what it produced (a gallery's content fingerprint, a result file's sha256)
    files: tuple[str, ...]
    seconds: float
    finished: str  # ISO time, UTC


@dataclass(frozen=True)
class StudyState:
    """The study an --out folder holds: its identity (data source and weights) and its finished units."""

    source: str  # "tiny-imagenet", "demo" or the data folder's absolute path
    weights: str  # pretrained, random, or a weights file's absolute path
    models: tuple[str, ...]  # the models of the last run (others' finished units are kept)
    units: dict[str, UnitRecord] = field(default_factory=dict)
    version: int = STATE_VERSION
    created: str = ""

    def done(self, unit: str, out: Path) -> UnitRecord | None:
        """The unit's record when it finished and its files are all still there."""
        record = self.units.get(unit)
        if record is None or not all((out / f).exists() for f in record.files):
            return None
        return record

    def with_unit(self, record: UnitRecord) -> StudyState:
        return dataclasses.replace(self, units={**self.units, record.unit: record})


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_state(out: Path) -> StudyState | None:
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        return from_dict(StudyState, json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise StudyError(
            f"{path} is not a study state file lookalike can read ({exc}); move it away to start the study afresh"
        ) from None


def write_state(out: Path, state: StudyState) -> None:
    atomic_write_json(out / STATE_FILE, dataclasses.asdict(state))


# --- fingerprints ---


def key_of(*parts: Any) -> str:
    """A stable hash of JSON-able parts: the key a unit runs under."""
    return hashlib.sha256(json_text(list(parts), indent=None, sort_keys=True).encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def files_sha256(out: Path, files: Sequence[str]) -> str:
    return key_of(*(file_sha256(out / f) for f in files))


# --- typed results from their JSON files ---


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild dataclass `cls` from `asdict`-shaped JSON, following its type hints (nested dataclasses, lists,
    tuples, dicts, X | None); keys that are not fields (derived values a writer added) are ignored, and null in a
    float field is NaN again (the strict JSON writer wrote NaN as null)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})


def load_result(cls: type, path: Path) -> Any:
    return from_dict(cls, json.loads(Path(path).read_text()))


def _convert(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        arms = [a for a in args if a is not type(None)]
        return _convert(arms[0], value) if len(arms) == 1 else value
    if tp is float:
        return float("nan") if value is None else float(value)
    if value is None or tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin in (list, Sequence, typing.Sequence):
        return [_convert(args[0], v) for v in value] if args else list(value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()} if args else dict(value)
    return value
