"""Availability in one vocabulary (the glossary is the contract's, `robustmm.model`): the `Availability` masks,
the patterns of a set of modalities, their names and indices.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch


def patterns(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """The 2^M - 1 non-empty patterns of `modalities`, largest first (the complete pattern is index 0)."""
    return [c for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]


def pattern_name(pattern: Sequence[str], order: Sequence[str]) -> str:
    """"image+text": the modalities of `pattern` in the model's order."""
    return "+".join(m for m in order if m in set(pattern))


def pattern_index(masks: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """[n] indices into `patterns(modalities)` of each row's pattern in `masks` (modality -> [n] bools); a modality
    that `masks` does not mention counts as not shown (an encoder called on its own: its modality alone)."""
    lookup = torch.zeros(2 ** len(modalities), dtype=torch.long)
    for index, pattern in enumerate(patterns(modalities)):
        lookup[sum(1 << modalities.index(m) for m in pattern)] = index
    some = next(iter(masks.values()))
    absent = torch.zeros(len(some), dtype=torch.bool, device=some.device)
    codes = sum(masks.get(m, absent).long() << i for i, m in enumerate(modalities))
    return lookup.to(codes.device)[codes]


@dataclass(frozen=True)
class Availability:
    """The two masks of a batch, modality -> [B] bools: what the data has (`present`) and what the model is
    shown (`visible`). Methods and plug-ins get this one object where they may need either (the auxiliary
    losses), so that neither is mistaken for the other."""

    present: dict[str, torch.Tensor]
    visible: dict[str, torch.Tensor]
