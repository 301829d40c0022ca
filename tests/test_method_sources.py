"""Each method's optimisation settings are its source's where the source states them, and visible: the paper
configs give them per method (`by_method`), and every method says which learning rate its own modules train at."""

import importlib

import pytest

from robustmm.config import ConfigError, load_config
from robustmm.registry import METHODS

IMAGE_TEXT_PAPER_CONFIGS = ["mmimdb_map", "food101_map", "mmimdb_map_each", "food101", "mmimdb", "hateful_memes"]


def with_method(config: str, method: str, *overrides):
    return load_config(config, [("model.method", method, "--method"), *overrides])


@pytest.mark.parametrize("config", IMAGE_TEXT_PAPER_CONFIGS)
def test_the_paper_configs_give_each_method_its_sources_settings(config):
    cmpt = with_method(config, "cmpt")
    assert cmpt.train.lr == 1e-3 and cmpt.train.batch_size == 8 and cmpt.train.epochs == 10  # CMPT's Table 6
    for method in ("map", "rep"):  # MAP's code, and REP's fork of it: lr 1e-2, batch 256, 20 epochs
        run = with_method(config, method)
        assert run.train.lr == 1e-2 and run.train.batch_size * run.train.accumulate_grad_batches == 256
        assert run.train.epochs == 20 and run.train.warmup_epochs == 2 and run.train.poly_power == 1.0
    assert with_method(config, "rep").model.options["module_lr_scale"] == 1.0  # the code's buffers at 1e-2
    assert with_method(config, "molt").train.batch_size == 64
    missing_protocol = "map" in config
    assert (with_method(config, "map").model.options.get("modality_dropout") == "none") == missing_protocol


def test_the_command_line_still_wins_over_a_methods_settings():
    run = with_method("mmimdb_map", "map", ("train.lr", 0.5, "--lr"))
    assert run.train.lr == 0.5 and run.train.epochs == 20


def test_a_malformed_by_method_section_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: {name: generic, root: data}\nby_method: [map]\n")
    with pytest.raises(ConfigError, match="by_method must map method names"):
        load_config(str(path))


@pytest.mark.parametrize("method", ["baseline", "cmpt", "map", "rep", "molt"])
def test_every_method_says_which_learning_rate_its_own_modules_train_at(method):
    cls = METHODS.get(method)
    documented = (importlib.import_module(cls.__module__).__doc__ + (cls.config_class.__doc__ or "")).lower()
    assert "learning rate" in documented or " lr " in documented
    assert "module_lr_scale" in documented or method == "baseline"
