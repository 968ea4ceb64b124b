"""Reading a bundle's configs the way MONAI will run them, without running any of it: files and ``%`` macros, flat
override keys, ``_target_`` resolution as MONAI's locator does it, and the static types of ``@id`` references."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any

from monai_ext.sharing.allowlist import (
    Allowlist,
    component_problems,
    qualified_name,
    resolve_dotted,
)
from monai_ext.sharing.expressions import UNKNOWN, Check, Namespace, Value, check_code, rewrite_like_monai
from monai_ext.sharing.sandbox.layout import DEFINITION_FOLDERS

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


# MONAI's ConfigParser binds these in every expression's globals before any import of the bundle.
DEFAULT_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}


SEP = "::"


@functools.cache
def _component_locator() -> Any:
    # the components MONAI's runner can find by short name once a config has imported monai and monai_ext
    import monai  # noqa: F401
    from monai.bundle import ComponentLocator

    import monai_ext.networks  # noqa: F401

    return ComponentLocator()


def resolve_target(target: str, allowlist: Allowlist) -> tuple[Any, str | None]:
    """The object MONAI instantiates for a string ``_target_``, or ``None`` and why it cannot be trusted.

    Short names go through MONAI's component locator; MONAI falls back to ``locate``, which reaches Python's
    builtins, for names it does not know, and picks by import order among several.
    """
    if "." not in target:
        modules = _component_locator().get_component_module_name(target)
        if modules is None:
            return None, (
                f"short _target_ {target!r} is no MONAI component: MONAI looks it up by name and falls back to "
                "Python's builtins (eval, open, __import__)"
            )
        if isinstance(modules, list):
            return None, (
                f"short _target_ {target!r} is ambiguous ({', '.join(modules)}): MONAI picks one by import order; "
                "write the full dotted name"
            )
        target = f"{modules}.{target}"
    return resolve_dotted(target, allowlist)


def load_config(path: Path) -> Any:
    if not path.is_file():  # a FIFO or device would block or never end: never opened
        raise ValueError("not a regular file")
    if path.suffix.lower() == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    """Every item of a config by MONAI id (``a::b::0``), nested ones included; ``#`` in keys means ``::``."""
    if prefix:
        out[prefix] = node
    if isinstance(node, dict):
        for key, value in node.items():
            key_id = str(key).replace("#", SEP)
            flatten(value, f"{prefix}{SEP}{key_id}" if prefix else key_id, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            flatten(value, f"{prefix}{SEP}{i}", out)


def merged(config: Any) -> Any:
    """A config with its flat ``a#b`` (or ``a::b``) keys applied to the nested items, in order, as MONAI's
    ``load_config_files`` applies them; a key whose parent is not in the file stays as it is (an override layer)."""
    if not isinstance(config, dict):
        return config
    merged: dict[str, Any] = {}
    for key, value in config.items():
        parts = str(key).replace("#", SEP).split(SEP)
        parent: Any = merged
        for part in parts[:-1]:
            if isinstance(parent, dict) and part in parent:
                parent = parent[part]
            elif isinstance(parent, list) and part.isdigit() and int(part) < len(parent):
                parent = parent[int(part)]
            else:
                parent = None
                break
        if len(parts) > 1 and isinstance(parent, dict):
            parent[parts[-1]] = value
        elif len(parts) > 1 and isinstance(parent, list) and parts[-1].isdigit() and int(parts[-1]) < len(parent):
            parent[int(parts[-1])] = value
        else:
            merged[key] = value
    return merged


def _common_base(classes: list[type]) -> type | None:
    for candidate in classes[0].__mro__:
        if candidate is not object and all(issubclass(cls, candidate) for cls in classes):
            return candidate
    return None


class ConfigTypes:
    """Static types of ``@id`` references: what each definition of the id evaluates to, as far as it is known.

    A reference is typed from the definitions in its own file when there are any (``train.json``'s ``network_def``
    is not ``inference_trt.json``'s), else from every file that defines it.
    """

    def __init__(self, flats: dict[Path, dict[str, Any]], namespace_globals: dict[str, Value], allowlist: Allowlist):
        self.flats = flats
        self.ids = {key for flat in flats.values() for key in flat}
        self.globals = namespace_globals
        self.allowlist = allowlist
        self.cache: dict[tuple[Path | None, str], Value] = {}
        self.resolving: set[tuple[Path | None, str]] = set()

    def namespace(self, path: Path | None) -> Namespace:
        return Namespace(self.globals, functools.partial(self.ref, path=path))

    def check(self, code: str, path: Path | None) -> Check:
        return check_code(rewrite_like_monai(code, self.ids), self.namespace(path), self.allowlist)

    def _definitions(self, ref_id: str, path: Path | None) -> list[tuple[Path, Any]]:
        if path in self.flats and ref_id in self.flats[path]:
            return [(path, self.flats[path][ref_id])]
        # the Zoo layers evaluate.json and multi_gpu_*.json over train.json
        base = [other for other in self.flats if other.name.lower() == "train.json" and ref_id in self.flats[other]]
        if base:
            return [(base[0], self.flats[base[0]][ref_id])]
        return [(other, flat[ref_id]) for other, flat in self.flats.items() if ref_id in flat]

    def ref(self, ref_id: str, path: Path | None = None) -> Value:
        key = (path, ref_id)
        if key in self.cache:
            return self.cache[key]
        definitions = self._definitions(ref_id, path)
        if key in self.resolving or not definitions:
            return UNKNOWN
        self.resolving.add(key)
        values = [self.value_of(definition, where) for where, definition in definitions]
        self.resolving.discard(key)
        classes = [v.cls for v in values]
        if len(values) == 1:
            result = values[0]
        elif all(cls is not None for cls in classes):
            result = Value.instance(_common_base(classes))
        else:
            result = UNKNOWN
        result = Value(obj=result.obj, cls=result.cls, known=result.known,
                       provable_path=all(v.provable_path for v in values))  # fmt: skip
        self.cache[key] = result
        return result

    def value_of(self, definition: Any, path: Path | None) -> Value:
        if isinstance(definition, dict) and isinstance(definition.get("_target_"), str):
            target = definition["_target_"]
            if target.startswith(("$", "@")):
                return UNKNOWN
            obj, reason = resolve_target(target, self.allowlist)
            return Value.instance(obj) if reason is None and inspect.isclass(obj) else UNKNOWN
        if isinstance(definition, str) and definition.startswith("$"):
            return self.check(definition[1:], path).result
        if isinstance(definition, str) and definition.startswith("@"):
            return self.ref(definition[1:].replace("#", SEP), path)
        if isinstance(definition, str) and definition.startswith("%"):
            file, ref_id = split_macro(definition)
            return UNKNOWN if file else self.ref(ref_id, path)
        if isinstance(definition, str):
            return check_code(repr(definition), self.namespace(path), self.allowlist).result
        return UNKNOWN


def target_flags(node: dict, types: ConfigTypes, allowlist: Allowlist, path: Path) -> tuple[list[str], str]:
    target = node["_target_"]

    def provable(value: Any) -> bool:
        return types.value_of(value, path).provable_path

    if not isinstance(target, str) or target.startswith(("$", "@")):
        computed = f"a computed _target_ ({target!r:.60}) is checked only when the safe runner resolves it"
        return component_problems(node, None, allowlist, provable) + [computed], ""
    obj, reason = resolve_target(target, allowlist)
    if reason:
        return component_problems(node, None, allowlist, provable) + [reason], ""
    return component_problems(node, obj, allowlist, provable), qualified_name(obj) or target


def outside_bundle(path: str) -> bool:
    return os.path.isabs(path) or path.startswith("~") or ".." in Path(path).parts


def config_files(config_dir: Path) -> list[Path]:
    return sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES)


def split_macro(value: str) -> tuple[str, str]:
    """``%file.json#id`` as MONAI splits it: a file only when the text names one with a config suffix, so
    ``%train#postprocessing`` is the id ``train::postprocessing`` of the same config."""
    from monai.bundle import ConfigParser

    return ConfigParser.split_path_id(value[1:])


def outside_definition(path: str) -> bool:
    """Whether a path relative to the bundle lies outside its definition (``configs/``, ``scripts/``, ``docs/``)."""
    parts = Path(os.path.normpath(path)).parts
    return not parts or parts[0] not in DEFINITION_FOLDERS


def undefined_macros(config: Any, root: Path) -> list[str]:
    """Every ``%`` macro of ``config``, and of the config files it pulls in, that pulls from a file of the bundle
    outside its definition: one a run may have written, and MONAI's own runner would read as config later."""
    problems, pending, seen = [], [config], set()
    while pending:
        flat: dict[str, Any] = {}
        flatten(pending.pop(), "", flat)
        for key, value in flat.items():
            if not (isinstance(value, str) and value.startswith("%")):
                continue
            path, _ = split_macro(value)
            target, reason = macro_file(value, root)
            if path and not outside_bundle(path) and outside_definition(path):
                problems.append(f"{key}: {value}: {reason}")
            elif target is not None and target not in seen:
                seen.add(target)
                pending.append(load_config(target))
    return problems


def macro_file(value: str, root: Path) -> tuple[Path | None, str | None]:
    path, _ = split_macro(value)
    if not path:
        return None, None  # a macro into the same config
    if outside_bundle(path):
        return None, f"pulls config from {path!r}, outside the bundle"
    if outside_definition(path):
        folders = ", ".join(f"{folder}/" for folder in DEFINITION_FOLDERS)
        return None, f"pulls config from {path!r}, outside the bundle's definition ({folders}), where a run may write"
    target = (root / path).resolve()
    if not target.is_file():
        return None, f"pulls config from {path!r}, which the bundle does not hold (MONAI reads it relative to the cwd)"
    return target, None


def is_import(code: str) -> bool:
    try:
        tree = ast.parse(code.replace("#", SEP), mode="exec")
    except (SyntaxError, RecursionError):  # too deep to parse: check_code flags it
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Import | ast.ImportFrom)


def source_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
