"""The method contract (`robustmm.contract`), checked for every registered method (and a plug-in on one): every
availability pattern, no NaN, save/load, resume, per-scenario logits, parameter counts. A new method is held to it
by registering; `robustmm check-method` runs the same checks on a method of one's own."""

import pytest

import robustmm
from robustmm import contract
from robustmm.contract import build, every_pattern

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [(name, {}) for name in robustmm.list_methods()] + [
    ("cmpt", {"mwam": True}),
    ("baseline", {"fusion": "gated_mean"}),
    ("cmpt", {"fusion": "concat"}),
    ("map", {"fusion": "transformer", "fusion_layers": 1}),
]
"""Every method with its defaults, a plug-in on one, and fusions swapped on methods whose fusion is generic."""


def variant_id(variant) -> str:
    method, options = variant
    return method + "".join(f"+{key}" if value is True else f"+{value}" for key, value in list(options.items())[:1])


@pytest.fixture(params=VARIANTS, ids=variant_id)
def variant(request):
    return request.param


@pytest.mark.parametrize("modalities", [("image", "text"), ("image", "text", "audio")], ids=["2", "3"])
def test_every_pattern_trains_and_predicts_without_nan(tiny_encoders, variant, modalities):
    method, options = variant
    contract.check_every_pattern(method, {m: tiny_encoders[m] for m in modalities}, **options)


def test_scenario_logits_equal_a_plain_forward_pass(tiny_encoders, variant):
    method, options = variant
    contract.check_scenario_logits(method, tiny_encoders, **options)


def test_save_and_load_give_identical_logits_and_counts_add_up(tiny_encoders, variant, tmp_path):
    method, options = variant
    contract.check_save_and_load(method, tiny_encoders, tmp_path, **options)


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
    assert METHODS.get("map").default_adapter().type == "none" and METHODS.get("molt").default_adapter().type == "none"
    assert METHODS.get("cmpt").default_adapter().type == "lora"  # CMPT's source adapts with rank-1 LoRA


def test_a_copy_is_a_model_of_its_own_and_pickles(tiny_encoders, variant):
    method, options = variant
    contract.check_copy(method, tiny_encoders, **options)


def test_a_killed_run_resumes_to_the_same_model(tiny_encoders, variant, tmp_path):
    method, options = variant
    contract.check_resume(method, tiny_encoders, tmp_path, **options)


def test_a_check_that_fails_is_reported_by_name_and_the_others_still_run(tiny_encoders, tmp_path, monkeypatch):
    """A method whose fusion ignores what is visible breaks the scenario check only; `check_method` reports it."""
    from robustmm.methods.baseline import PlaceholderFusion

    calls = []
    monkeypatch.setattr(contract, "tiny_encoders", lambda root: tiny_encoders)
    monkeypatch.setattr(PlaceholderFusion, "logits_by_availability", lambda self, batch, scenarios: {
        name: self(batch).logits for name in scenarios})
    failed = contract.check_method("baseline", log=calls.append)
    assert failed == ["scenario logits equal plain forward passes"]
    assert len(calls) == len(contract.CHECKS) and calls[2].startswith("FAIL  scenario logits")
