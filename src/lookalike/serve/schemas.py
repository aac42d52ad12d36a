"""The JSON shapes of the API, declared once so /openapi.json documents every response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx (and the never-expected 5xx) answer: one sentence that says what is wrong and what to do."""

    error: str = Field(examples=["k=500 is out of range for brute: use 1..100"])
    status: int = Field(examples=[422])
    field: str | None = Field(None, description="the request field at fault, when there is one")


class Result(BaseModel):
    rank: int = Field(description="1 = nearest")
    id: int = Field(description="gallery id (row of embeddings.npy); fetch the image at /api/images/{id}")
    score: float = Field(
        description=(
            "inner product = cosine similarity for metric ip (higher is nearer); squared L2 distance for metric l2"
            " (lower is nearer)"
        )
    )
    label: str | None
    label_name: str | None
    path: str = Field(description="the image's path relative to the collection (its file name when outside it)")
    split: str | None
    same_label: bool | None = Field(
        description="whether the result has the query's label; null when the query or the result has none"
    )
    in_exact: bool | None = Field(
        None, description="with compare=exact: whether this result is also among the exact top k; null otherwise"
    )


class SearchTimings(BaseModel):
    """Server-side milliseconds of this request; null where a step did not run (a gallery-id query is not decoded or
    embedded)."""

    decode_ms: float | None = Field(
        description="bytes → RGB pixels, plus resize, crop and normalise; for a text query, tokenizing"
    )
    embed_ms: float | None = Field(description="the model's forward pass (the text tower's, for a text query)")
    search_ms: float = Field(description="the search method's call (with compare=exact, the chosen method's alone)")
    wait_ms: float = Field(description="time queued for the compute slot (grows under concurrent load)")
    total_ms: float = Field(description="from the parsed request to the response, wait included")


class QueryInfo(BaseModel):
    """What the query was: `kind` is its image (an upload or a gallery id), or `text` for a text alone."""

    kind: Literal["upload", "id", "text"]
    text: str | None = Field(
        None, description="the text query; beside an upload or an id (CLIP galleries), the text searched with it"
    )
    id: int | None = None
    filename: str | None = None
    bytes: int | None = None
    label: str | None = None
    label_name: str | None = None
    path: str | None = None


class Comparison(BaseModel):
    """compare=exact: the same query searched exactly over the same rows, and what the chosen method missed."""

    exact_method: str = Field(
        description="the exact search compared with: brute force over the chosen method's own rows"
    )
    exact_results: list[Result] = Field(description="the true k nearest rows, best first")
    recall: float = Field(
        description="recall@k of this query: |results ∩ exact top k| / k (lookalike.study.metrics.recall_per_query)"
    )
    missed_ids: list[int] = Field(
        description="gallery ids of the exact top k that the method did not return, in exact rank order"
    )
    method_ms: float = Field(description="the chosen method's search, in ms")
    exact_ms: float = Field(description="the exact search, in ms")


class SearchResponse(BaseModel):
    query: QueryInfo
    method: str
    metric: str
    params: dict[str, int] = Field(description="search-time parameters this call used, e.g. {'nprobe': 8}")
    k: int
    results: list[Result]
    latency_ms: SearchTimings
    compare: Comparison | None = Field(None, description="present when the request asked compare=exact")
    positive: list[int] = Field(
        default_factory=list, description="gallery ids added to the query as positive examples (left out of results)"
    )
    negative: list[int] = Field(
        default_factory=list, description="gallery ids the results were moved away from (left out of results)"
    )
    negative_text: str | None = Field(None, description="a text the results were moved away from (CLIP galleries)")
    provenance: str = Field(description="model, weights and data behind these results")
    real: bool = Field(description="false when the gallery was made with random weights or generated data")
    warnings: list[str] = Field(
        description="what is not real about these results (random weights: the ranking means nothing)"
    )


class DefaultMethod(BaseModel):
    """What answers a search that names no method: measured on this gallery when the server started."""

    method: str
    params: dict[str, int] = Field(description="its search parameters (nprobe, efSearch) when a request sets none")
    reason: str = Field(description="what was measured: each method's recall on the gallery's held-out queries")


class MethodInfo(BaseModel):
    name: str
    kind: str
    factory: str | None
    metric: str
    higher_is_better: bool
    ntotal: int = Field(
        description="vectors searched (the held-out queries of the gallery's partition are not among them)"
    )
    saved: bool = Field(description="loaded from the gallery's indexes/ folder (false: built at start)")
    params: dict[str, Any]
    param_ranges: dict[str, list[int]] = Field(description="valid [min, max] of each search-time parameter")
    k_range: list[int]
    memory_bytes: int
    load_seconds: float


class DataInfo(BaseModel):
    kind: str | None
    root: str | None = Field(description="the collection folder's name, not its place on the server")
    synthetic: bool = Field(description="true for data generated by lookalike.data.synthetic (not real photos)")
    splits: dict[str, int] | None
    note: str | None


class Limits(BaseModel):
    max_k: int
    max_upload_bytes: int
    max_pixels: int


class GalleryInfo(BaseModel):
    path: str = Field(description="the gallery folder's name (answers never show where the server keeps its files)")
    model: str
    arch: str | None
    dim: int
    count: int
    image_size: int | None = Field(description="model input size in pixels; null for generated embeddings (no model)")
    precision: str | None
    backend: str | None = None  # the inference backend uploads are embedded with (the gallery's, see its manifest)
    weights: dict[str, Any] = Field(description="kind (pretrained | random | file), source, sha256, seed")
    data: DataInfo
    real: bool
    provenance: str
    warnings: list[str] = Field(description="shown on the page: random weights, generated data")
    fingerprint: str
    created: str | None
    database: str = Field(
        description="what is searched: every image (the default), or which are left out as the study's held-out queries"
    )
    notes: list[str] = Field(default_factory=list, description="saved indexes this server does not offer, and why")
    has_labels: bool
    labels: list[str] = Field(
        default_factory=list, description="the gallery's distinct labels (at most 2,000), for the page's filter"
    )
    uploads: bool = Field(description="false when no model made the embeddings (generated galleries): query by id only")
    text: bool = Field(description="whether text queries work: the model has a text tower (CLIP)")
    text_note: str | None = Field(description="why text queries do not work here, when they do not")
    text_backend: dict[str, str] | None = Field(
        default=None,
        description="backend, precision and reason of the text tower: measured for this gallery on this machine at the"
        " first text query (the server's warm-up) and recorded in the gallery's cache folder for reuse",
    )
    exact_method: str = Field(description="the exact search that compare=exact compares each method with")
    default_method: DefaultMethod = Field(
        description="the fastest method reaching recall@10 0.95 on this gallery's held-out queries, never one whose"
        " recall collapses here"
    )
    methods: list[MethodInfo]
    limits: Limits
    threads: dict[str, int]
    compute_slots: int


class Health(BaseModel):
    status: Literal["ok"]
    gallery: str = Field(description="the gallery folder's name")
    count: int
    methods: list[str]
    real: bool


class DuplicateScoring(BaseModel):
    """How scores were computed (lookalike.search.dupes): cosines in whitened embeddings, rescaled by each pair's own
    neighbourhood."""

    formula: str
    whitened_dims: int = Field(description="principal directions the cosines are taken in (0: raw embeddings)")
    whitening_rows: int = Field(description="rows the whitening was fitted on")
    neighbour_k: int
    r_median: float = Field(description="median over rows of r, a row's cosine to its k-th nearest row")
    r_5th_percentile: float
    r_95th_percentile: float


class DuplicateMember(BaseModel):
    id: int = Field(description="gallery id; its thumbnail is at `thumb`")
    path: str = Field(description="the image's path relative to the collection (its file name when outside it)")
    score: float = Field(description="normalised score against the group's keeper (1 for the keeper itself)")
    reason: Literal["keeper", "identical content", "similarity"]
    gallery: str = Field(description="the gallery folder's name")
    thumb: str = Field(description="URL of its JPEG thumbnail (GET /api/images/{id}/thumb)")
    image: str = Field(description="URL of the original file (GET /api/images/{id})")
    split: str | None
    label: str | None
    label_name: str | None


class DuplicateGroup(BaseModel):
    keep: int = Field(description="the suggested keeper's id (see keeper_rule)")
    keep_gallery: str
    min_similarity: float = Field(description="the lowest normalised score between any two members")
    members: list[DuplicateMember] = Field(description="the keeper first, then by decreasing score")


class DuplicatesResponse(BaseModel):
    """`DuplicateReport.to_json()` of the served gallery (every row), paths relative, with thumbnail URLs."""

    gallery: str = Field(description="the gallery folder's name")
    against: str | None
    provenance: str
    mode: str
    preset: str | None = Field(description="the preset asked for; null when a threshold was given")
    threshold: float = Field(description="on the normalised score, in (0, 1]")
    scoring: DuplicateScoring
    method: str = Field(description="exact (numpy scan in blocks) or ivf (FAISS range_search)")
    pair_recall: float | None = Field(description="the IVF method's recall of exact pairs on a sample; null for exact")
    identical_tier: str = Field(
        description="'checked (sha256 of each file)', or why the identical-content tier was skipped"
    )
    keeper_rule: str
    rows: int
    notes: list[str]
    groups: list[DuplicateGroup]
    presets: dict[str, float] = Field(description="the named thresholds (`preset`)")
    default_preset: str = Field(description="the preset used when a request names neither preset nor threshold")
