"""The gallery: one folder per (collection, model) of embeddings, metadata and a manifest.

`store` reads and writes that folder; `generated` writes galleries of generated vectors for
the experiments at sizes no image collection here reaches.
"""

from .manifest import SCHEMA_VERSION, DataInfo, Manifest, ModelInfo, UpdateInfo, Weights
from .store import (
    CACHE,
    CONTENT_HASH,
    EMBEDDINGS,
    FILE_MTIME,
    FILE_SIZE,
    ID_MAP,
    INDEXES,
    MANIFEST,
    MAX_HELD_OUT_QUERIES,
    METADATA,
    METADATA_SCHEMA,
    Gallery,
    Partition,
    Rows,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    clear_gallery,
    json_text,
    is_real,
    embeddings_digest,
    install_gallery,
    open_gallery,
    provenance_line,
    records_digest,
    write_gallery,
    write_manifest,
)

__all__ = [
    "CACHE", "CONTENT_HASH", "EMBEDDINGS", "FILE_MTIME", "FILE_SIZE", "ID_MAP", "INDEXES", "MANIFEST", "MAX_HELD_OUT_QUERIES", "METADATA", "METADATA_SCHEMA", "SCHEMA_VERSION",
    "Gallery", "Partition", "atomic_save_npy", "atomic_write_bytes", "atomic_write_json", "atomic_write_parquet",
    "clear_gallery", "is_real", "open_gallery", "provenance_line", "DataInfo", "Manifest", "ModelInfo", "Weights", "Rows", "UpdateInfo", "install_gallery",
    "embeddings_digest", "records_digest", "write_gallery", "write_manifest", "json_text",
]
