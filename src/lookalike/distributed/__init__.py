"""Scale-out on Ray: `extract_ray` (lookalike extract --engine ray), `build_index_ray` (lookalike index --engine ray)
and `fan_out` (lookalike search/serve --engine ray: an ivfpq-ondisk index's parts over actors).

See docs/cluster.md for pointing lookalike at a real cluster.
"""

from .cluster import connected
from .extract import extract_ray
from .index import build_index_ray
from .search import FannedOut, fan_out

__all__ = ["extract_ray", "build_index_ray", "connected", "fan_out", "FannedOut"]
