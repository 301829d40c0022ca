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
