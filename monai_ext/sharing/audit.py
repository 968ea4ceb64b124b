"""Auditing a bundle before running it: everything its configs would execute, each resolved to one exact object and
accepted only when it is on the allow-list (:mod:`monai_ext.sharing.allowlist`).

The configs are read the way MONAI will run them, but nothing of the bundle is executed or imported:

- every config file of ``configs/`` in any case (``train.JSON`` too) and every file a ``%`` macro pulls in;
- ``#`` rewritten to ``::`` inside expressions and ``@id`` replaced by the reference, as MONAI's resolver does;
- flat override keys (``"network_def#_target_"``) land where MONAI puts them;
- short ``_target_`` names resolved with MONAI's own component locator, dotted ones as its ``locate`` would
  (importing only the allowed packages), and imports bound in the globals that all expressions share;
- ``@id`` references typed from the config (a component's class, a ``.to()`` of it), so that method calls on them
  can be checked; a call on an object of unknown type is flagged;
- ``logging.conf`` read as ``logging.config.fileConfig`` reads it, interpolation included.

:func:`monai_ext.sharing.safe_run.run_bundle` applies the same rules to the live objects at run time.
"""

from __future__ import annotations

import ast
import configparser
import functools
import importlib.util
import inspect
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ext.sharing.allowlist import (
    UNKNOWN,
    Allowlist,
    Namespace,
    Value,
    check_code,
    component_problems,
    qualified_name,
    resolve_dotted,
    rewrite_like_monai,
)

__all__ = ["AuditItem", "audit", "audit_bundle", "format_report", "resolve_target"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# MONAI's ConfigParser binds these in every expression's globals before any import of the bundle.
DEFAULT_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}
# What logging.conf may name; fileConfig evaluates `class` in logging's namespace, then imports it as a dotted path.
KNOWN_HANDLERS = frozenset({"StreamHandler", "FileHandler", "NullHandler"})
KNOWN_FORMATTERS = frozenset({"Formatter"})
STREAM_NAMES = frozenset({"sys.stdout", "sys.stderr"})
SEP = "::"


@dataclass(frozen=True)
class AuditItem:
    """One thing a bundle would execute.

    Attributes:
        source: the file, relative to the bundle root (e.g. ``configs/train.json``).
        key: where in the file (MONAI id with ``::`` separators, or ``[section] option`` for logging.conf).
        kind: ``expression``, ``import``, ``_target_``, ``macro``, ``logging`` or ``module`` (a Python module of the
            bundle's own that imports could reach).
        text: the expression, target or value as written.
        flags: why it is refused; empty when everything it names resolves to allowed objects.
        resolved: the object a ``_target_`` resolves to, as a qualified name (empty for other kinds).
    """

    source: str
    key: str
    kind: str
    text: str
    flags: tuple[str, ...] = ()
    resolved: str = ""


@functools.cache
def _component_locator() -> Any:
    import monai  # noqa: F401 - the components MONAI's runner sees once it has imported monai
    from monai.bundle import ComponentLocator

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


def _load(path: Path) -> Any:
    if path.suffix.lower() == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    """Every item of a config by MONAI id (``a::b::0``), nested ones included; ``#`` in keys means ``::``."""
    if prefix:
        out[prefix] = node
    if isinstance(node, dict):
        for key, value in node.items():
            key_id = str(key).replace("#", SEP)
            _flatten(value, f"{prefix}{SEP}{key_id}" if prefix else key_id, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _flatten(value, f"{prefix}{SEP}{i}", out)


def _merged(config: Any) -> Any:
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


class _ConfigTypes:
    """Static types of ``@id`` references: what each definition of the id evaluates to, as far as it is known."""

    def __init__(self, definitions: dict[str, list[Any]], namespace_globals: dict[str, Value], allowlist: Allowlist):
        self.definitions = definitions
        self.globals = namespace_globals
        self.allowlist = allowlist
        self.cache: dict[str, Value] = {}
        self.resolving: set[str] = set()

    def namespace(self) -> Namespace:
        return Namespace(self.globals, self.ref)

    def ref(self, ref_id: str) -> Value:
        if ref_id in self.cache:
            return self.cache[ref_id]
        if ref_id in self.resolving or ref_id not in self.definitions:
            return UNKNOWN
        self.resolving.add(ref_id)
        values = [self.value_of(definition) for definition in self.definitions[ref_id]]
        self.resolving.discard(ref_id)
        classes = [v.cls for v in values]
        if len(values) == 1:
            result = values[0]
        elif all(cls is not None for cls in classes):
            result = Value.instance(_common_base(classes))
        else:
            result = UNKNOWN
        result = Value(obj=result.obj, cls=result.cls, known=result.known,
                       provable_path=all(v.provable_path for v in values))  # fmt: skip
        self.cache[ref_id] = result
        return result

    def value_of(self, definition: Any) -> Value:
        if isinstance(definition, dict) and isinstance(definition.get("_target_"), str):
            target = definition["_target_"]
            if target.startswith(("$", "@")):
                return UNKNOWN
            obj, reason = resolve_target(target, self.allowlist)
            return Value.instance(obj) if reason is None and inspect.isclass(obj) else UNKNOWN
        if isinstance(definition, str) and definition.startswith("$"):
            return check_code(
                rewrite_like_monai(definition[1:], self.definitions), self.namespace(), self.allowlist
            ).result
        if isinstance(definition, str) and definition.startswith("@"):
            return self.ref(definition[1:].replace("#", SEP))
        if isinstance(definition, str):
            return check_code(repr(definition), self.namespace(), self.allowlist).result
        return UNKNOWN


def _target_flags(node: dict, types: _ConfigTypes, allowlist: Allowlist) -> tuple[list[str], str]:
    target = node["_target_"]

    def provable(value: Any) -> bool:
        return types.value_of(value).provable_path

    if not isinstance(target, str) or target.startswith(("$", "@")):
        computed = f"a computed _target_ ({target!r:.60}) is checked only when the safe runner resolves it"
        return component_problems(node, None, allowlist, provable) + [computed], ""
    obj, reason = resolve_target(target, allowlist)
    if reason:
        return component_problems(node, None, allowlist, provable) + [reason], ""
    return component_problems(node, obj, allowlist, provable), qualified_name(obj) or target


def _logging_literal_flags(value: str, option: str) -> list[str]:
    """``args`` must be a tuple and ``kwargs`` a dict of literals; only ``sys.stdout``/``sys.stderr`` may be named."""
    try:
        node = ast.parse(value, mode="eval").body
    except SyntaxError:
        return [f"{option} = {value!r} does not parse; fileConfig would eval it"]
    expected = ast.Tuple if option == "args" else ast.Dict
    if not isinstance(node, expected):
        return [f"{option} must be a literal {'tuple' if option == 'args' else 'dict'}, got {value!r}"]
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute) and ast.unparse(child) in STREAM_NAMES:
            continue
        if isinstance(child, ast.Name) and child.id == "sys":
            continue
        if isinstance(child, ast.Name | ast.Attribute):
            return [f"{option} = {value!r} names {ast.unparse(child)}; only sys.stdout and sys.stderr are accepted"]
        if not isinstance(child, ast.Constant | ast.Tuple | ast.Dict | ast.List | ast.Load):
            return [f"{option} = {value!r} is not literal: fileConfig would eval it ({type(child).__name__})"]
    return []


def _outside_bundle(path: str) -> bool:
    return os.path.isabs(path) or path.startswith("~") or ".." in Path(path).parts


def audit_logging_conf(path: Path, source: str) -> list[AuditItem]:
    """Read logging.conf as fileConfig does (``%(name)s`` interpolation included) and accept only known classes
    with literal arguments, since fileConfig evaluates ``args`` and ``kwargs`` after interpolating them."""
    parser = configparser.ConfigParser()  # the class and interpolation fileConfig uses
    try:
        parser.read(path)
    except configparser.Error as err:
        return [AuditItem(source, "", "logging", path.name, (f"cannot be parsed: {err}",))]
    items = []
    for section in parser.sections():
        if not section.startswith(("handler_", "formatter_")):
            continue
        handler = section.startswith("handler_")
        for option in ("class", "args", "kwargs"):
            if not parser.has_option(section, option) or (option != "class" and not handler):
                continue
            raw = parser.get(section, option, raw=True).strip()
            try:
                value = parser.get(section, option).strip()
            except configparser.InterpolationError as err:
                items.append(AuditItem(source, f"[{section}] {option}", "logging", raw, (f"interpolation: {err}",)))
                continue
            shown = raw if raw == value else f"{raw} -> {value}"
            if option == "class":
                known = KNOWN_HANDLERS if handler else KNOWN_FORMATTERS
                flags = (
                    []
                    if value.removeprefix("logging.") in known
                    else [
                        f"class {value!r} is not one of the accepted {'handlers' if handler else 'formatters'} "
                        f"({', '.join(sorted(known))})"
                    ]  # fmt: skip
                )
            else:
                flags = _logging_literal_flags(value, option)
                handler_class = parser.get(section, "class", fallback="").removeprefix("logging.")
                if not flags and option == "args" and handler_class == "FileHandler":
                    arguments = ast.parse(value, mode="eval").body.elts
                    target = arguments[0].value if arguments and isinstance(arguments[0], ast.Constant) else None
                    if not isinstance(target, str) or _outside_bundle(target):
                        flags = [f"FileHandler writes to {target!r}, outside the bundle root"]
            items.append(AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags)))
    return items


def _config_files(config_dir: Path) -> list[Path]:
    return sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES)


def _macro_file(value: str, root: Path) -> tuple[Path | None, str | None]:
    path = re.split("::|#", value[1:], maxsplit=1)[0]
    if not path:
        return None, None  # a macro into the same config
    if _outside_bundle(path):
        return None, f"pulls config from {path!r}, outside the bundle"
    target = (root / path).resolve()
    if not target.is_file():
        return None, f"pulls config from {path!r}, which the bundle does not hold (MONAI reads it relative to the cwd)"
    return target, None


def audit_bundle(
    bundle_dir: str | os.PathLike, extra_configs: Sequence[str | os.PathLike] = (), allow: Sequence[str] = ()
) -> list[AuditItem]:
    """List everything the configs of a bundle would execute, each resolved to one object, flagging what is not
    on the allow-list.

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        extra_configs: config files from elsewhere that runs merge with the bundle's; audited too.
        allow: qualified names or module prefixes to accept besides the allow-list (``--allow NAME``).

    Returns:
        One :class:`AuditItem` per expression, import, ``_target_``, macro and logging handler/formatter.

    Raises:
        FileNotFoundError: ``bundle_dir/configs`` does not exist.
        ValueError: a config file is not valid JSON/YAML (naming it).
    """
    allowlist = Allowlist(frozenset(allow))
    root = Path(bundle_dir).resolve()
    config_dir = root / "configs"
    if not config_dir.is_dir():
        raise FileNotFoundError(f"{config_dir}: no configs directory, is {bundle_dir} a MONAI bundle?")
    pending = _config_files(config_dir) + [Path(p).resolve() for p in extra_configs]
    configs: dict[Path, Any] = {}
    while pending:
        path = pending.pop(0)
        if path in configs:
            continue
        try:
            configs[path] = _load(path)
        except Exception as err:  # JSON and YAML raise different types; name the file either way
            raise ValueError(f"{path}: not a valid config file: {err}") from err
        flat: dict[str, Any] = {}
        _flatten(configs[path], "", flat)
        for value in flat.values():
            if isinstance(value, str) and value.startswith("%"):
                target, _ = _macro_file(value, root)
                if target is not None:
                    pending.append(target)

    flats = {}
    for path, config in configs.items():
        flats[path] = {}
        _flatten(_merged(json.loads(json.dumps(config))), "", flats[path])
    definitions: dict[str, list[Any]] = {}
    for flat in flats.values():
        for key, value in flat.items():
            definitions.setdefault(key, []).append(value)
    globals_ = {name: Value.of(resolve_dotted(module, allowlist)[0]) for name, module in DEFAULT_GLOBALS.items()}
    types = _ConfigTypes(definitions, globals_, allowlist)

    items: list[AuditItem] = []
    imports = [(path, key, value) for path, flat in flats.items() for key, value in flat.items()
               if isinstance(value, str) and value.startswith("$") and _is_import(value[1:])]  # fmt: skip
    for path, key, value in imports:  # MONAI evaluates every import first, into globals all expressions share
        flags = check_code(value[1:], types.namespace(), allowlist).problems
        items.append(AuditItem(_source(path, root), key, "import", value, tuple(flags)))
    for path, flat in flats.items():
        source = _source(path, root)
        for key, value in flat.items():
            if isinstance(value, dict) and "_target_" in value:
                flags, resolved = _target_flags(value, types, allowlist)
                target = value["_target_"]
                if isinstance(target, str) and target.startswith("$"):
                    flags += check_code(
                        rewrite_like_monai(target[1:], definitions), types.namespace(), allowlist
                    ).problems
                items.append(AuditItem(source, f"{key}{SEP}_target_" if key else "_target_", "_target_",
                                       str(target), tuple(flags), resolved))  # fmt: skip
            elif key.endswith(f"{SEP}_target_") or key == "_target_":
                if SEP in key and key.rsplit(SEP, 1)[0] in flat and isinstance(flat[key.rsplit(SEP, 1)[0]], dict):
                    continue  # listed with its component above
                flags, resolved = _target_flags({"_target_": value}, types, allowlist)
                items.append(AuditItem(source, key, "_target_", str(value), tuple(flags), resolved))
            elif isinstance(value, str) and value.startswith("$") and not _is_import(value[1:]):
                code = rewrite_like_monai(value[1:], definitions)
                flags = check_code(code, types.namespace(), allowlist).problems
                items.append(AuditItem(source, key, "expression", value, tuple(flags)))
            elif isinstance(value, str) and value.startswith("%"):
                _, reason = _macro_file(value, root)
                items.append(AuditItem(source, key, "macro", value, (reason,) if reason else ()))
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".conf"):
        items += audit_logging_conf(path, _source(path, root))
    return items + bundle_modules(root)


def bundle_modules(root: Path) -> list[AuditItem]:
    """The bundle's own Python modules that an ``import`` could reach: MONAI puts the bundle root on ``sys.path``.

    ``scripts`` is the Model Zoo's place for a bundle's code; any other top-level module or package (``itk.py``,
    ``nrrd.py``, ...) would be imported by MONAI's lazy imports of that name wherever nothing installed takes
    precedence. Each is flagged: it runs the bundle's own code.
    """
    items = []
    for path in sorted(root.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        is_module = path.is_file() and path.suffix == ".py"
        is_package = path.is_dir() and (path / "__init__.py").is_file()
        if not (is_module or is_package) or name == "scripts":
            continue
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        installed = f"an installed module of that name is at {found.origin}" if found and found.origin else (
            "no installed module of that name, so MONAI's lazy import of it would load this file"
        )  # fmt: skip
        flag = f"the bundle's own code under the module name {name!r} ({installed}); needs review"
        items.append(AuditItem(_source(path, root), name, "module", str(path.name), (flag,)))
    return items


def _is_import(code: str) -> bool:
    try:
        tree = ast.parse(code.replace("#", SEP), mode="exec")
    except (SyntaxError, RecursionError):  # too deep to parse: check_code flags it
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Import | ast.ImportFrom)


def _source(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def format_report(items: list[AuditItem]) -> str:
    """One line per item (with the object a ``_target_`` resolves to), then one ``FLAG`` line per reason."""
    lines = []
    for item in items:
        resolved = f" -> {item.resolved}" if item.resolved else ""
        lines.append(f"{'!!' if item.flags else 'ok'} {item.source}: {item.key}: [{item.kind}] {item.text}{resolved}")
        lines += [f"   FLAG {item.source}: {item.key}: {flag}" for flag in item.flags]
    flagged = sum(bool(item.flags) for item in items)
    lines.append(f"{len(items)} items would execute, {flagged} flagged")
    return "\n".join(lines)


def audit(
    bundle_dir: str, strict: bool = False, extra_configs: str | Sequence[str] = (), allow: str | Sequence[str] = ()
) -> str:
    """List everything a bundle's configs would execute (resolved, never run) and flag what is not on the allow-list.

    Args:
        bundle_dir: the bundle root, holding configs/.
        strict: exit with status 1 when anything is flagged.
        extra_configs: config files from outside the bundle that runs merge with it (comma-separated or a list).
        allow: qualified names or module prefixes to accept besides the allow-list (comma-separated or a list);
            they are listed in the report.
    """
    if isinstance(extra_configs, str):
        extra_configs = [p for p in extra_configs.split(",") if p]
    if isinstance(allow, str):
        allow = [a for a in allow.split(",") if a]
    try:
        items = audit_bundle(bundle_dir, extra_configs, allow)
    except (FileNotFoundError, ValueError) as err:
        print(f"audit: {err}")
        raise SystemExit(2) from None
    report = format_report(items)
    if allow:
        report += "\nallowed beyond the allow-list by --allow: " + ", ".join(allow)
    if strict and any(item.flags for item in items):
        print(report)
        raise SystemExit(1)
    return report
