"""The CMPT equations (paper eqs. 4 and 5) against direct computations, and their N-modality generalisation."""

import itertools

import pytest
import torch

from robustmm.methods.cmpt import alignment_loss, proxy_fill

M1, M2 = "image", "text"


def random_features(modalities, batch=6, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cls = {m: torch.randn(batch, dim, generator=generator) for m in modalities}
    proxies = {(a, b): torch.randn(batch, dim, generator=generator) for a in modalities for b in modalities if a != b}
    return cls, proxies


@pytest.mark.parametrize("pattern", [(True, True), (False, True), (True, False)])
def test_gating_two_modalities_is_eq5(pattern):
    cls, proxies = random_features([M1, M2])
    visible = {M1: torch.full((6,), pattern[0]), M2: torch.full((6,), pattern[1])}
    fused = sum(proxy_fill(cls, proxies, visible, [M1, M2]).values())
    if all(pattern):
        expected = cls[M1] + cls[M2]
    elif not pattern[0]:  # m1 missing: C^_m2 + P^_m2 (the proxy that m2 holds for m1)
        expected = cls[M2] + proxies[M2, M1]
    else:  # m2 missing: C^_m1 + P^_m1
        expected = cls[M1] + proxies[M1, M2]
    torch.testing.assert_close(fused, expected)


def test_gating_mixed_batch_matches_per_sample_rule():
    cls, proxies = random_features([M1, M2])
    visible = {M1: torch.tensor([1, 0, 1, 1, 0, 1]).bool(), M2: torch.tensor([1, 1, 0, 1, 1, 0]).bool()}
    fused = sum(proxy_fill(cls, proxies, visible, [M1, M2]).values())
    for i in range(6):
        a, b = bool(visible[M1][i]), bool(visible[M2][i])
        term1 = cls[M1][i] if a else proxies[M2, M1][i]
        term2 = cls[M2][i] if b else proxies[M1, M2][i]
        torch.testing.assert_close(fused[i], term1 + term2)


def test_gating_three_modalities_averages_available_proxies():
    names = ["image", "text", "audio"]
    cls, proxies = random_features(names, batch=1)
    for available in itertools.chain.from_iterable(itertools.combinations(names, r) for r in (1, 2, 3)):
        visible = {m: torch.tensor([m in available]) for m in names}
        fused = sum(proxy_fill(cls, proxies, visible, names).values())
        expected = 0
        for target in names:
            if target in available:
                expected = expected + cls[target]
            else:
                expected = expected + torch.stack([proxies[s, target] for s in available]).mean(0)
        torch.testing.assert_close(fused, expected)


def direct_eq4(cls, proxies, present, denominator, eps=1e-6):
    """Eq. 4 written sample by sample, for two modalities."""
    terms = []
    for i in range(len(present[M1])):
        if not (present[M1][i] and present[M2][i]):
            continue
        p1, p2, c1, c2 = proxies[M1, M2][i], proxies[M2, M1][i], cls[M1][i], cls[M2][i]
        e12, e21 = ((p1 - c2) ** 2).mean(), ((p2 - c1) ** 2).mean()
        own1, own2 = ((p1 - c1) ** 2).mean(), ((p2 - c2) ** 2).mean()
        if denominator == "paper":
            terms.append((e12 + e21) / (own1 + eps))
        elif denominator == "symmetric":
            terms.append(e12 / (own1 + eps) + e21 / (own2 + eps))
        else:
            terms.append(e12 + e21)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("denominator", ["paper", "symmetric", "none"])
def test_alignment_loss_is_eq4(denominator):
    cls, proxies = random_features([M1, M2])
    present = {M1: torch.tensor([1, 1, 0, 1, 1, 1]).bool(), M2: torch.tensor([1, 0, 1, 1, 1, 1]).bool()}
    loss = alignment_loss(cls, proxies, present, [M1, M2], denominator)
    torch.testing.assert_close(loss, direct_eq4(cls, proxies, present, denominator))


def test_alignment_loss_ignores_incomplete_samples_and_is_zero_without_pairs():
    cls, proxies = random_features([M1, M2])
    present = {M1: torch.tensor([1, 1, 1, 0, 0, 0]).bool(), M2: torch.tensor([1, 1, 0, 1, 1, 1]).bool()}
    changed = {k: v.clone() for k, v in proxies.items()}
    changed[M1, M2][2:] += 100.0  # samples 2.. are incomplete: their proxies must not matter
    a = alignment_loss(cls, proxies, present, [M1, M2])
    b = alignment_loss(cls, changed, present, [M1, M2])
    torch.testing.assert_close(a, b)
    none = {M1: torch.tensor([1, 0]).bool(), M2: torch.tensor([0, 1]).bool()}
    cls2, proxies2 = random_features([M1, M2], batch=2)
    assert alignment_loss(cls2, proxies2, none, [M1, M2]).item() == 0.0


def test_alignment_loss_detach_target_stops_gradient_to_class_tokens():
    cls, proxies = random_features([M1, M2])
    for tensor in [*cls.values(), *proxies.values()]:
        tensor.requires_grad_(True)
    present = {M1: torch.ones(6, dtype=torch.bool), M2: torch.ones(6, dtype=torch.bool)}
    alignment_loss(cls, proxies, present, [M1, M2], detach_target=True).backward()
    assert cls[M1].grad is None and cls[M2].grad is None
    assert proxies[M1, M2].grad is not None and proxies[M1, M2].grad.abs().sum() > 0
    alignment_loss(cls, proxies, present, [M1, M2], detach_target=False).backward()
    assert cls[M1].grad is not None and cls[M1].grad.abs().sum() > 0


def test_alignment_loss_guards_a_zero_denominator():
    cls, proxies = random_features([M1, M2], batch=2)
    proxies[M1, M2] = cls[M1].clone()  # MSE(P^_m1, C^_m1) = 0
    present = {M1: torch.ones(2, dtype=torch.bool), M2: torch.ones(2, dtype=torch.bool)}
    loss = alignment_loss(cls, proxies, present, [M1, M2], eps=1e-6)
    assert torch.isfinite(loss)


def test_three_modality_loss_reduces_to_pairs_present():
    names = ["image", "text", "audio"]
    cls, proxies = random_features(names)
    # Audio absent everywhere: the three-modality loss is the two-modality loss of image and text.
    present = {"image": torch.ones(6, dtype=torch.bool), "text": torch.ones(6, dtype=torch.bool),
               "audio": torch.zeros(6, dtype=torch.bool)}
    for denominator in ["paper", "symmetric", "none"]:
        three = alignment_loss(cls, proxies, present, names, denominator)
        two = alignment_loss(cls, proxies, present, names[:2], denominator)
        torch.testing.assert_close(three, two)
