"""`lookalike serve`: the web demo."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Filled in by the web demo (issue: web demo)."""
