"""The embedding models: a registry of name → (builder, output dim, preprocessing, weights).

Every model returns the L2-normalised embedding, so cosine similarity is the inner
product and |x − y|² = 2 − 2⟨x, y⟩ for every search method downstream.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import logging
import os
import re
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WeightsUnavailableError
from ..gallery.manifest import Weights
from .backends import Backend, Choice, make_backend
from .cache import ModelIdentity
from .registry import MODELS, ModelSpec, get_spec  # noqa: F401 (MODELS, get_spec: re-exported)
from .text import TextEmbedder, no_text_message
from .transforms import Preprocess

log = logging.getLogger(__name__)


class Embedder:
    """A model with its weights and preprocessing, run by one inference backend at a time.

    `embed` maps a batch of preprocessed images to unit-norm float32 embeddings with the active
    backend (torch fp32 until `use` picks another); `backend` builds any other, for calibration.
    """

    def __init__(self, spec: ModelSpec, module: nn.Module, weights: Weights, preprocess: Preprocess, device: str):
        self.spec = spec
        self.weights = weights
        self.preprocess = preprocess
        self.device = device
        self.module = module.eval().to(device)
        if spec.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._backends: dict[tuple[Choice, int | None], Backend] = {}
        self.active: Backend = self.backend(Choice("torch", "fp32"))

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def choice(self) -> Choice:
        return self.active.choice

    @property
    def precision(self) -> str:
        return self.active.choice.precision

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 pixels (`transforms.PixelTransform`'s crops) → (B, dim) L2-normalised float32 array,
        by the active backend."""
        return self.active(images)

    def use(self, choice: Choice, threads: int | None = None, streams: int | None = 1) -> Backend:
        """Make `choice` the active backend (raises BackendUnavailable if it cannot run here)."""
        self.active = self.backend(choice, threads, streams)
        return self.active

    def backend(self, choice: Choice, threads: int | None = None, streams: int | None = 1) -> Backend:
        """The backend for `choice`, built once; OpenVINO's converted model comes from the on-disk cache.

        `streams` (OpenVINO only): 1 for queries, None or n > 1 for extraction (see `OpenVINOBackend`)."""
        key = (choice, threads, streams if choice.backend == "openvino" else 1)
        if key not in self._backends:
            self._backends[key] = make_backend(
                choice,
                self.module,
                lambda: self.identity,
                self.device,
                self.spec.channels_last,
                threads,
                streams,
                self.preprocess,
            )
        return self._backends[key]

    def int8_cached(self) -> bool:
        """Whether this model's int8 version is already quantised and on disk (so trying it costs a job nothing)."""
        from .quantise import is_quantised

        return is_quantised(self.identity)

    @functools.cached_property
    def identity(self) -> ModelIdentity:
        """What the converted and quantised models of this one are keyed by, computed once (the weights file's sha256,
        or for random weights a digest of the tensors themselves: about 0.2 s for CLIP)."""
        weights = self.weights.sha256 if self.weights.kind != "random" and self.weights.sha256 else None
        return ModelIdentity(self.spec, weights or module_digest(self.module), self.preprocess)

    def describe(self) -> dict:
        return {
            "model": self.spec.name,
            "arch": self.spec.arch,
            "family": self.spec.family,
            "dim": self.spec.dim,
            "weights": self.weights.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
            "device": self.device,
        }


def load_model(
    name: str,
    weights: str = "pretrained",
    image_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Embedder:
    """Build model `name` with `weights` = "pretrained", "random" or a path to a state dict / checkpoint."""
    return load_towers(name, weights, image_size, device, seed, text=False, stacklevel=3).image


@dataclass(frozen=True)
class Towers:
    """A model's image embedder and, when it has one, its text embedder, built from one network."""

    image: Embedder
    text: TextEmbedder | None
    no_text: str | None  # why `text` is None (the model has no text tower, or the weights file lacks it)


def load_towers(
    name: str,
    weights: str = "pretrained",
    image_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    text: bool = True,
    stacklevel: int = 2,
) -> Towers:
    """The image tower and, for a model with one (CLIP) when `text`, the text tower, both cut from one network.

    Building the network once is what makes the two towers match: the same weights file, the
    same pretrained checkpoint or the same random seed gives both their weights. Extraction
    passes text=False, so the text tower is freed as soon as the image tower is cut out.
    """
    spec = get_spec(name)
    preprocess = spec.preprocess.with_image_size(image_size) if image_size else spec.preprocess
    missing: list[str] = []
    if weights == "random":
        warnings.warn(
            f"{name}: using RANDOM weights (seed {seed}) — embeddings carry no learned meaning; "
            "use them for tests and timing only",
            stacklevel=stacklevel,
        )
        module, info = random_network(spec, image_size, seed), Weights("random", "random init", seed=seed)
    elif weights == "pretrained":
        module, info = _build_pretrained(spec, image_size)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"--weights {weights!r} is neither 'pretrained', 'random' nor an existing file; pass one of those"
            )
        module, info, missing = _build_from_file(spec, path, image_size)
    text_embedder, no_text = None, no_text_message(name)
    if spec.text_tower is not None:
        # A file may hold the image tower only (the text tower's keys are optional for extraction): its
        # text tower would then be untrained, and text queries would be ranked by noise under a real name.
        absent = [key for key in missing if not key.startswith("logit_")]
        if not text:
            no_text = f"{name}'s text tower was not loaded (text=False)"
        elif absent:
            no_text = (
                f"the weights file {weights} holds no text tower ({len(absent)} tensors missing, e.g. {absent[0]}), so"
                " this gallery cannot be searched by text; pass a full open_clip checkpoint"
            )
        else:
            tower = spec.text_tower(spec, module.eval().to(device))
            text_embedder, no_text = TextEmbedder(name, tower, device, info), None
    return Towers(Embedder(spec, spec.head(module), info, preprocess, device), text_embedder, no_text)


_random_draws: dict[tuple[ModelSpec, int | None, int], tuple[nn.Module, torch.Tensor]] | None = None


def keep_random_draws(keep: bool = True) -> None:
    """Keep each random draw in this process and hand out copies (`random_network`), or stop and free them.

    For processes that load the same random model again and again (a test suite, a benchmark): drawing CLIP's 150M
    parameters takes about 1 s on one core, a copy 0.2 s, but a kept draw holds its memory (CLIP: 600 MB) for as long
    as the process lives, so it is off by default."""
    global _random_draws
    _random_draws = {} if keep else None


def random_network(spec: ModelSpec, image_size: int | None, seed: int) -> nn.Module:
    """The network with weights drawn at random from `seed`; with `keep_random_draws`, a copy of the draw kept from
    the first call (two at most), torch's global generator left where the draw left it."""
    key = (spec, image_size, seed)
    if _random_draws is not None and key in _random_draws:
        network, generator_state = _random_draws[key]
        torch.set_rng_state(generator_state)
        return copy.deepcopy(network)
    torch.manual_seed(seed)
    network = spec.build(spec, image_size)
    if _random_draws is not None:
        if len(_random_draws) == 2:  # the oldest goes
            _random_draws.pop(next(iter(_random_draws)))
        _random_draws[key] = (copy.deepcopy(network), torch.get_rng_state())
    return network


def _build_pretrained(spec: ModelSpec, image_size: int | None) -> tuple[nn.Module, Weights]:
    if spec.family == "torchvision":
        import torchvision

        enum = torchvision.models.get_weight(spec.pretrained)
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if hub_file.is_file():
            # torchvision checks the hash only while downloading; a cached file is loaded unchecked.
            verify_hash_prefix(hub_file, enum.url)
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # URLError, HTTPError, RuntimeError on hash mismatch, ...
            raise WeightsUnavailableError(
                f"pretrained {spec.name} weights are not cached and could not be downloaded ({exc}); "
                f"download {enum.url} and place it at {hub_file}, or pass --weights PATH "
                "(or --weights random for an explicitly untrained model)"
            ) from exc
        model = torchvision.models.get_model(spec.arch, weights=None)
        model.load_state_dict(state)
        return model, Weights(
            "pretrained", f"torchvision {spec.pretrained}", sha256=verify_hash_prefix(hub_file, enum.url)
        )
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    repo = cfg.get("hf_hub", "").rstrip("/")
    cached = _hf_cached_file(repo)
    if cached is not None:
        verify_hf_blob(cached)
    try:
        if cached is None and not _reachable("huggingface.co"):
            raise ConnectionError("huggingface.co is unreachable")
        model = open_clip.create_model(
            spec.arch, pretrained=cached or spec.pretrained, require_pretrained=True, force_image_size=image_size
        )
    except Exception as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsUnavailableError(
            f"pretrained CLIP weights ({spec.arch}, '{spec.pretrained}') are not cached and could not be downloaded "
            f"({type(exc).__name__}: {str(exc)[:200]}); on a connected machine run "
            f"`huggingface-cli download {repo} open_clip_pytorch_model.bin` so the file lands in {HF_HUB_CACHE}, "
            "or pass --weights PATH to an open_clip checkpoint (or --weights random for an untrained model)"
        ) from exc
    loaded = cached or _hf_cached_file(repo)
    digest = verify_hf_blob(loaded) if loaded else None
    return model, Weights("pretrained", f"open_clip {spec.arch} '{spec.pretrained}'", sha256=digest)


_digests: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def module_digest(module: nn.Module) -> str:
    """sha256 over the module's tensors: the identity of the weights actually loaded, whatever their source.

    Remembered per module object for as long as its tensors stay where they are and unmodified (their storage and
    torch's in-place version counters are compared): hashing CLIP's 600 MB takes about 0.7 s, and every embedder
    built over one network asks again."""
    state = sorted(module.state_dict().items())
    stamp = tuple((name, tensor.data_ptr(), tensor._version) for name, tensor in state)
    known = _digests.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.sha256()
    for name, tensor in state:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    _digests[module] = (stamp, digest := h.hexdigest())
    return digest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def verify_hash_prefix(path: Path, url: str | None = None) -> str:
    """Check a torch hub file against the sha256 prefix in its name (as torch.hub's check_hash does); return the full
    sha256.

    A file placed at the cache path by hand, e.g. random weights saved as resnet18-f37072fd.pth,
    would otherwise be labelled as the published pretrained model.
    """
    digest = file_sha256(path)
    match = torch.hub.HASH_REGEX.search(path.name)
    prefix = match.group(1) if match else ""
    if prefix and not digest.startswith(prefix):
        source = f" with a fresh download of {url}" if url else " with the published file"
        raise WeightsUnavailableError(
            f"cached weights {path} are not the published file: the name says sha256 {prefix}…, the file's is"
            f" {digest[: len(prefix)]}…; delete or replace {path}{source}"
        )
    return digest


def verify_hf_blob(path: str | Path) -> str:
    """Check a Hugging Face cache file against its blob name (the sha256 of LFS files); return the full sha256."""
    digest = file_sha256(path)
    blob = Path(os.path.realpath(path)).name
    if re.fullmatch(r"[0-9a-f]{64}", blob) and blob != digest:
        raise WeightsUnavailableError(
            f"cached weights {path} are not the published file: the hub recorded sha256 {blob[:12]}…, the file's is"
            f" {digest[:12]}…; delete {os.path.realpath(path)} so it is downloaded again, or replace it"
        )
    return digest


def _hf_cached_file(repo: str) -> str | None:
    """The locally cached open_clip checkpoint of a Hugging Face repo, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def _reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    """A quick connect test, so an offline machine fails in seconds instead of after a minute of hub retries."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _build_from_file(spec: ModelSpec, path: Path, image_size: int | None) -> tuple[nn.Module, Weights, list[str]]:
    """The network with the file's weights, and the optional tensors the file lacked (see `_load_backbone_state`)."""
    data = path.read_bytes()  # read once: the bytes hashed are the bytes loaded
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read weights file {path} ({exc}); pass a torch state dict or checkpoint"
        ) from exc
    model = spec.build(spec, image_size)
    missing = _load_backbone_state(model, state, spec)
    return model, Weights("file", str(path.resolve()), sha256=digest), missing


def _load_backbone_state(model: nn.Module, state: dict, spec: ModelSpec) -> list[str]:
    """Accept a bare state dict or a checkpoint holding one; the classifier head may be absent.

    Returns the optional keys (`spec.optional_keys`) the file lacked, e.g. a CLIP file's text tower."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"weights for {spec.name} must be a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(spec.optional_keys)]
    if missing or not any(k in state for k in model.state_dict()):
        raise WeightsUnavailableError(
            f"weights file does not fit {spec.name} ({spec.arch}): {len(missing)} backbone tensors missing, e.g."
            f" {missing[:3]}"
        )
    return [k for k in result.missing_keys if k.startswith(spec.optional_keys)]


def weights_hint(name: str) -> str:
    """Where pretrained weights for `name` are looked up; shown by `lookalike models`."""
    spec = get_spec(name)
    if spec.family == "torchvision":
        import torchvision

        url = torchvision.models.get_weight(spec.pretrained).url
        return f"{url} → {Path(torch.hub.get_dir()) / 'checkpoints' / Path(url).name}"
    import open_clip

    return f"HF {open_clip.get_pretrained_cfg(spec.arch, spec.pretrained).get('hf_hub', '').rstrip('/')}"
