"""Scale-out on Ray: `extract_ray` (lookalike extract --engine ray), `build_index_ray` (lookalike index --engine ray)
and `fan_out` (lookalike search/serve --engine ray: an ivfpq-ondisk index's parts over actors).

The names load on first use: a Ray worker that imports one module of this package (a search actor, an index task, the
shard writer) imports only what that module needs, not torch and the models with the extraction.

See docs/cluster.md for pointing lookalike at a real cluster.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import connected
    from .extract import extract_ray
    from .index import build_index_ray
    from .search import FannedOut, fan_out

__all__ = ["extract_ray", "build_index_ray", "connected", "fan_out", "FannedOut"]
_HOME = {  # each name's module, imported when the name is first used
    "extract_ray": ".extract",
    "build_index_ray": ".index",
    "connected": ".cluster",
    "fan_out": ".search",
    "FannedOut": ".search",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOME[name], __name__), name)
