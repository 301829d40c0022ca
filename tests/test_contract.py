"""The method contract (`robustmm.contract`), checked for every registered method (and a plug-in on one): every
availability pattern, no NaN, save/load, resume, per-scenario logits, parameter counts. A new method is held to it
by registering; `robustmm check-method` runs the same checks on a method of one's own."""

import pytest

import robustmm
from robustmm import contract

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [(name, {}) for name in robustmm.list_methods()] + [("cmpt", {"mwam": True})]


@pytest.fixture(params=VARIANTS, ids=lambda v: v[0] + "".join(f"+{k}" for k in v[1]))
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
