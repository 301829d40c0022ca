"""The training sampler: a seeded permutation per epoch, optionally grouped by text length."""

import torch

from robustmm.training import GROUP_BATCHES, EpochShuffle


def batches(sampler, batch_size):
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def test_each_epoch_is_a_seeded_permutation():
    sampler = EpochShuffle(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(EpochShuffle(50, seed=3))
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(50)) and list(sampler) != first


def test_group_by_length_pads_less_and_keeps_the_epoch_random():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (400,), generator=generator).tolist()
    batch_size = 8
    grouped = EpochShuffle(400, seed=1, lengths=lengths, batch_size=batch_size)
    plain = EpochShuffle(400, seed=1)
    assert sorted(grouped) == list(range(400))

    def padded(sampler):  # tokens computed when every batch is padded to its longest text
        return sum(len(b) * max(lengths[i] for i in b) for b in batches(sampler, batch_size))

    assert padded(grouped) < 0.8 * padded(plain)
    for start in range(0, 400, GROUP_BATCHES * batch_size):  # each group holds the same samples as the plain order
        span = slice(start, start + GROUP_BATCHES * batch_size)
        assert sorted(list(grouped)[span]) == sorted(list(plain)[span])
    first_epoch = batches(grouped, batch_size)
    grouped.set_epoch(1)
    assert batches(grouped, batch_size) != first_epoch
    for start in range(0, len(first_epoch), GROUP_BATCHES):  # the batches of a group do not overlap in length
        group = [sorted(lengths[i] for i in b) for b in first_epoch[start : start + GROUP_BATCHES]]
        for a in group:
            for b in group:
                assert a is b or a[-1] <= b[0] or b[-1] <= a[0]


def test_warm_up_ramps_linearly_by_default_or_holds_constant():
    import pytest

    from robustmm.training import TrainConfig, poly_schedule

    assert TrainConfig().warmup_method == "linear"
    linear = poly_schedule(100, 50, 0.1, 0.9)
    constant = poly_schedule(100, 50, 0.1, 0.9, "constant")
    assert linear(0) == constant(0) == pytest.approx(0.1)
    assert linear(25) == pytest.approx(0.55) and constant(25) == pytest.approx(0.1)
    assert linear(50) == constant(50) == pytest.approx(1.0)  # both decay alike after the warm-up
    assert linear(100) == constant(100) == 0.0
    assert sum(linear(s) for s in range(50)) / 50 == pytest.approx(0.55, abs=0.01)  # the paper's 5 of 10 epochs
    with pytest.raises(ValueError, match="warmup_method"):
        TrainConfig(warmup_method="cosine")
