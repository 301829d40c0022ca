"""The missing protocol: rate semantics, the 'both' mix, counts, determinism, caching, groups, real missingness."""

import json
import random

import numpy as np
import pytest

from robustmm.data.protocol import (
    MissingProtocol,
    Scenario,
    availability,
    complete_scenario,
    map_grid,
    modality_missing_scenarios,
    rate_sweep,
    scenario,
)

IDS = [f"sample-{i}" for i in range(100)]
IMAGE_TEXT = ["image", "text"]


def table(protocol, ids=IDS, modalities=IMAGE_TEXT, split="test", **kwargs):
    return protocol.missing_table(split, ids, modalities, **kwargs)


def dropped_by_id(result) -> dict[str, tuple[str, ...]]:
    return {i: tuple(sorted(result.dropped_modalities(row))) for row, i in enumerate(result.ids)}


def test_rate_is_the_fraction_of_samples_missing_a_modality():
    result = table(MissingProtocol.uniform(0.7, "text"))
    assert result.dropped[:, 1].sum() == 70
    assert result.dropped[:, 0].sum() == 0
    assert table(MissingProtocol.uniform(0.0)).dropped.sum() == 0
    assert table(MissingProtocol.uniform(1.0, "image")).dropped[:, 0].all()


def test_each_split_uses_its_own_rate():
    protocol = MissingProtocol(train_missing_rate=0.2, val_missing_rate=0.5, test_missing_rate=0.9, missing_type="text")
    counts = {split: table(protocol, split=split).dropped.sum() for split in ("train", "val", "test", "test_unseen")}
    assert counts == {"train": 20, "val": 50, "test": 90, "test_unseen": 90}
    with pytest.raises(ValueError, match="no missing rate"):
        protocol.missing_rate("holdout")


def test_both_is_a_mix_and_never_removes_both_modalities():
    result = table(MissingProtocol.uniform(0.7, "both"))
    assert not (result.dropped.all(1)).any()
    assert result.dropped.any(1).sum() == 70
    assert result.dropped.sum(0).tolist() == [35, 35]


def test_both_ratio_is_the_share_losing_the_first_modality():
    result = table(MissingProtocol.uniform(0.7, "both", both_ratio=0.2))
    assert result.dropped.sum(0).tolist() == [14, 56]
    assert MissingProtocol(missing_type="both", both_ratio=0.2).shares(IMAGE_TEXT) == {"image": 0.2, "text": 0.8}


def test_counts_are_floored_as_map_counts_them():
    assert table(MissingProtocol.uniform(0.5, "text"), ids=IDS[:7]).dropped.sum() == 3
    assert table(MissingProtocol.uniform(0.7, "text"), ids=IDS[:10]).dropped.sum() == 7
    assert table(MissingProtocol.uniform(0.7, "both", both_ratio=0.5), ids=IDS[:5]).dropped.sum(0).tolist() == [1, 2]


def test_selection_depends_on_ids_not_on_their_order():
    protocol = MissingProtocol.uniform(0.6, "both", seed=3)
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    assert dropped_by_id(table(protocol)) == dropped_by_id(table(protocol, ids=shuffled))
    fewer = dropped_by_id(table(protocol, ids=IDS[:50]))
    assert sum(bool(v) for v in fewer.values()) == 30


def test_seed_and_split_change_the_selection():
    base = dropped_by_id(table(MissingProtocol.uniform(0.5, "text", seed=0)))
    assert base != dropped_by_id(table(MissingProtocol.uniform(0.5, "text", seed=1)))
    assert base != dropped_by_id(table(MissingProtocol.uniform(0.5, "text", seed=0), split="train"))
    assert base == dropped_by_id(table(MissingProtocol.uniform(0.5, "text", seed=0)))


def test_cache_key_covers_every_field(tmp_path):
    protocol = MissingProtocol.uniform(0.7, "both", both_ratio=0.5, seed=0)
    first = table(protocol, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("missing-*.json"))) == 1
    assert dropped_by_id(table(protocol, cache_dir=tmp_path)) == dropped_by_id(first)
    assert len(list(tmp_path.glob("missing-*.json"))) == 1
    variants = [
        MissingProtocol.uniform(0.7, "both", both_ratio=0.3, seed=0),
        MissingProtocol.uniform(0.7, "both", both_ratio=0.5, seed=1),
        MissingProtocol.uniform(0.6, "both", both_ratio=0.5, seed=0),
        MissingProtocol.uniform(0.7, "text", both_ratio=0.5, seed=0),
    ]
    for count, variant in enumerate(variants, start=2):
        cached = table(variant, cache_dir=tmp_path)
        assert len(list(tmp_path.glob("missing-*.json"))) == count
        assert dropped_by_id(cached) == dropped_by_id(table(variant))
    table(protocol, ids=IDS[:50], cache_dir=tmp_path)
    table(protocol, split="val", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("missing-*.json"))) == len(variants) + 3


def test_a_cached_table_written_for_other_settings_is_not_reused(tmp_path):
    protocol = MissingProtocol.uniform(0.5, "text")
    table(protocol, cache_dir=tmp_path)
    (path,) = tmp_path.glob("missing-*.json")
    stored = json.loads(path.read_text())
    stored["meta"]["protocol"]["both_ratio"] = 0.9
    stored["selection"] = {}
    path.write_text(json.dumps(stored))
    assert table(protocol, cache_dir=tmp_path).dropped.sum() == 50


def test_hash_changes_with_every_field_and_describe_says_missing():
    base = MissingProtocol.uniform(0.7)
    changed = [
        MissingProtocol(0.6, 0.7, 0.7),
        MissingProtocol(0.7, 0.6, 0.7),
        MissingProtocol(0.7, 0.7, 0.6),
        MissingProtocol.uniform(0.7, "text"),
        MissingProtocol.uniform(0.7, both_ratio=0.4),
        MissingProtocol.uniform(0.7, seed=1),
    ]
    assert len({base.hash(), *(p.hash() for p in changed)}) == 7
    assert base.hash() == MissingProtocol(**base.to_dict()).hash()
    assert "missing a modality" in base.describe() and base.hash() in base.describe()


def test_invalid_protocols_are_refused():
    with pytest.raises(ValueError, match="test_missing_rate"):
        MissingProtocol(test_missing_rate=1.5)
    with pytest.raises(ValueError, match="exactly two"):
        MissingProtocol(missing_type="both").targets(["audio", "video", "text"])
    with pytest.raises(ValueError, match="does not have"):
        MissingProtocol(missing_type="depth").targets(IMAGE_TEXT)
    with pytest.raises(ValueError, match="split evenly"):
        MissingProtocol(missing_type="all", both_ratio=0.3).targets(["a", "b", "c"])
    with pytest.raises(ValueError, match="not unique"):
        table(MissingProtocol.uniform(0.5), ids=["a", "a"])


def test_groups_lose_the_same_modalities():
    ids = [f"movie{m}/{p}" for m in range(20) for p in range(3)]
    groups = [i.split("/")[0] for i in ids]
    result = table(MissingProtocol.uniform(0.5, "both"), ids=ids, groups=groups)
    by_group = {}
    for row, group in enumerate(groups):
        by_group.setdefault(group, set()).add(tuple(result.dropped[row]))
    assert all(len(patterns) == 1 for patterns in by_group.values())
    assert sum(any(next(iter(p))) for p in by_group.values()) == 10


def test_real_missingness_is_kept_apart_from_simulated():
    real = np.ones((100, 2), bool)
    real[:10, 0] = False
    protocol = MissingProtocol.uniform(1.0, "image")
    result = table(protocol, present=real)
    assert result.already_missing == 10
    assert result.dropped[:10].sum() == 0 and result.dropped[10:, 0].all()
    summary = result.summary()
    assert summary["real_missing"] == {"image": 10, "text": 0}
    assert summary["simulated_missing"] == {"image": 90, "text": 0}
    assert summary["patterns"] == {"text": {"samples": 100, "real": 10, "simulated": 90}}


def test_a_drop_that_would_leave_no_modality_is_cancelled():
    real = np.ones((100, 2), bool)
    real[:20, 1] = False
    result = table(MissingProtocol.uniform(1.0, "image"), present=real)
    assert result.kept_last == 20
    assert result.visible.any(1).all()
    assert result.summary()["patterns"]["image"] == {"samples": 20, "real": 20, "simulated": 0}


def test_n_modalities_split_evenly():
    modalities = ["audio", "video", "text"]
    result = table(MissingProtocol.uniform(0.9, "all"), modalities=modalities)
    assert result.dropped.sum(0).tolist() == [30, 30, 30]
    assert not (result.dropped.sum(1) > 1).any()
    pair = table(MissingProtocol.uniform(0.5, "audio+text"), modalities=modalities)
    assert pair.dropped.sum(0).tolist() == [25, 0, 25]
    few = table(MissingProtocol.uniform(0.7, "all"), ids=IDS[:10], modalities=modalities)
    assert few.dropped.sum(0).tolist() == [3, 2, 2]


def test_scenarios_are_named_by_what_is_available():
    assert complete_scenario(IMAGE_TEXT).name == "complete"
    assert [s.name for s in modality_missing_scenarios(IMAGE_TEXT)] == ["image missing", "text missing"]
    assert scenario(IMAGE_TEXT, "text", 0.7).name == "100% image + 30% text"
    assert scenario(IMAGE_TEXT, "both", 0.7).name == "65% image + 65% text"
    assert availability(IMAGE_TEXT, "both", 0.6, both_ratio=0.25) == {"image": 0.85, "text": pytest.approx(0.55)}
    sweep = rate_sweep(IMAGE_TEXT, "text", [1.0, 0.5, 0.0])
    assert [s.rate for s in sweep] == [0.0, 0.5, 1.0]
    grid = map_grid(IMAGE_TEXT, rates=(0.3, 0.7))
    assert len(grid) == 6 and all(len(tests) == 6 for _, tests in grid)


def test_a_scenario_sets_one_split_and_keeps_the_rest():
    base = MissingProtocol(train_missing_rate=0.3, val_missing_rate=0.3, test_missing_rate=0.3, seed=4)
    changed = Scenario("image missing", "image", 1.0).protocol(base)
    assert (changed.train_missing_rate, changed.test_missing_rate, changed.missing_type) == (0.3, 1.0, "image")
    assert changed.seed == 4 and changed.hash() != base.hash()


def test_both_and_all_are_one_protocol_for_two_modalities():
    both, every = MissingProtocol.uniform(0.7, "both"), MissingProtocol.uniform(0.7, "all")
    assert both.hash() == every.hash() != MissingProtocol.uniform(0.7, "text").hash()
    ids = [f"s{i}" for i in range(40)]
    assert np.array_equal(both.missing_table("test", ids, IMAGE_TEXT).dropped,
                          every.missing_table("test", ids, IMAGE_TEXT).dropped)
    assert MissingProtocol().targets(["audio", "video", "text"]) == ("audio", "video", "text")  # the default: all
