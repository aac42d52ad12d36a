"""lookalike: image similarity search — embed a folder of images, store a gallery, search it, measure the trade-offs.

The front door (see docs/api.md):

    import lookalike
    g = lookalike.open_gallery("galleries/clip")       # Gallery: .manifest, .count, .dim, .metadata
    hits = g.search("cat.jpg", k=10, method="ivf", nprobe=16)
    hits[0].id, hits[0].score, hits[0].path, hits[0].label
    lookalike.extract("photos/", "galleries/clip", model="clip")
    lookalike.build_index(g, "hnsw")
    g.duplicates(preset="near").to_json()              # near-duplicate groups, a suggested keeper each
    lookalike.study("photos/", "runs/study")           # the whole study, resumable → runs/study/report.html

The package follows the pipeline: data → embed → gallery → search → study → serve, with cli
and distributed (Ray) beside them.
"""

from importlib import metadata as _metadata

from . import study  # the package is callable: lookalike.study(data, out, …) runs the whole study
from .api import build_index, extract
from .errors import LookalikeError
from .gallery import Gallery, Manifest, open_gallery
from .search.dupes import DuplicateReport, find_duplicates
from .search.searcher import Hit, Text

try:
    __version__ = _metadata.version("lookalike")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "open_gallery",
    "extract",
    "build_index",
    "study",
    "find_duplicates",
    "Gallery",
    "Manifest",
    "Hit",
    "Text",
    "DuplicateReport",
    "LookalikeError",
]
