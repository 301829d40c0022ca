"""MoLT: the correlation loss, MFB, mask tokens for absent modalities, scenario logits, saving and training."""

import itertools
import warnings

import pytest
import torch

import robustmm
from robustmm.methods.molt import FactorizedBilinearPooling, canonical_correlation_sum, correlation_loss, tapped_layers
from robustmm.contract import make_samples

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(latent_size=16, fusion_layers=1, fusion_heads=2, num_classes=3)
"""Small MoLT options for the tiny encoders (width 32, 2 layers)."""


def encoders_of(tiny_encoders, names):
    return {m: tiny_encoders[m] for m in names}


def with_pattern(samples, modalities, patterns):
    """Samples cycled over `patterns` (tuples of the modalities each sample keeps)."""
    for i, sample in enumerate(samples):
        keep = patterns[i % len(patterns)]
        for m in modalities:
            if m not in keep:
                sample[m] = None
    return samples


def all_patterns(modalities):
    return [c for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]


def test_canonical_correlations_reach_the_rank_on_correlated_inputs_and_not_on_noise():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(400, 4, generator=generator)
    mixed = a @ torch.randn(4, 4, generator=generator) + 3.0  # an invertible linear map of a: perfectly correlated
    noise = torch.randn(400, 4, generator=generator)
    assert canonical_correlation_sum(a, a.clone(), 1e-3).item() == pytest.approx(4.0, abs=0.02)
    assert canonical_correlation_sum(a, mixed, 1e-3).item() == pytest.approx(4.0, abs=0.02)
    assert canonical_correlation_sum(a, noise, 1e-3).item() < 0.5
    assert canonical_correlation_sum(a, a.clone(), 1e-3, components=2).item() == pytest.approx(2.0, abs=0.01)
    # the eigendecomposition form S_aa^{-1/2} S_ab S_bb^{-1/2} has the same singular values as Cholesky whitening
    centred_a, centred_n = a - a.mean(0), noise - noise.mean(0)
    cov = lambda x, y: x.T @ y / 399 + (1e-3 * torch.eye(4) if x is y else 0)  # noqa: E731
    inverse_root = lambda s: (lambda w, v: v @ torch.diag(w**-0.5) @ v.T)(*torch.linalg.eigh(s))  # noqa: E731
    direct = inverse_root(cov(centred_a, centred_a)) @ cov(centred_a, centred_n)
    direct = direct @ inverse_root(cov(centred_n, centred_n))
    assert canonical_correlation_sum(a, noise, 1e-3).item() == pytest.approx(
        torch.linalg.matrix_norm(direct, "nuc").item(), rel=1e-4
    )


def test_correlation_loss_averages_layers_and_pairs_and_is_best_on_identical_features():
    generator = torch.Generator().manual_seed(1)
    names = ["image", "text", "audio"]
    shared = torch.randn(300, 4, generator=generator)
    identical = [{m: shared for m in names}] * 2
    independent = [{m: torch.randn(300, 4, generator=generator) for m in names} for _ in range(2)]
    present = {m: torch.ones(300, dtype=torch.bool) for m in names}
    assert correlation_loss(identical, present, 1e-3).item() == pytest.approx(-4.0, abs=0.02)
    assert correlation_loss(independent, present, 1e-3).item() > -0.5
    # a pair counts only where both modalities are present: audio is in no sample, so only image-text is left
    present["audio"] = torch.zeros(300, dtype=torch.bool)
    mixed = [{"image": shared, "text": shared, "audio": independent[0]["audio"]}]
    assert correlation_loss(mixed, present, 1e-3).item() == pytest.approx(-4.0, abs=0.02)


def test_correlation_loss_is_zero_and_finite_with_fewer_than_two_complete_samples():
    pooled = [{"image": torch.randn(5, 8, requires_grad=True), "text": torch.randn(5, 8, requires_grad=True)}]
    one_complete = {"image": torch.tensor([1, 1, 1, 1, 1]).bool(), "text": torch.tensor([0, 0, 1, 0, 0]).bool()}
    loss = correlation_loss(pooled, one_complete, 1e-3)
    assert loss.item() == 0.0
    two_complete = {**one_complete, "text": torch.tensor([0, 1, 1, 0, 0]).bool()}
    loss = correlation_loss(pooled, two_complete, 1e-3)  # two samples, eight dimensions: rank one
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in pooled[0].values())


def test_correlation_loss_stays_float32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(2)
    pooled = [{"image": torch.randn(64, 8, generator=generator), "text": torch.randn(64, 8, generator=generator)}]
    present = {m: torch.ones(64, dtype=torch.bool) for m in ("image", "text")}
    plain = correlation_loss(pooled, present, 1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = correlation_loss([{m: x.bfloat16() for m, x in pooled[0].items()}], present, 1e-3)
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(plain.item(), abs=0.05)


def test_mfb_of_two_modalities_is_sum_pooled_product_with_power_and_l2_normalisation():
    torch.manual_seed(3)
    pooling = FactorizedBilinearPooling(["image", "text"], width=6, factor=5)
    h = {"image": torch.randn(4, 6), "text": torch.randn(4, 6)}
    product = pooling.factors["image"](h["image"]) * pooling.factors["text"](h["text"])  # [4, o * k]
    summed = product.view(4, 6, 5).sum(-1)  # SumPool over k consecutive entries
    expected = torch.nn.functional.normalize(summed.sign() * summed.abs().sqrt(), dim=-1)
    torch.testing.assert_close(pooling(h), expected, atol=1e-4, rtol=1e-4)


def test_deeper_encoders_tap_proportionally_deeper_layers():
    assert tapped_layers(None, {"image": 12, "text": 12}) == {"image": list(range(1, 13)), "text": list(range(1, 13))}
    assert tapped_layers([1, 3, 6], {"image": 12, "text": 6}) == {"image": [2, 6, 12], "text": [1, 3, 6]}
    with pytest.raises(ValueError, match="layers=\\[7\\]: the shallowest encoder has 6 layers"):
        tapped_layers([7], {"image": 12, "text": 6})


def test_encoders_of_other_widths_and_depths(tiny_encoders, tmp_path):
    from robustmm.tiny import save_tiny_encoder

    wide_deep_text = save_tiny_encoder("text", tmp_path / "text", hidden_size=48, num_layers=4)
    model = robustmm.build_model("molt", encoders={"image": tiny_encoders["image"], "text": wide_deep_text}, **TINY)
    assert model.taps == {"image": [1, 2], "text": [2, 4]}
    samples = with_pattern(make_samples(6), ("image", "text"), all_patterns(["image", "text"]))
    out = model(model.collate(samples))
    assert torch.isfinite(out.loss) and out.fused.shape == (6, 16)
    assert model.mask_tokens["text"].shape == (2, 48) and model.projections["text"][0].in_features == 48


@pytest.mark.parametrize(
    "names, options",
    [
        (("image", "text"), {}),
        (("image", "text"), {"fbp": "concat", "pooling": "first", "cca_features": "projected", "cross_heads": 2}),
        (("image", "text", "audio"), {"layers": [2]}),
    ],
)
def test_every_availability_pattern_trains_and_scenarios_match_plain_forward_passes(tiny_encoders, names, options):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, names), **TINY, **options)
    patterns = all_patterns(list(names))
    samples = with_pattern(make_samples(2 * len(patterns), with_audio="audio" in names), names, patterns)
    batch = model.collate(samples)
    for mode in (True, False):
        model.train(mode)
        out = model(batch)
        assert out.logits.shape == (len(samples), 3) and torch.isfinite(out.loss)
        assert out.fused.shape == (len(samples), 16) and out.losses["cca"].item() < 0
    model.zero_grad()
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(grads[f"mask_tokens.{m}"].abs().sum() > 0 for m in names)  # every modality is missing somewhere

    model.eval()
    generator = torch.Generator().manual_seed(4)
    size = len(samples)
    shows = {"complete": {m: torch.ones(size, dtype=torch.bool) for m in names}}
    for m in names:
        shows[f"{m} missing"] = {n: torch.full((size,), n != m) for n in names}
    shows["random"] = {m: torch.rand(size, generator=generator) < 0.5 for m in names}
    scenarios = {}
    for name, shown in shows.items():  # a sample left with nothing shows what it has
        empty = ~torch.stack([shown[m] & batch.present[m] for m in names]).any(0)
        scenarios[name] = {m: shown[m] | empty for m in names}
    assert any(not (s[m] | ~batch.present[m]).all() for s in scenarios.values() for m in names)
    logits = model.logits_by_availability(batch, scenarios)
    for name, shown in scenarios.items():
        hidden = [{k: None if k in shown and not shown[k][i] else v for k, v in s.items()}
                  for i, s in enumerate(samples)]
        torch.testing.assert_close(logits[name], model(model.collate(hidden)).logits)


def test_a_modality_missing_in_all_but_one_sample_or_in_all_of_them(tiny_encoders):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY)
    samples = make_samples(6)
    for s in samples[1:]:
        s["text"] = None
    out = model(model.collate(samples))
    assert out.losses["cca"].item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    for s in samples:
        s["text"] = None
    model.eval()
    alone = model(model.collate(samples)).logits
    assert torch.isfinite(alone).all()
    image_only = model(model.collate([{"image": s["image"]} for s in samples])).logits
    torch.testing.assert_close(alone, image_only)


def test_bf16_autocast_trains_with_a_float32_correlation_loss(tiny_encoders):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY)
    samples = with_pattern(make_samples(8), ("image", "text"), all_patterns(["image", "text"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(model.collate(samples))
    assert out.logits.dtype == torch.bfloat16 and out.losses["cca"].dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_trainable_parameters_per_part(tiny_encoders):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY)
    counts = model.trainable_parameter_counts()
    layers, modalities, d, dc, k = 2, 2, 32, 16, 5
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    assert counts["projections"] == layers * modalities * linear(d, dc)
    assert counts["cross_attention"] == layers * modalities * 3 * linear(dc, dc)
    assert counts["fbp"] == layers * modalities * linear(dc, k * dc)
    assert counts["mask_tokens"] == layers * modalities * d
    transformer_layer = linear(dc, 3 * dc) + linear(dc, dc) + linear(dc, 4 * dc) + linear(4 * dc, dc) + 4 * dc
    assert counts["fusion"] == dc + (1 + layers + modalities) * dc + modalities * linear(d, dc) + transformer_layer
    assert counts["head"] == linear(dc, 3)
    assert counts["cca_outputs"] == layers * modalities * linear(dc, 16)
    assert not any(part.startswith(("adapters.", "backbone.")) for part in counts)  # MoLT's encoders stay frozen


def test_its_own_modules_train_at_a_scaled_learning_rate(tiny_encoders):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY, adapter="lora")
    adapters_and_head, own = model.param_groups(lr=1e-2, weight_decay=0.02)  # module_lr_scale 0.1
    assert "lr" not in adapters_and_head and own["lr"] == pytest.approx(1e-3)
    counts = model.trainable_parameter_counts()
    assert sum(p.numel() for p in adapters_and_head["params"]) == (
        counts["adapters.image"] + counts["adapters.text"] + counts["head"]
    )
    assert sum(p.numel() for p in own["params"]) == counts["total_trainable"] - sum(
        p.numel() for p in adapters_and_head["params"]
    )


def test_options_are_checked_by_name(tiny_encoders):
    image_text = encoders_of(tiny_encoders, ("image", "text"))
    for options, message in [
        ({"fbp": "bilinear"}, "fbp must be one of mfb, concat"),
        ({"fusion_heads": 3}, "fusion_heads=3 does not divide latent_size=16"),
        ({"layers": [0]}, "layers must be distinct layer numbers from 1"),
        ({"layers": [3]}, "layers=\\[3\\]: the shallowest encoder has 2 layers"),
        ({"cca_ridge": 0}, "cca_ridge > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            robustmm.build_model("molt", encoders=image_text, **{**TINY, **options})
    with pytest.raises(ValueError, match="MoLT needs at least two modalities"):
        robustmm.build_model("molt", encoders={"image": tiny_encoders["image"]}, **TINY)


def test_save_and_load_give_identical_logits(tiny_encoders, tmp_path):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), layers=[2], **TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    samples = with_pattern(make_samples(6), ("image", "text"), all_patterns(["image", "text"]))
    before = model.predict(samples)
    model.save_pretrained(tmp_path / "saved")
    loaded = robustmm.load_model(tmp_path / "saved")
    assert isinstance(loaded, type(model)) and loaded.config == model.config
    torch.testing.assert_close(loaded.predict(samples), before, rtol=0, atol=0)


def test_a_few_steps_lower_the_loss_on_a_separable_task(tiny_encoders):
    torch.manual_seed(5)
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY)
    patterns = [("image", "text")] * 4 + [("image",), ("text",)]
    samples = with_pattern(make_samples(48, seed=1), ("image", "text"), patterns)
    batches = [model.collate(samples[i : i + 16]) for i in range(0, 48, 16)]

    def mean_task_loss():
        model.eval()
        with torch.no_grad():
            return torch.stack([model(b).task_loss for b in batches]).mean().item()

    before = mean_task_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(8):
        for batch in batches:
            optimizer.zero_grad()
            model(batch).loss.backward()
            optimizer.step()
    assert mean_task_loss() < 0.5 * before


def test_canonical_correlations_measure_correlation_within_the_rank_whatever_the_scale():
    generator = torch.Generator().manual_seed(4)
    a, noise = torch.randn(4000, 4, generator=generator), torch.randn(4000, 4, generator=generator)
    assert canonical_correlation_sum(a, noise, 1e-3).item() < 0.2  # independent noise: near 0 of at most 4
    assert canonical_correlation_sum(a, a.clone(), 1e-3).item() == pytest.approx(4.0, abs=0.01)  # the rank
    for scale in (3.0, 10.0, 1e3):  # a relative ridge: inflating the features earns nothing
        assert canonical_correlation_sum(scale * a, noise, 1e-3).item() == pytest.approx(
            canonical_correlation_sum(a, noise, 1e-3).item(), rel=1e-6
        )
    few, unrelated = torch.randn(8, 256, generator=generator), torch.randn(8, 256, generator=generator)
    for scale in (1.0, 3.0, 10.0):  # fewer samples than dimensions: never above the rank, n - 1 = 7
        assert canonical_correlation_sum(scale * few, unrelated, 1e-3).item() <= 7.0 + 1e-9


def test_a_batch_too_small_for_the_covariances_warns_once_saying_what_to_set(tiny_encoders):
    model = robustmm.build_model("molt", encoders=encoders_of(tiny_encoders, ("image", "text")), **TINY)
    small = model.collate(make_samples(6))
    with pytest.warns(UserWarning, match="Set the batch size above 16, or cca_size below 6"):
        model.train()(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()(small)
