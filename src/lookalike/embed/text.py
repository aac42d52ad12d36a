"""Embedding a text query with the text tower of the model that embedded a gallery's images (CLIP).

CLIP maps text and images into one space, so "a red car" can be searched against image
embeddings. The text tower and the tokenizer come from the same open_clip model as the image
tower (see `registry.open_clip_text_tower`), so a file's weights or a random seed apply to both.
The text embedding is L2-normalised like the image ones, so every search method takes it as is.

Like the image tower, the text tower runs on a measured backend and precision (torch or OpenVINO,
fp32 or bf16): `TextEmbedder.backend` builds them, `embed.text_choice` measures and records which one
a gallery's text queries use. Its input has a variable length: the tokens are cut just after the
last end-of-text token (`cut_tokens`), which is exact for CLIP's causal text transformer, and the
OpenVINO model is converted with a dynamic batch and sequence length, so one IR serves every query
length with no padding back to 77 and no per-length conversions (buckets would pad a 5-token
query to the bucket's length and convert the tower once per bucket).
"""

from __future__ import annotations

import functools
import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BackendUnavailable, TextQueryError
from .backends import Backend, Choice, OpenVINOBackend, TorchBackend
from .cache import cache_root, cached_ir, openvino_version
from .registry import BACKENDS, TEXT_MODEL_NAMES

if TYPE_CHECKING:
    from ..gallery.manifest import Weights

# BPE tokens of CLIP's vocabulary are at most 32 characters, and words are separated by a space,
# so text longer than (context − 2) × 33 characters after collapsing whitespace cannot fit the
# context; such text is refused before tokenizing, which costs CPU in proportion to its length.
MAX_TOKEN_CHARS = 32


@dataclass(frozen=True)
class TextTower:
    """A model's text tower: token ids (B, context_length) → text embeddings (B, d), and its tokenizer."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Any  # open_clip's tokenizer: .encode(str) → list of BPE ids; __call__(str) → (1, context_length) ids
    context_length: int  # tokens the tower reads, start and end markers included (77 for CLIP)
    model: Any = None  # the network the text and image towers are cut from (its state dict holds both)
    # (B, L) ids already cut by `cut_tokens` → (B, d) features, as a module OpenVINO can convert; None: the model's
    # text tower cannot be cut (not causal), so it runs in torch only
    cut: torch.nn.Module | None = None


class CausalText(torch.nn.Module):
    """CLIP's text tower on token ids cut just after the last end-of-text token: (B, L) int64 → (B, d) features.

    Why it is exact: the text transformer's attention is causal, so no position before the end-of-text
    token sees any after it, and the pooled feature is read at that token (the highest id). The length
    L is read from the input's shape, never from its values, so the OpenVINO model converted from this
    module takes any length.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        length = tokens.shape[1]
        end = tokens.argmax(dim=-1)  # CLIP's end-of-text token has the highest id: where the feature is pooled
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=x.device), end]
        projection = m.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def cut_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, context) ids → (B, L): every row up to the batch's last end-of-text token (the rest is padding)."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


class CutTokens:
    """A backend of cut token ids (OpenVINO's text model) that takes full-context ids, as the torch one does."""

    def __init__(self, run: OpenVINOBackend):
        self.run, self.choice = run, run.choice
        self.threads, self.streams = run.threads, run.streams

    def __call__(self, tokens: torch.Tensor) -> np.ndarray:
        return self.run(cut_tokens(tokens))


def no_text_message(model: str) -> str:
    """Why a gallery of `model` cannot answer a text query, naming the models that can (from the registry)."""
    return (
        f"this gallery was embedded with {model}, which has no text tower, so it cannot be searched by text; "
        f"text search needs a gallery extracted with {' or '.join(TEXT_MODEL_NAMES)}"
    )


class TextEmbedder:
    """Tokenizes and embeds text queries; refuses empty text and text the tower would silently truncate.

    Runs one backend at a time, like the image `Embedder` (torch fp32 until `use` picks another), and
    has the interface `embed.calibrate.calibrate` measures: `device`, `backend`, `int8_cached`.
    """

    def __init__(self, model: str, tower: TextTower, device: str = "cpu", weights: Weights | None = None):
        self.model = model
        self.tower = tower
        self.device = device
        self.weights = weights
        self._backends: dict[tuple[Choice, int | None], Backend] = {}
        self.active: Backend = self.backend(Choice("torch", "fp32"))

    @property
    def choice(self) -> Choice:
        return self.active.choice

    def use(self, choice: Choice, threads: int | None = None) -> Backend:
        """Make `choice` the active backend (raises BackendUnavailable if it cannot run here)."""
        self.active = self.backend(choice, threads)
        return self.active

    def backend(self, choice: Choice, threads: int | None = None, streams: int | None = 1) -> Backend:
        """The backend for `choice`, built once; OpenVINO's converted text model comes from the on-disk cache.

        `streams` is accepted for the calibration's sake and ignored: text is only ever a query, so
        OpenVINO always runs its latency mode (one stream, one infer request per calling thread)."""
        key = (choice, threads if choice.backend == "openvino" else None)
        if key not in self._backends:
            self._backends[key] = self._make(choice, threads)
        return self._backends[key]

    def int8_cached(self) -> bool:
        """Whether the text tower's int8 model is already quantised and on disk (so trying it costs nothing)."""
        from .quantise import is_text_quantised

        return self.tower.cut is not None and is_text_quantised(self.text_key)

    def _make(self, choice: Choice, threads: int | None) -> Backend:
        if choice.backend == "torch":
            return TorchBackend(self.tower.encode, self.device, choice.precision, channels_last=False, unit="texts")
        if choice.backend != "openvino":
            raise BackendUnavailable(
                f"unknown inference backend {choice.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.device != "cpu":
            raise BackendUnavailable(f"lookalike runs openvino on the CPU only; the text tower is on {self.device}")
        if self.tower.cut is None:
            raise BackendUnavailable(f"{self.model}'s text tower is not causal, so lookalike runs it in torch only")
        xml = openvino_text_model(self.tower.cut, self.text_key, self.tower.tokenizer("a photo of a dog"))
        if choice.precision == "int8":
            from .quantise import int8_text_model

            xml = int8_text_model(self.text_key, xml, self.tower.tokenizer)
        return CutTokens(OpenVINOBackend(xml, choice.precision, threads, 1, dtype=np.int64, unit="texts"))

    @functools.cached_property
    def text_key(self) -> str:
        """Names the converted text model: the model, and a digest of the weights file's sha256 (or, for random
        weights, of the tensors themselves: about 0.3 s for CLIP, paid only when OpenVINO is tried)."""
        from .models import module_digest

        weights = self.weights
        digest = weights.sha256 if weights is not None and weights.kind != "random" and weights.sha256 else None
        if digest is None:
            digest = module_digest(self.tower.model if self.tower.model is not None else self.tower.cut)
        return f"{self.model}-text-{hashlib.sha256(digest.encode()).hexdigest()[:16]}"

    @property
    def max_tokens(self) -> int:
        """Tokens a query may have: the context minus the start and end markers."""
        return self.tower.context_length - 2

    def tokenize(self, text: str) -> torch.Tensor:
        """(1, context_length) token ids of `text`; TextQueryError if it is empty or longer than the context.

        open_clip's tokenizer cuts text at the context length without a word, so the tokens are
        counted first and an overflow is refused: a query must not be searched with half its words.
        """
        collapsed = " ".join(str(text).split())
        if not collapsed:
            raise TextQueryError(
                "the text query is empty; type a few words describing the images you want, e.g. 'a red car'"
            )
        limit = self.max_tokens * (MAX_TOKEN_CHARS + 1)
        if len(collapsed) > limit:
            raise TextQueryError(
                f"the text query is {len(collapsed):,} characters long, more than {self.model}'s text tower can read "
                f"({self.max_tokens} tokens, at most {limit:,} characters); shorten it to a sentence or two"
            )
        count = len(self.tower.tokenizer.encode(collapsed))
        if count == 0:
            raise TextQueryError(
                "the text query has no words the tokenizer can read; type a few words describing the images you want"
            )
        if count > self.max_tokens:
            raise TextQueryError(
                f"the text query is {count} tokens long but {self.model}'s text tower reads at most {self.max_tokens} "
                f"({self.tower.context_length} with its start and end markers); shorten it"
            )
        return self.tower.tokenizer(collapsed)

    def embed_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, context_length) ids → (B, d) L2-normalised float32 by the active backend: the same normalisation as the
        image embeddings (NonFiniteEmbeddings for NaN or inf)."""
        return self.active(tokens)

    def embed(self, text: str) -> tuple[np.ndarray, float, float]:
        """(1, d) unit vector of `text`, with the ms spent tokenizing and in the forward pass."""
        t0 = time.perf_counter()
        tokens = self.tokenize(text)
        t1 = time.perf_counter()
        vector = self.embed_tokens(tokens)
        return vector, 1000 * (t1 - t0), 1000 * (time.perf_counter() - t1)


def openvino_text_model(module: torch.nn.Module, key: str, example: torch.Tensor) -> Path:
    """The cut text tower as OpenVINO IR on disk, converted once per (model, weights, OpenVINO version).

    Batch and sequence length are dynamic (−1, −1): a query of 5 tokens runs 5 positions, as in torch.
    `example` (a tokenized text, any length) only lets the converter trace the module.
    """
    version = openvino_version()
    if version is None:
        raise BackendUnavailable("openvino is not installed (pip install openvino)")

    def convert():
        import openvino as ov

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's notices about OpenVINO's internals
            return ov.convert_model(module.eval(), example_input=cut_tokens(example), input=[ov.PartialShape([-1, -1])])

    folder = cache_root() / "openvino" / f"{key}-dynamic-ov{version}"
    return cached_ir(folder, convert, "openvino could not convert the text tower")
