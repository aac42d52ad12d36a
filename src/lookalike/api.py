"""The public Python API: one call for each thing the CLI does, re-exported from `lookalike`.

    import lookalike
    g = lookalike.open_gallery("galleries/clip")
    hits = g.search("cat.jpg", k=10, method="ivf", nprobe=16)
    lookalike.extract("photos/", "galleries/clip", model="clip")
    lookalike.build_index(g, "hnsw")
    lookalike.study("photos/", "runs/study", models="clip")   # the whole study → runs/study/report.html

The CLI and the server are thin layers over these functions.
"""

from __future__ import annotations

import os
from typing import Any

from .gallery import Gallery, open_gallery
from .search import SearchMethod

__all__ = ["extract", "build_index", "study"]


def extract(
    data: str | os.PathLike,
    out: str | os.PathLike,
    model: str = "resnet18",
    weights: str = "pretrained",
    *,
    engine: str = "local",
    progress: bool = False,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_worker: float = 0.0,
    staging: str | None = None,
    **options: Any,
) -> Gallery:
    """Embed every image under `data` into the gallery folder `out` and return it (resumable, like `lookalike extract`).

    `options` are `ExtractConfig` fields: image_size, batch_size, shard_size, backend ("auto",
    "torch", "openvino"), precision ("auto", "fp32", "bf16", "fp16"), splits, seed, decode_threads (local
    decode threads), device, threads (inference threads), overwrite, update. `engine="ray"` runs on a
    Ray cluster (`address`) with `actors` model actors of `gpus_per_worker` GPUs each.

    On a gallery made with the same arguments, this updates it to the folder (`update=None`, the
    default; `update=True` also fails when it cannot update, `update=False` refuses a changed folder):
    only new and changed images are embedded, removed ones dropped, saved indexes follow.
    `gallery.manifest.update` says what changed; ids move, `id_map.npy` maps old ids to new ones.
    `data` may also be webdataset tar shards: 'shards/{00000..00009}.tar' or a folder of .tar files.
    """
    from .embed.extract import ExtractConfig
    from .errors import LookalikeError

    try:
        config = ExtractConfig(
            data=os.fspath(data), out=os.fspath(out), model=model, weights=os.fspath(weights), **options
        )
    except TypeError as exc:
        raise LookalikeError(f"lookalike.extract: {exc}; see ExtractConfig for the accepted options") from None
    if engine == "ray":
        from .distributed import extract_ray

        return extract_ray(config, address=address, actors=actors, gpus_per_worker=gpus_per_worker, staging=staging)
    if engine != "local":
        raise LookalikeError(f"unknown engine {engine!r}; use local or ray")
    if staging:
        raise LookalikeError("staging is where Ray workers write shards; pass engine='ray' or drop staging")
    from .embed.extract import extract as run_extract

    return run_extract(config, progress=progress)


def build_index(
    gallery: Gallery | str | os.PathLike,
    method: str = "ivf",
    *,
    metric: str = "ip",
    database: str = "all",
    nlist: int | None = None,
    engine: str = "local",
    address: str | None = None,
    **search_params: Any,
) -> SearchMethod:
    """Build `method` over the gallery's rows and save it in `<gallery>/indexes/`, like `lookalike index`.

    `database="all"` (the default) indexes every row, what `Gallery.search` and the server search;
    "heldout" indexes the study's database (the held-out queries left out). The index records
    which it holds, and is never searched as the other. `search_params` (e.g. nprobe=32) are
    stored as the index's defaults. Returns the built method.
    """
    from .errors import LookalikeError
    from .runtime import configure_faiss
    from .search import database_rows, make_method, save_method
    from .search.searcher import forget_index

    configure_faiss()
    gallery = gallery if isinstance(gallery, Gallery) else open_gallery(gallery)
    rows = database_rows(gallery, database)
    if engine == "ray":
        from .distributed import build_index_ray

        built = build_index_ray(gallery, method, metric=metric, nlist=nlist, address=address, database=database)
    elif engine == "local":
        from .search import build_dir, database_vectors

        built = make_method(method, len(rows), gallery.dim, metric, nlist=nlist)
        built.workdir = build_dir(gallery, built.name, metric)
        built.build(database_vectors(gallery, rows), rows)
    else:
        raise LookalikeError(f"unknown engine {engine!r}; use local or ray")
    if search_params:
        built.set_params(**search_params)
    save_method(gallery, built)
    forget_index(gallery, built.name, metric)  # the next gallery.search uses the new index
    return built


def study(data: str | os.PathLike, out: str | os.PathLike = "runs/study", **options: Any):
    """The whole study over `data` into `out`, resumable, like `lookalike study` (see lookalike.study.pipeline.study
    for the options); `lookalike.study(...)` is the same call."""
    from .study.pipeline import study as run

    return run(data, out, **options)
