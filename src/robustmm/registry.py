"""A registry of methods and one factory, `build_model(method, ...)` (`robustmm.serialisation.load_model` builds a
saved one).

This module imports nothing heavy: the built-in entries are listed by name and imported on first use, so that
`robustmm methods` and `--help` answer without loading PyTorch, and registering a method of one's own is one
decorator.

Code written outside robustmm (a method, plug-in, fusion or dataset) becomes known in two ways, and only
these: its package declares it as an entry point (`ENTRY_POINT_GROUPS`), which lists its name without importing
it, or the user names its module (`--import MODULE`, `imports:` in a run config, `load_model(..., imports=[...])`).
A saved model or a run directory records where its outside code lives (`module:Name`), but robustmm never imports
a module because a file names it (the stance of transformers' `trust_remote_code`): the error says what to pass.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path


ENTRY_POINT_GROUPS = {
    "method": "robustmm.methods",
    "plug-in": "robustmm.plugins",
    "dataset": "robustmm.datasets",
    "fusion": "robustmm.fusions",
}
"""Entry-point group of each kind of registry entry that an installed package may provide."""
_IMPORTED: list[str] = []
"""Modules the user named (`import_modules`), in order, for worker processes to import again."""


class UnknownNameError(ValueError):
    """A name that no registry entry, built-in or outside, has; the message says how to make it known."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(available)}; {how_to_make_known(kind)}")

    def __reduce__(self):  # raised in a worker process, it is pickled back to the parent
        return type(self), (self.kind, self.name, self.available)


def how_to_make_known(kind: str, modules: list[str] | None = None) -> str:
    """The ways to make an outside entry of `kind` known to this process."""
    named = ", ".join(modules) if modules else "MODULE"
    flags = " ".join(f"--import {m}" for m in modules) if modules else "--import MODULE"
    group = ENTRY_POINT_GROUPS.get(kind)
    installed = f"its package declares it as an entry point (group {group}) or " if group else ""
    return (f"an outside {kind} becomes known when {installed}its module is named: {flags} on the command line, "
            f"`imports: [{named}]` in a run config, `imports=[...]` of load_model")


def import_modules(modules, origin: str = "--import") -> None:
    """Import each module the user named (`module` or `module:Name`), so that what it registers is known, and
    remember it for worker processes (`outside_modules`)."""
    for given in modules:
        module = given.partition(":")[0].strip()
        try:
            importlib.import_module(module)
        except ImportError as error:
            hint = "is it installed, or on PYTHONPATH?"
            raise ValueError(f"{origin} {given}: cannot import it ({error}); {hint}") from error
        if module not in _IMPORTED:
            _IMPORTED.append(module)


def outside_modules() -> list[str]:
    """The modules of this process's outside code, for a worker process to import (`import_modules`): those the
    user named and those of outside entries registered however they came (a launcher script's own imports)."""
    modules = list(_IMPORTED)
    for registry in Registry.instances:
        for key, cls in registry.entries.items():
            name = cls.__module__
            # A spawned process runs the main script again itself; code made by exec has no module to import.
            found = name not in ("__main__", "__mp_main__") and getattr(sys.modules.get(name), "__spec__", None)
            if key not in registry.builtin and found:
                modules.append(name)
    return list(dict.fromkeys(modules))


class Registry:
    """Names -> classes, filled by a class decorator, so that one factory looks a name up instead of an if/elif
    chain. Names are matched case-insensitively with '-' as '_'; each class gets its name as `attribute`.

    `builtin` maps the names of the package's own entries to "module:Class"; such an entry is imported when it is
    first asked for, and its module must register it under that name. Installed packages add entries through the
    entry points of the kind's group (`ENTRY_POINT_GROUPS`), imported on first use as well.
    """

    instances: list["Registry"] = []

    def __init__(self, kind: str, attribute: str, builtin: dict[str, str] | None = None):
        self.kind, self.attribute = kind, attribute
        self.group = ENTRY_POINT_GROUPS.get(kind)
        self.builtin = {self.key(name): target for name, target in (builtin or {}).items()}
        self.entries: dict[str, type] = {}
        Registry.instances.append(self)

    @staticmethod
    def key(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def register(self, name: str):
        def decorator(cls: type) -> type:
            key = self.key(name)
            if key in self.entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            setattr(cls, self.attribute, key)
            self.entries[key] = cls
            return cls

        return decorator

    def entry_points(self) -> dict:
        """Key -> installed entry point of this kind's group, read from the packages' metadata: nothing imported.
        A package's entry point does not replace a built-in entry of the same name."""
        if self.group is None:
            return {}
        from importlib.metadata import entry_points

        return {self.key(point.name): point for point in entry_points(group=self.group)
                if self.key(point.name) not in self.builtin}

    def names(self) -> list[str]:
        return sorted(set(self.builtin) | set(self.entries) | set(self.entry_points()))

    def get(self, name: str) -> type:
        key = self.key(name)
        if key not in self.entries and key in self.builtin:
            importlib.import_module(self.builtin[key].partition(":")[0])
            if key not in self.entries:
                raise RuntimeError(f"{self.builtin[key]} did not register {self.kind} {key!r}")
        elif key not in self.entries and key in (points := self.entry_points()):
            self._load(key, points[key])
        if key not in self.entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self.entries[key]

    def _load(self, key: str, point) -> None:
        """Import an entry point; a class that its module did not register is registered under the point's name."""
        where = f"entry point {point.name} = {point.value} (group {self.group})"
        try:
            loaded = point.load()
        except Exception as error:  # a broken installed package: say which, whatever it raised
            raise ValueError(f"{self.kind} {key!r}: {where} failed to import: {error!r}") from error
        if key in self.entries:
            return
        if not isinstance(loaded, type):
            raise ValueError(f"{self.kind} {key!r}: {where} is not a class")
        others = [name for name, cls in self.entries.items() if cls is loaded]
        if others:
            raise ValueError(f"{self.kind} {key!r}: {where} registers itself as {others[0]!r}; use one name")
        self.register(key)(loaded)

    def source(self, name: str) -> str | None:
        """Where an outside entry lives, "module:Class" (None for the package's own), for saved files to record."""
        key = self.key(name)
        if key in self.builtin:
            return None
        if key in self.entries:
            return f"{self.entries[key].__module__}:{self.entries[key].__qualname__}"
        point = self.entry_points().get(key)
        return point.value if point else None

    def summary(self, name: str) -> str:
        """The first line of the entry's docstring, read from its source when it is not imported yet."""
        key = self.key(name)
        if key in self.entries:
            doc = self.entries[key].__doc__
        else:
            target = self.builtin[key] if key in self.builtin else self.entry_points()[key].value
            module, _, class_name = target.partition(":")
            try:
                tree = ast.parse(_source_file(module).read_text())
            except (OSError, SyntaxError, AttributeError, ValueError):  # compiled or not found: no summary
                return ""
            found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name.strip()]
            doc = ast.get_docstring(found[0]) if found else None
        lines = (doc or "").strip().splitlines()
        return lines[0] if lines else ""


def _source_file(module: str) -> Path:
    """The file of `module`, found without importing its parent packages (`find_spec` would import them)."""
    top, *rest = module.strip().split(".")
    origin = Path(importlib.util.find_spec(top).origin)
    if not rest:
        return origin
    path = origin.parent.joinpath(*rest)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


METHODS = Registry(
    "method",
    "method",
    builtin={
        "baseline": "robustmm.methods.baseline:PlaceholderFusion",
        "dropout": "robustmm.methods.baseline:ModalityDropout",
        "cmpt": "robustmm.methods.cmpt:CMPT",
        "map": "robustmm.methods.map:MissingAwarePrompts",
        "rep": "robustmm.methods.rep:ReplayPrompting",
        "molt": "robustmm.methods.molt:MoLT",
    },
)
PLUGINS = Registry("plug-in", "plugin", builtin={"mwam": "robustmm.methods.mwam:MWAM"})
"""Additions to any method (`ModelConfig.plugins`), e.g. `build_model("cmpt", ..., mwam=True)`."""
FUSIONS = Registry(
    "fusion",
    "fusion",
    builtin={
        "sum": "robustmm.fusions.sum:SumFusion",
        "concat": "robustmm.fusions.concat:ConcatFusion",
        "gated_mean": "robustmm.fusions.gated_mean:GatedMean",
        "transformer": "robustmm.fusions.transformer:TransformerFusion",
    },
)
"""How a method's modality features become one (`ModelConfig.fusion`), e.g. `build_model(..., fusion="concat")`."""


def register_method(name: str):
    """Class decorator: make a `MultimodalModel` subclass available as `build_model(name, ...)`."""
    return METHODS.register(name)


def register_fusion(name: str):
    """Class decorator: make a `robustmm.fusions.Fusion` subclass available as `fusion=name` on any method whose
    fusion is generic."""
    return FUSIONS.register(name)


def list_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type:
    """The `MultimodalModel` subclass registered as `name`."""
    return METHODS.get(name)


def build_model(method: str = "cmpt", *, encoders: dict, num_classes: int, **options):
    """Build a model of `method` over `encoders` (modality name -> hub id, local path, `EncoderConfig` or dict).

    Options are the method's config fields (see `robustmm.methods`), plus the adapter shorthands `adapter`
    ("lora" / "dora" / "vera"), `rank`, `alpha` and `adapter_dropout`, the fusion's as `fusion_<option>`, and the
    plug-ins' as `<plug-in>` and `<plug-in>_<option>` (`robustmm methods --options` lists them).
    """
    cls = get_method(method)
    return cls(cls.config_from_kwargs(encoders, num_classes, **options))


def model_sources(method: str, plugins, fusion: str | None = None) -> dict[str, str]:
    """Name -> "module:Class" of the outside method, plug-ins and fusion of a model, which saved files record."""
    found = {method: METHODS.source(method), **{name: PLUGINS.source(name) for name in plugins}}
    if fusion is not None:
        found[fusion] = FUSIONS.source(fusion)
    return {name: source for name, source in found.items() if source}


def unknown_code_message(where, error: UnknownNameError, sources: dict[str, str], imports=()) -> str:
    """Why a saved model or run cannot be rebuilt here and what makes its outside code known: the file records
    where the code lives, which is imported only when the user names it."""
    modules = list(dict.fromkeys([*imports, *(s.partition(":")[0] for s in sources.values())]))
    recorded = f", which it records as {sources[error.name]}" if error.name in sources else ""
    return (f"{where}: {error.kind} {error.name!r} is not known in this process{recorded}. robustmm imports no "
            f"code because a file names it: {how_to_make_known(error.kind, modules)}")
