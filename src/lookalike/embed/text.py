"""Embedding a text query with the text tower of the model that embedded a gallery's images (CLIP).

CLIP maps text and images into one space, so "a red car" can be searched against image
embeddings. The text tower and the tokenizer come from the same open_clip model as the image
tower (see `registry.open_clip_text_tower`), so a file's weights or a random seed apply to both.
The text embedding is L2-normalised like the image ones, so every search method takes it as is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TextQueryError
from .backends import normalise
from .registry import TEXT_MODEL_NAMES

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


def no_text_message(model: str) -> str:
    """Why a gallery of `model` cannot answer a text query, naming the models that can (from the registry)."""
    return (
        f"this gallery was embedded with {model}, which has no text tower, so it cannot be searched by text; "
        f"text search needs a gallery extracted with {' or '.join(TEXT_MODEL_NAMES)}"
    )


class TextEmbedder:
    """Tokenizes and embeds text queries; refuses empty text and text the tower would silently truncate."""

    def __init__(self, model: str, tower: TextTower, device: str = "cpu"):
        self.model = model
        self.tower = tower
        self.device = device

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
        """(B, context_length) ids → (B, d) L2-normalised float32: the same normalisation as the image embeddings."""
        with torch.inference_mode():
            features = self.tower.encode(tokens.to(self.device))
        return normalise(features.float().cpu().numpy())

    def embed(self, text: str) -> tuple[np.ndarray, float, float]:
        """(1, d) unit vector of `text`, with the ms spent tokenizing and in the forward pass."""
        t0 = time.perf_counter()
        tokens = self.tokenize(text)
        t1 = time.perf_counter()
        vector = self.embed_tokens(tokens)
        return vector, 1000 * (t1 - t0), 1000 * (time.perf_counter() - t1)
