"""Keyword options: choices typed as `Literal` and checked by one validator, help from the fields' docstrings,
`robustmm methods --options`, the adapter shorthands, and imports that run one way."""

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from robustmm.checks import check_field_types, describe_type
from robustmm.config import ConfigError, config_from_raw
from robustmm.options import field_docs, first_sentence, option_help
from robustmm.registry import METHODS

SOURCE = Path(__file__).resolve().parent.parent / "src" / "robustmm"


@dataclass
class Choosy:
    mode: Literal["fast", "slow"] = "fast"
    """How to go. Fast or slow."""
    maybe: Literal["a", "b"] | None = None

    def __post_init__(self):
        check_field_types(self, "choosy ")


def test_a_literal_option_is_one_of_its_choices_and_the_message_names_option_value_and_choices():
    assert Choosy("slow").mode == "slow" and Choosy(maybe="b").maybe == "b" and Choosy(maybe=None).maybe is None
    with pytest.raises(ValueError, match="choosy mode must be one of fast, slow, got 'quick'"):
        Choosy("quick")
    with pytest.raises(ValueError, match="choosy maybe must be one of a, b, got 'c'"):
        Choosy(maybe="c")
    with pytest.raises(ValueError, match="choosy mode must be one of fast, slow, got 1"):
        Choosy(1)
    assert describe_type(Literal["a", "b"] | None) == "a | b | None" and describe_type(list[int]) == "list[int]"


@pytest.mark.parametrize("method, option, value, message", [
    ("cmpt", "align_denominator", "half", "align_denominator must be one of none, paper, symmetric, got 'half'"),
    ("baseline", "modality_dropout", "some", "modality_dropout must be one of none, leave_one_out, subsets"),
    ("map", "prompt_type", "deep", "prompt_type must be one of input, attention, got 'deep'"),
    ("molt", "pooling", "max", "pooling must be one of mean, first, got 'max'"),
    ("cmpt", "adapter", "prefix", "adapter type must be one of none, lora, dora, vera, got 'prefix'"),
    ("cmpt", "mwam_frm_reduce", "max", "mwam_frm_reduce must be one of mean, sum, got 'max'"),
])
def test_every_method_checks_its_choices_by_the_one_validator(method, option, value, message):
    extra = {"mwam": True} if option.startswith("mwam_") else {}
    with pytest.raises(ValueError, match=message):
        METHODS.get(method).check_options({option: value, **extra})


def test_a_run_config_reads_choices_and_refuses_others_by_key():
    raw = {"dataset": {"name": "generic", "root": "."}, "model": {"method": "cmpt"}, "train": {"optimizer": "sgd"}}
    assert config_from_raw(raw).train.optimizer == "sgd"
    raw = {"dataset": {"name": "generic", "root": "."}, "train": {"warmup_method": "cosine"}}
    with pytest.raises(ConfigError, match="train.warmup_method must be one of linear, constant, got 'cosine'"):
        config_from_raw(raw)
    raw = {"dataset": {"name": "generic", "root": "."}, "model": {"options": {"fusion_norm": "batchnorm"}}}
    with pytest.raises(ConfigError, match="fusion_norm must be one of none, layernorm, got 'batchnorm'"):
        config_from_raw(raw)


def test_help_is_the_fields_docstring_and_a_subclass_keeps_its_bases():
    cmpt = METHODS.get("cmpt")
    docs = field_docs(cmpt.config_class)
    assert docs["align_denominator"].startswith("`none` (the default")
    assert docs["modality_dropout"].startswith("Training-time modality dropout")  # declared again, documented once
    helps = option_help(cmpt)
    assert helps["rank"] and helps["adapter"]  # the shorthands' help is AdapterConfig's
    assert first_sentence("lambda of eq. 7, i.e. its weight. More here.") == "lambda of eq. 7, i.e. its weight."
    assert first_sentence("One. `two`") == "One."


def test_methods_options_show_choices_defaults_and_help(capsys):
    from robustmm.cli import main

    main(["methods", "--options"])
    printed = capsys.readouterr().out
    assert "    align_denominator: none | paper | symmetric = 'none'\n" in printed
    assert "    mwam_mode: gradient | loss | hybrid = 'hybrid'\n" in printed
    assert "    rank: int = 1\n        The adapter's rank (paper: 1).\n" in printed
    assert "        Training-time modality dropout.\n" in printed
    assert all(len(line) <= 116 for line in printed.splitlines() if line.startswith(" " * 8))  # wrapped help


def test_the_adapter_shorthands_make_one_adapter_config():
    cmpt = METHODS.get("cmpt")
    config = cmpt.config_from_kwargs({"a": "a", "b": "b"}, 2, adapter="dora", rank=4, adapter_dropout=0.0)
    assert (config.adapter.type, config.adapter.rank, config.adapter.dropout, config.adapter.alpha) == ("dora", 4, 0, 1)
    whole = cmpt.config_from_kwargs({"a": "a", "b": "b"}, 2, adapter={"type": "vera", "rank": 2}, alpha=2.0).adapter
    assert (whole.type, whole.rank, whole.alpha) == ("vera", 2, 2.0)
    assert METHODS.get("map").config_from_kwargs({"a": "a", "b": "b"}, 2, rank=3).adapter.type == "none"
    assert list(cmpt.own_option_fields())[-5:] == ["adapter", "rank", "alpha", "adapter_dropout", "fusion_norm"]


def imported_modules(path: Path) -> set[str]:
    """The package modules a file imports, anywhere in it (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found |= {node.module or ""} | ({a.name for a in node.names} if not node.module else set())
    return found


def test_imports_run_one_way_registry_then_fusions_options_and_serialisation_then_model_then_methods():
    assert not imported_modules(SOURCE / "registry.py") & {"model", "options", "serialisation", "methods"}
    for lower in ("options.py", "serialisation.py"):
        assert "model" not in imported_modules(SOURCE / lower), lower
    assert not any("methods" in m for m in imported_modules(SOURCE / "model.py"))
    for fusion in (SOURCE / "fusions").glob("*.py"):  # under the model: they import the registry, not the model
        assert "model" not in imported_modules(fusion) and "robustmm.model" not in fusion.read_text(), fusion
