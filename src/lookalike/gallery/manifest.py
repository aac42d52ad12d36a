"""`manifest.json` as a typed, frozen object: what made a gallery, and whether any of it is not real.

The gallery owns this format. Every reader goes through `Manifest`, never the raw dict, so a field
is renamed in one place and a random-weights or generated-data gallery can never be described as
real by a caller that forgot to look. `Manifest.from_dict` reads every manifest written so far
(schema 1, from before this class existed, schema 2, and schema 3, which lists the shards); `to_dict` writes
schema 3. Reading an older manifest is the one migration: a one-file gallery becomes one shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import GalleryError

SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
# the files of a gallery written before shards (schema ≤ 2), and of any gallery of one shard
ONE_FILE_EMBEDDINGS, ONE_FILE_METADATA = "embeddings.npy", "metadata.parquet"


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from; recorded in every output so random weights never pass as real."""

    kind: str  # "pretrained" | "random" | "file" | "none" (embeddings generated without a model)
    source: str
    sha256: str | None = None
    seed: int | None = None

    @property
    def is_trained(self) -> bool:
        return self.kind in ("pretrained", "file")

    def label(self, names_only: bool = False) -> str:
        """The one description of weights used by every output (CLI, report, server, tables).

        `names_only` names a weights file by its file name alone: the server never shows where it keeps its files."""
        if self.kind == "random":
            return f"RANDOM weights (seed {self.seed}) — not a trained model, rankings carry no learned meaning"
        if self.kind == "none":
            return "NO MODEL (no model — the embeddings were generated, not extracted from images)"
        if self.kind == "file":
            source = Path(self.source).name if names_only else self.source
            return f"weights from file {source} (sha256 {self.sha256[:12] if self.sha256 else '?'})"
        return f"pretrained weights ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One backend × precision as the calibration measured it on the job's own images."""

    backend: str  # "torch" | "openvino"
    precision: str  # "fp32" | "bf16" | "fp16"
    images_per_second: float | None = None
    cosine_min: float | None = None  # to fp32 torch, over the images the reference embedded (the first 4)
    cosine_mean: float | None = None
    images: int = 0  # how many images it embedded for the figures above
    kept: bool = False  # eligible: ran, and close enough to fp32 torch
    note: str = ""  # why not kept (unavailable, pruned as slower, cosine too low), or that it is the reference


@dataclass(frozen=True)
class Inference:
    """How the embeddings were computed: the backend and precision chosen, the alternatives measured, and the core
    split."""

    backend: str
    precision: str
    reason: str
    candidates: tuple[Candidate, ...] = ()
    threads: int | None = None  # inference threads
    decode_threads: int | None = None  # threads decoding images beside the model (manifests before 0.1: `workers`)
    # OpenVINO streams running batches side by side (its throughput mode); None: one (latency mode), or torch
    streams: int | None = None
    split: str = ""  # how inference and decode threads were decided
    decode_ms_per_image: float | None = None  # one core, measured on the calibration images
    model_ms_per_image: float | None = None  # the chosen backend, all inference threads
    batch_size: int | None = None  # images per model call (None: recorded before batches were measured)
    batching: str = ""  # how the batch size was decided (the sustained rates measured, or why none were)
    batch_rates: dict[str, float] | None = None  # sustained img/s by batch size, when measured
    decoder: str | None = None  # JPEG decoder: "simplejpeg" or "pil" (None: PIL, before simplejpeg)
    decoding: str = ""  # why that decoder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inference:
        known = {f.name for f in fields(cls)}
        d = {"decode_threads": d["workers"], **d} if "workers" in d else d  # its name in galleries written before
        values = {k: v for k, v in d.items() if k in known}
        values["candidates"] = tuple(
            Candidate(**{k: v for k, v in c.items() if k in {f.name for f in fields(Candidate)}})
            for c in d.get("candidates", ())
        )
        return cls(**values)

    def describe(self) -> str:
        return f"{self.backend} {self.precision} ({self.reason})"


@dataclass(frozen=True)
class ModelInfo:
    """The model that made the embeddings (`name` "generated" when none did)."""

    name: str
    dim: int
    weights: Weights
    arch: str | None = None
    family: str | None = None
    preprocess: dict[str, Any] | None = None  # embed.transforms.Preprocess as a dict
    # the summary of `inference` (backend, precision, reason), as manifests have always held it
    precision: dict[str, Any] = field(default_factory=lambda: {"precision": "fp32"})
    device: str | None = None
    inference: Inference | None = None  # always set once read: `from_dict` migrates manifests from before backends

    @property
    def precision_name(self) -> str:
        return self.inference.precision if self.inference else "fp32"

    @property
    def backend_name(self) -> str:
        return self.inference.backend if self.inference else "torch"

    @property
    def image_size(self) -> int | None:
        return None if not self.preprocess else int(self.preprocess["image_size"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = out.pop("name")  # the on-disk key since schema 1
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)} - {"name", "dim", "weights", "inference"}
        if d.get("inference"):
            inference = Inference.from_dict(d["inference"])
        else:  # the migration: galleries from before backends were embedded by torch at the recorded precision
            recorded = (d.get("precision") or {}).get("precision", "fp32")
            inference = Inference("torch", str(recorded), "recorded before lookalike chose backends by measurement")
        return cls(
            name=d["model"],
            dim=int(d["dim"]),
            weights=Weights(**{k: v for k, v in d["weights"].items() if k in ("kind", "source", "sha256", "seed")}),
            inference=inference,
            **{k: d[k] for k in known if d.get(k) is not None},
        )


@dataclass(frozen=True)
class DataInfo:
    """The collection the rows came from; `synthetic` is True when any row is not an embedding of a real image."""

    kind: str  # "tiny-imagenet" | "class-folders" | "list" | "arrays" | "generated"
    root: str | None = None
    synthetic: bool = False
    splits: dict[str, int] = field(default_factory=dict)
    generator: dict[str, Any] | None = None  # what generated the images or vectors, when something did
    summary: str | None = None  # one line naming real and SYNTHETIC row ranges (galleries written from arrays)
    extra: dict[str, Any] = field(default_factory=dict)  # everything else recorded (segments, counts, notes)

    def describe(self, names_only: bool = False) -> str:
        """One phrase naming the data; `names_only` names the collection folder by its last component."""
        if self.summary:
            return self.summary
        if self.synthetic:
            return f"GENERATED data ({self.kind} images drawn by lookalike.data.synthetic, not real photos)"
        return f"data: {self.kind} at {self.shown_root() if names_only else self.root}"

    def shown_path(self, path: str) -> str:
        """A row's `path` relative to this collection (see `shown_path`)."""
        return shown_path(path, self.root, self.kind == "list")

    def shown_root(self) -> str | None:
        """The collection folder's (or list file's) name without where it lies: what the server may show."""
        return Path(self.root).name or self.root if self.root else self.root

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        named = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            kind=d.get("kind") or "unknown",
            root=d.get("root"),
            synthetic=bool(d.get("synthetic")),
            splits=dict(d.get("splits") or {}),
            generator=d.get("generator"),
            summary=d.get("summary"),
            extra={k: v for k, v in d.items() if k not in named},
        )


@dataclass(frozen=True)
class UpdateInfo:
    """How `extract` updated this gallery from the one before it: what it reused, embedded and dropped.

    Ids are row positions, in the order a fresh extraction gives (split, then path), so they move
    when files before them come or go: `id_map` (a file in the gallery) maps every id of the
    gallery `base_fingerprint` to its id here, −1 where the row is gone (file removed, or re-embedded
    because its content changed).
    """

    base_fingerprint: str
    base_count: int
    reused: int  # rows carried over: same path, and same size and mtime or, failing that, same content hash
    added: int  # paths new to the gallery (previously unreadable files included), embedded
    changed: int  # paths whose content changed, embedded again
    removed: int  # rows whose file is no longer in the collection
    hashed: int  # files whose size or mtime differed, read to compare their content hash
    id_map: str = "id_map.npy"
    shards_kept: int = 0  # shards of the gallery before it linked as they were (their rows all unchanged)
    shards_written: int = 0  # shards written anew: the touched ones, and the new rows'
    # saved index → "updated in place …" / "rebuilt …" / "stale: …"; None until done
    indexes: dict[str, str] | None = None
    held_out: str | None = None  # how the held-out queries behaved across the update

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UpdateInfo:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a gallery: rows `first_id` … `first_id + rows − 1` as a memory-mappable (rows, d) float32 `.npy`
    and their metadata as Parquet, both files in the gallery folder."""

    embeddings: str
    metadata: str
    rows: int
    first_id: int
    digest: str | None = None  # sha256 of the shard's float32 rows; None for a gallery written before shards

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardInfo:
        return cls(str(d["embeddings"]), str(d["metadata"]), int(d["rows"]), int(d["first_id"]), d.get("digest"))


def one_file_shards(count: int) -> tuple[ShardInfo, ...]:
    """The shards of a gallery written before shards existed: its one embeddings.npy and metadata.parquet."""
    return (ShardInfo(ONE_FILE_EMBEDDINGS, ONE_FILE_METADATA, count, 0),)


def _migrated_extract(extract: dict[str, Any]) -> dict[str, Any]:
    """The extraction identity with today's names: the resumable unit was `shard_size` before gallery shards."""
    identity = extract.get("identity")
    if isinstance(identity, dict) and "shard_size" in identity:
        identity = {("chunk_size" if k == "shard_size" else k): v for k, v in identity.items()}
        return {**extract, "identity": identity}
    return extract


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` records. Written last, so its presence means the gallery is complete."""

    model: ModelInfo
    data: DataInfo
    count: int
    fingerprint: str  # identifies the content; saved indexes record it and refuse another gallery's
    created: str
    skipped: tuple[
        dict[str, Any], ...
    ] = ()  # {"path", "reason"[, "size", "mtime_ns"]} of every file that could not be decoded
    timings: dict[str, Any] = field(default_factory=dict)
    extract: dict[str, Any] = field(default_factory=dict)  # identity and records digest, for resume/refusal
    environment: dict[str, Any] = field(default_factory=dict)  # machine, threads, library versions
    update: UpdateInfo | None = None  # set when `extract` updated an earlier version of the gallery
    shards: tuple[ShardInfo, ...] = ()  # in id order; () only while a manifest is being built
    schema_version: int = SCHEMA_VERSION

    @property
    def weights(self) -> Weights:
        return self.model.weights

    @property
    def is_real(self) -> bool:
        """True only for trained weights on real images: anything else must be labelled wherever it is shown."""
        return self.weights.is_trained and not self.data.synthetic

    def describe(self, names_only: bool = False) -> str:
        """One line naming model, weights and data, printed beside every result; `names_only` for the server (folders
        by their names, not where they lie)."""
        return (
            f"{self.model.name} ({self.model.dim}-d) · {self.weights.label(names_only)} ·"
            f" {self.data.describe(names_only)} · {self.count} images"
        )

    def warnings(self) -> list[str]:
        """Plain statements of what is not real, for the page, the CLI and reports."""
        out = []
        if self.weights.kind == "random":
            out.append(
                "RANDOM weights: the model is untrained, so these rankings carry no learned meaning (fine for tests and"
                " timing only)."
            )
        if self.weights.kind == "none":
            out.append("GENERATED embeddings: no model made them, so only gallery ids can be queried (no uploads).")
        if self.data.synthetic:
            out.append(
                f"GENERATED data: {self.data.summary}."
                if self.data.summary
                else "GENERATED data: the images were drawn by lookalike.data.synthetic, they are not real photos."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "is_real": self.is_real,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "count": self.count,
            "fingerprint": self.fingerprint,
            "skipped": {"count": len(self.skipped), "files": list(self.skipped)},
            "timings": self.timings,
            "extract": self.extract,
            "environment": self.environment,
            **({"update": self.update.to_dict()} if self.update is not None else {}),
            "shards": [shard.to_dict() for shard in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        """Read any manifest written so far: schema 1 lacks `is_real` (derived), 1 and 2 the shards (one file)."""
        version = d.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise GalleryError(
                f"{where} has schema version {version}; this lookalike reads {', '.join(map(str, READABLE_SCHEMAS))}:"
                " re-extract the gallery or upgrade lookalike"
            )
        try:
            return cls(
                model=ModelInfo.from_dict(d["model"]),
                data=DataInfo.from_dict(d.get("data") or {}),
                count=int(d["count"]),
                fingerprint=str(d["fingerprint"]),
                created=str(d.get("created", "")),
                skipped=tuple((d.get("skipped") or {}).get("files", ())),
                timings=dict(d.get("timings") or {}),
                extract=_migrated_extract(dict(d.get("extract") or {})),
                environment=dict(d.get("environment") or {}),
                update=UpdateInfo.from_dict(d["update"]) if d.get("update") else None,
                shards=(
                    tuple(ShardInfo.from_dict(shard) for shard in d["shards"])
                    if version >= 3
                    else one_file_shards(int(d["count"]))
                ),
                schema_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(
                f"{where} is missing or has a malformed field ({type(exc).__name__}: {exc}); re-extract the gallery"
                " with --overwrite"
            ) from exc

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GalleryError(f"cannot read {path} ({exc}); re-extract with `lookalike extract --overwrite`") from exc
        if not isinstance(raw, dict):
            raise GalleryError(f"{path} is not a JSON object; re-extract with `lookalike extract --overwrite`")
        return cls.from_dict(raw, str(path))

    def with_timings(self, **timings: Any) -> Manifest:
        return replace(self, timings={**self.timings, **timings})


def shown_path(path: str, root: str | None, root_is_list_file: bool = False) -> str:
    """`path` relative to the collection root (the folder of a list file); the file name when outside it.

    The server's answers and the study's reports name images without revealing where the files
    lie; rows written from arrays ("synthetic:…") and paths that are already relative are never
    absolute, and are shown as they are.
    """
    if not os.path.isabs(path):
        return path
    base = os.path.dirname(root) if root and root_is_list_file else root
    if base:
        try:
            return Path(path).relative_to(base).as_posix()
        except ValueError:
            pass
    return Path(path).name
