"""The method contract, checked for every registered method (and a plug-in on one): every availability pattern,
no NaN, save/load, resume, per-scenario logits, parameter counts. A new method is held to it by registering."""

import pickle
from copy import deepcopy

import pytest
import torch

import robustmm
from robustmm.encoders import availability_patterns
from robustmm.training import train
from test_model import StopBeforeEpoch, make_samples

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "map": dict(prompt_depth=2, prompt_length=2),
    "rep": dict(buffer_length=2, depth=2),
    "molt": dict(latent_size=16, fusion_layers=1),
}
"""Options that fit the tiny two-layer encoders of the tests."""
VARIANTS = [(name, {}) for name in robustmm.list_methods()] + [("cmpt", {"mwam": True})]


def build(method, encoders, **options):
    return robustmm.build_model(method, encoders=encoders, num_classes=3, seed=1, **SMALL.get(method, {}), **options)


def every_pattern(modalities, n_each=2):
    """Samples of each availability pattern, n_each of each."""
    samples = []
    for index, pattern in enumerate(availability_patterns(modalities)):
        for sample in make_samples(n_each, seed=index, with_audio="audio" in modalities):
            samples.append({k: (None if k in modalities and k not in pattern else v) for k, v in sample.items()})
    return samples


@pytest.fixture(params=VARIANTS, ids=lambda v: v[0] + "".join(f"+{k}" for k in v[1]))
def variant(request):
    return request.param


@pytest.mark.parametrize("modalities", [("image", "text"), ("image", "text", "audio")], ids=["2", "3"])
def test_every_pattern_trains_and_predicts_without_nan(tiny_encoders, variant, modalities):
    method, options = variant
    model = build(method, {m: tiny_encoders[m] for m in modalities}, **options)
    batch = model.collate(every_pattern(list(modalities)))
    out = model.train()(batch)
    assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all()
    assert set(out.losses) == set(out.loss_weights)
    torch.testing.assert_close(out.loss, out.task_loss + sum(out.loss_weights[n] * out.losses[n] for n in out.losses))
    out.loss.backward()
    for part in model.hooks():
        part.on_after_backward()
        part.on_train_batch_end(out)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trained)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    probabilities = model.predict(every_pattern(list(modalities), 1))
    assert probabilities.shape == (len(availability_patterns(list(modalities))), 3)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(probabilities)))


def test_scenario_logits_equal_a_plain_forward_pass(tiny_encoders, variant):
    method, options = variant
    model = build(method, {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}, **options).eval()
    samples = make_samples(5)
    samples[3]["text"] = None
    shows = {
        "complete": ([1] * 5, [1] * 5),
        "text missing": ([1] * 5, [0] * 5),
        "mixed": ([0, 1, 1, 1, 0], [1, 1, 0, 1, 1]),
    }
    scenarios = {n: {"image": torch.tensor(i).bool(), "text": torch.tensor(t).bool()} for n, (i, t) in shows.items()}
    logits = model.logits_by_availability(model.collate(samples), scenarios)
    for name, (image, text) in shows.items():
        shown = [
            {**s, "image": s["image"] if i else None, "text": s["text"] if t else None}
            for s, i, t in zip(samples, image, text)
        ]
        torch.testing.assert_close(logits[name], model(model.collate(shown)).logits, atol=1e-5, rtol=1e-5)


def test_save_and_load_give_identical_logits_and_counts_add_up(tiny_encoders, variant, tmp_path):
    method, options = variant
    model = build(method, {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}, **options)
    with torch.no_grad():  # move every trained tensor away from its initial value
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    batch = model.collate(every_pattern(["image", "text"]))
    model.save_pretrained(tmp_path / "m")
    loaded = robustmm.load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.eval()(batch).logits, model.eval()(batch).logits)
    counts = model.trainable_parameter_counts()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["total_trainable"] == trainable
    assert sum(v for k, v in counts.items() if not k.startswith("total")) == trainable
    assert counts["head"] > 0
    adapted = model.config.adapter.kind != "none"
    assert (counts.get("adapters.image", 0) > 0 and counts.get("adapters.text", 0) > 0) == adapted


@pytest.mark.parametrize("method", robustmm.list_methods())
def test_adapter_none_freezes_every_backbone_and_still_trains(tiny_encoders, method):
    """No adapter parameters; the only trainable backbone parameters are the modules the method names."""
    model = build(method, {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}, adapter="none")
    assert not any("lora_" in name or "vera_" in name for name, _ in model.named_parameters())
    for modality, encoder in model.encoders.items():
        trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
        assert trained == encoder.trained_backbone
        assert all(n.split(".")[-2] in ("layernorm", "final_layer_norm", "post_layernorm") for n in trained)
    counts = model.trainable_parameter_counts()
    assert not any(part.startswith("adapters.") for part in counts)
    out = model.train()(model.collate(every_pattern(["image", "text"])))
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in model.head.parameters())


def test_methods_list_where_their_defaults_depart_from_their_sources(capsys):
    from robustmm.cli import main
    from robustmm.registry import METHODS, PLUGINS

    main(["methods", "--options"])
    printed = capsys.readouterr().out
    for name in ("map", "rep", "molt", "cmpt"):
        assert METHODS.get(name).departures, name
        assert all(departure in printed for departure in METHODS.get(name).departures)
    assert PLUGINS.get("mwam").departures and all(d in printed for d in PLUGINS.get("mwam").departures)
    assert METHODS.get("map").default_adapter().kind == "none" and METHODS.get("molt").default_adapter().kind == "none"
    assert METHODS.get("cmpt").default_adapter().kind == "lora"  # CMPT's source adapts with rank-1 LoRA


def test_a_copy_is_a_model_of_its_own_and_pickles(tiny_encoders, variant):
    method, options = variant
    model = build(method, {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}, **options).eval()
    batch = model.collate(every_pattern(["image", "text"]))
    before = model(batch).logits
    copy = deepcopy(model)
    torch.testing.assert_close(copy(batch).logits, before)
    with torch.no_grad():  # the copy's own parameters drive it, not the original's
        for name, parameter in copy.named_parameters():
            if parameter.requires_grad and not name.startswith(("encoders.", "head.", "plugins.")):
                parameter.add_(1.0)
    changed = copy(batch).logits
    torch.testing.assert_close(model(batch).logits, before)
    if any(p.requires_grad and not n.startswith(("encoders.", "head.", "plugins.")) for n, p in model.named_parameters()):
        assert not torch.allclose(changed, before)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(batch).logits, before)


def test_a_killed_run_resumes_to_the_same_model(tiny_encoders, variant, tmp_path):
    method, options = variant
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    train_samples, val_samples = every_pattern(["image", "text"], 4), every_pattern(["image", "text"], 2)
    settings = dict(epochs=2, warmup_epochs=0.5, batch_size=6, lr=1e-2, progress_bar=False)
    straight = train(build(method, encoders, **options), train_samples, val_samples, out_dir=tmp_path / "a", **settings)
    with pytest.raises(RuntimeError, match="killed"):
        train(build(method, encoders, **options), train_samples, val_samples, out_dir=tmp_path / "b",
              callbacks=[StopBeforeEpoch(1)], **settings)
    resumed = train(build(method, encoders, **options), train_samples, val_samples, out_dir=tmp_path / "b", **settings)
    torch.testing.assert_close(resumed.predict(val_samples), straight.predict(val_samples))
    for name, tensor in straight.trainable_state_dict().items():
        torch.testing.assert_close(resumed.trainable_state_dict()[name], tensor, msg=name)
