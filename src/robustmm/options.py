"""A method's keyword options (`build_model(method, ..., **options)`): what they are, their help, and the config
they make.

A method's options are its config dataclass's fields (each option's help is the string literal under its field),
the adapter shorthands (`adapter`, `rank`, `alpha`, `adapter_dropout`, which make its `AdapterConfig`), the
fusion's (`fusion` names it, `fusion_<option>` sets its options), and each plug-in's, as `<plugin>` (on or off)
and `<plugin>_<option>`. Value checks live with the configs
(`checks.check_field_types`, then each config's checks across fields).
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
import typing
from dataclasses import MISSING, fields, is_dataclass, replace
from typing import Any

from .adapters import AdapterConfig
from .registry import FUSIONS, PLUGINS

ADAPTER_SHORTHANDS = {"adapter": "type", "rank": "rank", "alpha": "alpha", "adapter_dropout": "dropout"}
"""Options of every method that make its `AdapterConfig` -> the AdapterConfig field each sets. `adapter` may also
be a whole AdapterConfig."""
CONFIG_ONLY = ("encoders", "num_classes", "plugins", "adapter", "fusion_options")
"""Config fields that are arguments or made from other options, not options of their own."""


def described_fields(config_class, skip=()) -> dict[str, tuple[Any, Any]]:
    """Name -> (type, default) of a config dataclass's fields that have a default."""
    hints = typing.get_type_hints(config_class)
    return {
        f.name: (hints[f.name], f.default if f.default is not MISSING else f.default_factory())
        for f in fields(config_class)
        if f.name not in skip and (f.default is not MISSING or f.default_factory is not MISSING)
    }


@functools.lru_cache(maxsize=None)
def field_docs(config_class: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), read from the source of the class and of
    the dataclasses it derives from; a subclass's docstring of a field replaces its base's. A class without
    source (made by `exec`) has none."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
        for node, following in zip(body, body[1:]):
            is_doc = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
                if isinstance(following.value.value, str):
                    docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def first_sentence(doc: str) -> str:
    """The first sentence of a help text, on one line (a full stop followed by a capital or a code span ends it,
    so that `eq. 4` and `e.g. x` do not)."""
    text = " ".join(doc.split())
    found = re.match(r"(.+?[.!?])\s+(?=[A-Z`])", text)
    return found.group(1) if found else text


def default_adapter(method_class) -> AdapterConfig:
    return method_class.config_class.__dataclass_fields__["adapter"].default_factory()


def adapter_option_fields(method_class) -> dict[str, tuple[Any, Any]]:
    """The adapter shorthands, name -> (type, default), from the method's default `AdapterConfig`."""
    adapter = default_adapter(method_class)
    hints = typing.get_type_hints(AdapterConfig)
    return {option: (hints[name], getattr(adapter, name)) for option, name in ADAPTER_SHORTHANDS.items()}


def default_fusion(method_class) -> str:
    return method_class.config_class.__dataclass_fields__["fusion"].default


def fusion_option_fields(name: str) -> dict[str, tuple[Any, Any]]:
    """A fusion's keyword options, `fusion_<option>` -> (type, default)."""
    return {f"fusion_{k}": v for k, v in described_fields(FUSIONS.get(name).config_class).items()}


def fusion_option_help(name: str) -> dict[str, str]:
    return {f"fusion_{k}": doc for k, doc in field_docs(FUSIONS.get(name).config_class).items()}


def option_help(method_class) -> dict[str, str]:
    """Option name -> its help (the field's docstring), for the method's own options, the adapter shorthands and
    its default fusion's options."""
    docs = dict(field_docs(method_class.config_class))
    adapter_docs = field_docs(AdapterConfig)
    docs.update({option: adapter_docs.get(name, "") for option, name in ADAPTER_SHORTHANDS.items()})
    docs.update(fusion_option_help(default_fusion(method_class)))
    return docs


def own_option_fields(method_class) -> dict[str, tuple[Any, Any]]:
    """The method's keyword options, name -> (type, default): its config's fields, the adapter shorthands and the
    options of its default fusion."""
    options = described_fields(method_class.config_class, skip=CONFIG_ONLY)
    options.update(adapter_option_fields(method_class))
    options.update(fusion_option_fields(default_fusion(method_class)))
    return options


def plugin_option_help(name: str) -> dict[str, str]:
    """`<plugin>_<option>` -> its help, for a plug-in's options."""
    return {f"{name}_{k}": doc for k, doc in field_docs(PLUGINS.get(name).config_class).items()}


def plugin_option_fields(name: str) -> dict[str, tuple[Any, Any]]:
    """The keyword options of a plug-in on any method: `<plugin>` (on or off) and `<plugin>_<option>`."""
    options = {name: (bool, False)}
    options.update({f"{name}_{k}": v for k, v in described_fields(PLUGINS.get(name).config_class).items()})
    return options


def option_fields(method_class) -> dict[str, tuple[Any, Any]]:
    """Every keyword option of `config_from_kwargs`: the method's own, every fusion's and every plug-in's."""
    options = own_option_fields(method_class)
    for name in FUSIONS.names():
        for option, described in fusion_option_fields(name).items():
            options.setdefault(option, described)
    for name in PLUGINS.names():
        options.update(plugin_option_fields(name))
    return options


def adapter_from_options(method_class, options: dict) -> None:
    """Replace the adapter shorthands in `options` (in place) by the `adapter` they make."""
    given = {ADAPTER_SHORTHANDS[k]: options.pop(k) for k in list(options) if k in ADAPTER_SHORTHANDS}
    whole = given.pop("type") if isinstance(given.get("type"), (AdapterConfig, dict)) else None
    if isinstance(whole, dict):
        whole = AdapterConfig.from_dict(whole)
    if whole is not None or given:
        options["adapter"] = replace(whole or default_adapter(method_class), **given)


def plugins_from_options(options: dict) -> dict[str, dict]:
    """The `plugins` mapping from `plugins=` and the `<plugin>` / `<plugin>_<option>` options (popped)."""
    plugins = {name: dict(o) for name, o in (options.pop("plugins", None) or {}).items()}
    for name in PLUGINS.names():
        if name in options:
            if options.pop(name):
                plugins.setdefault(name, {})
            else:
                plugins.pop(name, None)
        prefixed = {k: options.pop(k) for k in list(options) if k.startswith(f"{name}_")}
        if prefixed and name not in plugins:
            raise ValueError(f"{', '.join(sorted(prefixed))} set without the plug-in: add {name}=true")
        for key, value in prefixed.items():
            plugins[name][key.removeprefix(f"{name}_")] = value
    return plugins


def fusion_from_options(config_fields: set[str], options: dict) -> None:
    """Gather the `fusion_<option>` options (in place) into `fusion_options`."""
    prefixed = {k: options.pop(k) for k in list(options) if k.startswith("fusion_") and k not in config_fields}
    if prefixed:
        options["fusion_options"] = {**dict(options.get("fusion_options") or {}),
                                     **{k.removeprefix("fusion_"): v for k, v in prefixed.items()}}


def config_from_kwargs(method_class, encoders, num_classes, **options):
    """The method's config from keyword options; an unknown option is a TypeError that lists the known ones."""
    config_fields = {f.name for f in fields(method_class.config_class)}
    adapter_from_options(method_class, options)
    plugins = plugins_from_options(options)
    fusion_from_options(config_fields, options)
    unknown = set(options) - config_fields
    if unknown:
        raise TypeError(
            f"method {method_class.method!r} has no option {', '.join(sorted(unknown))}; "
            f"its options are {', '.join(option_fields(method_class))}"
        )
    return method_class.config_class(encoders=encoders, num_classes=num_classes, plugins=plugins, **options)


def check_options(method_class, options: dict) -> None:
    """Check option values without loading any encoder: the config is built over two stand-in encoders."""
    config_from_kwargs(method_class, {"first": "first", "second": "second"}, 2, **options)
