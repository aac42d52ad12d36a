"""The Ray engine's shard writer: one light actor that assembles each shard's batches and writes the shard once whole.

Kept apart from the pipeline (`distributed.extract`) so that its actor imports numpy and fsspec, not torch.
"""

from __future__ import annotations

import json

import numpy as np

from ..embed.chunks import Shard, encode_shard
from .staging import ShardStore


class ShardWriter:
    """Collects the batches of each shard and writes the shard once all have arrived.

    Its buffer is lost if it dies; those shards are then missing after the pass and the
    driver runs them again. Writing is idempotent, so a shard written twice is harmless.
    """

    def __init__(self, store: ShardStore, shards: dict[int, Shard], dim: int):
        self.store = store
        self.shards = shards
        self.dim = dim
        self.pending: dict[int, dict[int, dict]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        number, part = int(batch["shard"][0]), int(batch["batch"][0])
        parts = self.pending.setdefault(number, {})
        parts[part] = {  # keyed by batch: a batch delivered twice (a retried task) counts once
            "indices": np.asarray(batch["indices"][0], dtype=np.int64).reshape(-1),
            "embeddings": np.asarray(batch["embeddings"][0], dtype=np.float32).reshape(-1, self.dim),
            "bad": [(int(i), str(r)) for i, r in json.loads(str(batch["bad"][0]))],
            "hashes": [str(h) for h in json.loads(str(batch["hashes"][0]))] if "hashes" in batch else None,
            "dimensions": (
                [tuple(wh) for wh in json.loads(str(batch["dimensions"][0]))] if "dimensions" in batch else None
            ),
            "seconds": float(batch["seconds"][0]),
        }
        written = -1
        if len(parts) == int(batch["batches"][0]):
            self._write(self.shards[number], self.pending.pop(number))
            written = number
        images = len(parts[part]["indices"]) + len(parts[part]["bad"])
        return {"images": np.array([images]), "written": np.array([written])}

    def _write(self, shard: Shard, parts: dict[int, dict]) -> None:
        ordered = [parts[j] for j in sorted(parts)]
        embeddings = np.concatenate([p["embeddings"] for p in ordered])
        indices = np.concatenate([p["indices"] for p in ordered]).tolist()
        bad = [item for p in ordered for item in p["bad"]]
        hashes = None if any(p["hashes"] is None for p in ordered) else [h for p in ordered for h in p["hashes"]]
        dims = None if any(p["dimensions"] is None for p in ordered) else [d for p in ordered for d in p["dimensions"]]
        seconds = sum(p["seconds"] for p in ordered)
        self.store.write(shard.filename, encode_shard(embeddings, indices, bad, seconds, hashes, dims))
