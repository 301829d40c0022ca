"""The missing-modality protocol: an explicit, printed, hashed object instead of magic config values.

A `MissingProtocol` says, per split, what fraction of the samples loses a modality (`*_missing_rate`: 0.7 means
70% of the samples MISS one, not 70% keep it), which modalities may go missing (`missing_type`), how the
missing samples are shared between them (`both_ratio`) and the seed. Its `missing_table` turns that into a
per-sample table:

- Each selected sample loses exactly one modality, so with two modalities "both at rate 0.7" means 35% lose
  the image and 35% the text (`both_ratio` 0.5), never both, as in MAP and the CMPT paper.
- The selection depends only on (seed, split) and the sample ids, not on the dataset order: the samples are
  ranked by a hash of (seed, split, id) and the first `floor(rate * n)` are taken (floor, as MAP counts them).
- Real missingness (a row without an image file, an empty text cell) stays apart from simulated missingness: a
  modality that is already missing is not dropped again (counted as `already_missing`), and a drop that would
  leave a sample with no modality at all is cancelled (counted as `kept_last`).
- Tables are cached under a key over EVERY protocol field, the split, the modality list and a digest of the
  ids; MAP's cache file name ignores the seed and `both_ratio` and silently reuses stale tables.

`Scenario` and its helpers name the evaluation settings of the paper: complete data, one modality entirely
missing, rate sweeps ("100% image + x% text") and the MAP grid of train/test missing rates.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..checks import check_field_types, load_json

SPLIT_RATES = ("train", "val", "test")
TABLE_FORMAT = 1
SWEEP_RATES = tuple(round(0.1 * step, 1) for step in range(11))
"""The missing rates of a rate sweep (paper Fig. 2/3): 0%, 10%, ..., 100% of the test samples lack the modality."""
"""Part of every cache key: bump it when the selection algorithm changes, so old tables are never reused."""


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _rank_key(seed: int, split: str, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{split}\x00{key}".encode()).hexdigest()


def _rate_split(split: str) -> str:
    """'test_unseen' uses the test rate, 'val_unseen' the val rate."""
    base = split.split("_")[0]
    if base not in SPLIT_RATES:
        raise ValueError(f"split {split!r} has no missing rate: expected one of {', '.join(SPLIT_RATES)}")
    return base


def bind_kind(name: str, modalities: Mapping[str, str], hint: str) -> str:
    """The modality of a dataset (`modalities`: name -> kind) that `name` means: itself if the dataset has it,
    else the dataset's one modality of kind `name`, so that a kind (`--image-encoder`, `--missing-type image`,
    `sweep:image`) finds a generic dataset's `photo` column. Any other name comes back unchanged, for the caller
    to report; a kind that several modalities share is an error ending in `hint`."""
    if name in modalities:
        return name
    matches = [modality for modality, kind in modalities.items() if kind == name]
    if len(matches) > 1:
        raise ValueError(f"{name!r} could be any of the dataset's {name} modalities ({', '.join(matches)}): {hint}")
    return matches[0] if matches else name


@dataclass(frozen=True)
class MissingProtocol:
    """Per-split missing rates, the missing type, the both-ratio and the seed (see the module docstring).

    `missing_type`: one modality name ("text", "image", "audio", ...), several joined by "+" ("audio+video"),
    "both" (the two modalities of a two-modality dataset) or "all" (every modality). For "both"/"all" the order
    is the dataset's declared order, which for MM-IMDb, Food-101 and Hateful Memes is image, text. A kind
    ("image") stands for the dataset's one modality of that kind (`bound`).

    `both_ratio`: with two candidate modalities, the share of the missing samples that lose the FIRST one (for
    the image-text datasets: the image, exactly MAP's `both_ratio`). With more, the missing samples are split
    evenly and `both_ratio` must stay 0.5; with one it has no effect.
    """

    train_missing_rate: float = 0.0
    val_missing_rate: float = 0.0
    test_missing_rate: float = 0.0
    missing_type: str = "all"
    both_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self):
        check_field_types(self)
        for name in ("train_missing_rate", "val_missing_rate", "test_missing_rate", "both_ratio"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)
        kind = str(self.missing_type).strip()
        if not kind or any(not part.strip() for part in kind.split("+")):
            raise ValueError(f"missing_type must name modalities, 'both' or 'all', got {self.missing_type!r}")
        object.__setattr__(self, "missing_type", "+".join(part.strip() for part in kind.split("+")))
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def uniform(cls, rate: float, missing_type: str = "all", both_ratio: float = 0.5, seed: int = 0):
        """The same missing rate in every split (the MAP default)."""
        return cls(rate, rate, rate, missing_type, both_ratio, seed)

    def bound(self, modalities: Mapping[str, str]) -> "MissingProtocol":
        """This protocol with each kind in `missing_type` replaced by the dataset's modality of that kind
        (`bind_kind`; `modalities`: name -> kind)."""
        hint = "name the ones meant in the missing type, joined by '+'"
        parts = [bind_kind(part, modalities, hint) for part in self.missing_type.split("+")]
        return replace(self, missing_type="+".join(parts))

    def missing_rate(self, split: str) -> float:
        return getattr(self, f"{_rate_split(split)}_missing_rate")

    def targets(self, modalities: Sequence[str]) -> tuple[str, ...]:
        """The modalities that may go missing, in the order `both_ratio` refers to."""
        modalities = tuple(modalities)
        if self.missing_type == "both":
            if len(modalities) != 2:
                raise ValueError(
                    f"missing type 'both' needs exactly two modalities, the dataset has {len(modalities)} "
                    f"({', '.join(modalities)}); use 'all' or name them joined by '+'"
                )
            targets = modalities
        elif self.missing_type == "all":
            targets = modalities
        else:
            targets = tuple(self.missing_type.split("+"))
            unknown = [name for name in targets if name not in modalities]
            if unknown:
                raise ValueError(
                    f"missing type {self.missing_type!r} names {', '.join(unknown)}, "
                    f"which the dataset does not have (modalities: {', '.join(modalities)})"
                )
        if len(targets) > 2 and self.both_ratio != 0.5:
            raise ValueError(
                f"both_ratio applies to two modalities; with {len(targets)} the missing samples are split evenly"
            )
        return targets

    def shares(self, modalities: Sequence[str]) -> dict[str, float]:
        """Fraction of the MISSING samples that lose each target modality."""
        targets = self.targets(modalities)
        if len(targets) == 2:
            return {targets[0]: self.both_ratio, targets[1]: 1.0 - self.both_ratio}
        return {name: 1.0 / len(targets) for name in targets}

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        """A short stable hash over every field: store it with results to know which protocol made them. 'both'
        counts as 'all': wherever 'both' is valid (two modalities), the two select the same samples."""
        fields = self.to_dict()
        if fields["missing_type"] == "both":
            fields["missing_type"] = "all"
        return _digest(fields)[:12]

    def describe(self) -> str:
        rates = " · ".join(f"{s} {getattr(self, f'{s}_missing_rate'):.0%}" for s in SPLIT_RATES)
        return (
            f"missing protocol {self.hash()}: type {self.missing_type}, rate {rates} "
            f"(samples missing a modality), both_ratio {self.both_ratio:g}, seed {self.seed}"
        )

    __str__ = describe

    def missing_table(
        self,
        split: str,
        ids: Sequence[str],
        modalities: Sequence[str],
        present: np.ndarray | None = None,
        *,
        groups: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "MissingTable":
        """Which modalities the protocol removes from each sample of `split`.

        `present` (`[n, len(modalities)]` bools, default all True) is what the data has.
        `groups` draws the selection per group (e.g. per movie when each of its plots is a sample) and applies
        it to every member, as MAP does for MM-IMDb. The selection, which depends only on the protocol, the
        split, the modalities and the ids, is cached in `cache_dir` when given.
        """
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"split {split!r}: sample ids are not unique; the missing table is keyed by id")
        modalities = tuple(modalities)
        keys = ids if groups is None else [str(g) for g in groups]
        if len(keys) != len(ids):
            raise ValueError(f"got {len(groups)} groups for {len(ids)} ids")
        present = np.ones((len(ids), len(modalities)), bool) if present is None else np.asarray(present)
        if present.shape != (len(ids), len(modalities)):
            raise ValueError(f"present has shape {present.shape}, expected {(len(ids), len(modalities))}")
        selection = self._cached_selection(split, sorted(set(keys)), modalities, cache_dir)
        return MissingTable.build(self, split, ids, modalities, present.astype(bool), [selection.get(k) for k in keys])

    def _selection(self, split: str, keys: list[str], modalities: tuple[str, ...]) -> dict[str, str]:
        """key -> the modality it loses, for the floor(rate * n) keys ranked first by hash."""
        targets = self.targets(modalities)
        chosen = sorted(keys, key=lambda key: _rank_key(self.seed, split, key))
        chosen = chosen[: math.floor(self.missing_rate(split) * len(keys) + 1e-9)]
        if len(targets) == 2:
            counts = [math.floor(len(chosen) * self.both_ratio + 1e-9)]
            counts.append(len(chosen) - counts[0])
        else:
            base, extra = divmod(len(chosen), len(targets))
            counts = [base + (i < extra) for i in range(len(targets))]
        assignment = [name for name, count in zip(targets, counts) for _ in range(count)]
        return dict(zip(chosen, assignment))

    def _cached_selection(self, split, keys, modalities, cache_dir) -> dict[str, str]:
        if cache_dir is None:
            return self._selection(split, keys, modalities)
        meta = {
            "format": TABLE_FORMAT,
            "protocol": self.to_dict(),
            "split": split,
            "modalities": list(modalities),
            "ids_digest": _digest(keys),
        }
        path = Path(cache_dir) / f"missing-{_digest(meta)[:20]}.json"
        stored = self._stored_selection(path, meta, split, keys, modalities)
        if stored is not None:
            return stored
        selection = self._selection(split, keys, modalities)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(json.dumps({"meta": meta, "selection": selection}))
        os.replace(temporary, path)
        return selection


    def _stored_selection(self, path: Path, meta: dict, split, keys, modalities) -> dict[str, str] | None:
        """The cached selection at `path` if it is whole and fits (its meta, as many keys as the rate takes, each a
        key of the split losing one of the protocol's targets); else None, and it is computed again: a damaged or
        edited cache file must not change which samples lose what."""
        if not path.is_file():
            return None
        try:
            stored = load_json(path.read_text(encoding="utf-8"))
            selection = stored["selection"]
            known, targets = set(keys), set(self.targets(modalities))
            fits = (
                stored.get("meta") == meta
                and isinstance(selection, dict)
                and len(selection) == math.floor(self.missing_rate(split) * len(keys) + 1e-9)
                and all(key in known and value in targets for key, value in selection.items())
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return selection if fits else None


@dataclass(frozen=True, eq=False)
class MissingTable:
    """What every sample of one split has and what the protocol shows of it (`availability`'s vocabulary).

    `present[i, m]`: sample i has modality m. `dropped[i, m]`: the protocol removes it. The model is shown
    `visible = present & ~dropped`, which is never all False for a sample that had any modality.
    """

    protocol_hash: str
    split: str
    ids: tuple[str, ...]
    modalities: tuple[str, ...]
    present: np.ndarray
    dropped: np.ndarray
    already_missing: int = 0
    """Samples selected to lose a modality they did not have: nothing was dropped."""
    kept_last: int = 0
    """Samples whose selected drop was cancelled because it would have removed their last modality."""

    @classmethod
    def build(cls, protocol, split, ids, modalities, present, selected: list[str | None]) -> "MissingTable":
        dropped = np.zeros_like(present)
        already_missing = kept_last = 0
        for row, name in enumerate(selected):
            if name is None:
                continue
            column = modalities.index(name)
            if not present[row, column]:
                already_missing += 1
            elif present[row].sum() == 1:
                kept_last += 1
            else:
                dropped[row, column] = True
        return cls(protocol.hash(), split, tuple(ids), tuple(modalities), present, dropped, already_missing, kept_last)

    @property
    def visible(self) -> np.ndarray:
        return self.present & ~self.dropped

    def dropped_modalities(self, row: int) -> set[str]:
        return {m for m, drop in zip(self.modalities, self.dropped[row]) if drop}

    def pattern(self, row: int) -> str:
        """The visible modalities of a sample joined by '+', e.g. 'image+text'; 'none' if it has none."""
        return "+".join(m for m, ok in zip(self.modalities, self.visible[row]) if ok) or "none"

    def pattern_counts(self) -> dict[str, dict[str, int]]:
        """Per availability pattern: samples, how many are in it because of simulation (at least one dropped
        modality) and how many only because of real missingness."""
        counts: dict[str, dict[str, int]] = {}
        simulated = self.dropped.any(1)
        incomplete = ~self.visible.all(1)
        for row in range(len(self.ids)):
            entry = counts.setdefault(self.pattern(row), {"samples": 0, "real": 0, "simulated": 0})
            entry["samples"] += 1
            if simulated[row]:
                entry["simulated"] += 1
            elif incomplete[row]:
                entry["real"] += 1
        full = "+".join(self.modalities)
        return dict(sorted(counts.items(), key=lambda item: (item[0] != full, -item[1]["samples"], item[0])))

    def summary(self) -> dict:
        return {
            "samples": len(self.ids),
            "patterns": self.pattern_counts(),
            "real_missing": {m: int((~self.present[:, i]).sum()) for i, m in enumerate(self.modalities)},
            "simulated_missing": {m: int(self.dropped[:, i].sum()) for i, m in enumerate(self.modalities)},
            "already_missing": self.already_missing,
            "kept_last": self.kept_last,
        }


# ---------------------------------------------------------------------------------------------------------------
# Evaluation scenarios


@dataclass(frozen=True)
class Scenario:
    """One test condition: `rate` of the samples lose one of the `missing_type` modalities.

    `protocol(base)` gives `base` with this condition on `split` (the other splits keep their rates); the
    returned protocol describes that split only when the scenario's type differs from training's.
    """

    name: str
    missing_type: str
    rate: float

    def protocol(self, base: MissingProtocol, split: str = "test") -> MissingProtocol:
        return replace(base, missing_type=self.missing_type, **{f"{_rate_split(split)}_missing_rate": self.rate})


def availability(modalities: Sequence[str], missing_type: str, rate: float, both_ratio: float = 0.5) -> dict:
    """Fraction of the samples that keep each modality under (type, rate)."""
    shares = MissingProtocol(missing_type=missing_type, both_ratio=both_ratio).shares(modalities)
    return {m: 1.0 - rate * shares.get(m, 0.0) for m in modalities}


def scenario(modalities: Sequence[str], missing_type: str, rate: float, both_ratio: float = 0.5) -> Scenario:
    """A scenario named as in the paper's tables by what is available, e.g. '100% image + 30% text'."""
    kept = availability(modalities, missing_type, rate, both_ratio)
    if all(value == 1.0 for value in kept.values()):
        name = "complete"
    elif sorted(kept.values()) == [0.0] + [1.0] * (len(kept) - 1):
        name = f"{min(kept, key=kept.get)} missing"
    else:
        name = " + ".join(f"{round(100 * value):d}% {m}" for m, value in kept.items())
    return Scenario(name, missing_type, rate)


def complete_scenario(modalities: Sequence[str]) -> Scenario:
    return scenario(modalities, "all", 0.0)


def modality_missing_scenarios(modalities: Sequence[str]) -> list[Scenario]:
    """Each modality entirely missing at test time, the others complete (paper Table 2)."""
    return [scenario(modalities, m, 1.0) for m in modalities]


def rate_sweep(
    modalities: Sequence[str], swept: str, kept_fractions: Iterable[float] = tuple(np.linspace(1.0, 0.0, 11))
) -> list[Scenario]:
    """'100% of the others + x% of `swept`' for each x in `kept_fractions` (paper Fig. 2/3)."""
    return [scenario(modalities, swept, round(1.0 - float(x), 6)) for x in kept_fractions]


def map_grid(
    modalities: Sequence[str],
    rates: Iterable[float] = (0.7,),
    missing_types: Iterable[str] | None = None,
    both_ratio: float = 0.5,
) -> list[tuple[Scenario, list[Scenario]]]:
    """The MAP grid (paper Tables 1 and 8): for each training condition (type, rate), every test condition.

    Types default to each modality alone plus 'both' (two modalities) or 'all'.
    """
    if missing_types is None:
        missing_types = [*modalities, "both" if len(modalities) == 2 else "all"]
    cells = [scenario(modalities, kind, rate, both_ratio) for kind in missing_types for rate in rates]
    return [(train, list(cells)) for train in cells]
