"""Scale-out on Ray: `extract_ray` (lookalike extract --engine ray) and `build_index_ray` (lookalike index --engine
ray).

See docs/cluster.md for pointing lookalike at a real cluster.
"""

from .extract import extract_ray
from .index import build_index_ray

__all__ = ["extract_ray", "build_index_ray"]
