"""Availability patterns: which modalities a sample has, as the methods, calibration and reports name them.

A pattern is a tuple of modality names in the model's order, e.g. `("image", "text")`; its name is the same
joined with "+", e.g. `"image+text"` (the keys of calibration.json and of the report's tables). With M
modalities there are 2^M - 1 non-empty patterns, listed by `availability_patterns` largest first: index 0 is
the complete one, which is how MAP's prompt pool and REP's pattern embedding are indexed.
"""

from __future__ import annotations

import itertools
from typing import Sequence


def availability_patterns(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """The 2^M - 1 non-empty subsets of `modalities`, largest first (the complete pattern is index 0)."""
    return [c for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]


def pattern_name(present: Sequence[str], order: Sequence[str]) -> str:
    """"image+text": the modalities of `present` in the model's order."""
    return "+".join(m for m in order if m in set(present))
