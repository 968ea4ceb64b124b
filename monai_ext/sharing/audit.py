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
import builtins
import configparser
import dataclasses
import functools
import importlib.machinery
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ext.sharing.allowlist import (
    CHECKED_LOADER,
    UNKNOWN,
    WRITERS,
    Allowlist,
    Check,
    Namespace,
    Value,
    canonical_name,
    check_code,
    component_problems,
    qualified_name,
    reaches_local_services,
    resolve_dotted,
    rewrite_like_monai,
    sandbox_stops,
)
from monai_ext.sharing.confined import BUNDLE_OUTPUT_FOLDERS

__all__ = ["GROUPS", "AuditItem", "audit", "audit_bundle", "format_report", "resolve_target", "write_folders"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
DEFINITION_FOLDERS = ("configs", "docs", "scripts")
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
        kind: ``expression``, ``import``, ``_target_``, ``macro``, ``path`` (an absolute path in a config),
            ``logging`` or ``module`` (a Python module of the bundle's own that imports could reach).
        text: the expression, target or value as written.
        flags: why the allow-list cannot vouch for it; empty when everything it names resolves to allowed objects.
        resolved: the object a ``_target_`` resolves to, as a qualified name (empty for other kinds).
        group: where a reviewer finds it (a key of :data:`GROUPS`); empty when there is nothing to report.
        detail: what the group is about: the resolved path written or loaded, the code run, why it is not contained.
        paths: the folders it writes into, or the files it loads, where the config gives them (relative to the
            bundle, or absolute).
    """

    source: str
    key: str
    kind: str
    text: str
    flags: tuple[str, ...] = ()
    resolved: str = ""
    group: str = ""
    detail: str = ""
    paths: tuple[str, ...] = ()

    @property
    def contained(self) -> bool:
        """Whether the kernel's rules in ``monai_ext run`` bound what it can do."""
        return self.group != "uncontained"

    @property
    def needs_review(self) -> bool:
        """Whether a person should read it: the bundle's own code, what tries what the sandbox stops, and what the
        sandbox does not contain."""
        return self.group in ("code", "stopped", "uncontained")

    @property
    def fails_strict(self) -> bool:
        """Whether ``audit --strict`` fails on it: hostile intent, contained or not."""
        return self.group in ("stopped", "uncontained")


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


def _load(path: Path) -> Any:
    if not path.is_file():  # a FIFO or device would block or never end: never opened
        raise ValueError("not a regular file")
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
            file, ref_id = _split_macro(definition)
            return UNKNOWN if file else self.ref(ref_id, path)
        if isinstance(definition, str):
            return check_code(repr(definition), self.namespace(path), self.allowlist).result
        return UNKNOWN


def _target_flags(node: dict, types: _ConfigTypes, allowlist: Allowlist, path: Path) -> tuple[list[str], str]:
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
                if value.removeprefix("logging.") not in known:
                    flag = (f"class {value!r} is not one of the accepted {'handlers' if handler else 'formatters'} "
                            f"({', '.join(sorted(known))})")  # fmt: skip
                    item = AuditItem(source, f"[{section}] {option}", "logging", shown, (flag,))
                    items.append(_replace(item, group="uncontained", detail=UNCONTAINED_HANDLER) if handler else item)
                    continue
                flags = []
            else:
                flags = _logging_literal_flags(value, option)
                handler_class = parser.get(section, "class", fallback="").removeprefix("logging.")
                if not flags and option == "args" and handler_class == "FileHandler":
                    arguments = ast.parse(value, mode="eval").body.elts
                    target = arguments[0].value if arguments and isinstance(arguments[0], ast.Constant) else None
                    if not isinstance(target, str) or _outside_bundle(target):
                        flags = [f"FileHandler writes to {target!r}, outside the bundle root"]
                    where = _where(target) if isinstance(target, str) else "a path that is not a literal"
                    items.append(AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags),
                                           group="writes", detail=where))  # fmt: skip
                    continue
            items.append(AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags)))
    return items


def _config_files(config_dir: Path) -> list[Path]:
    return sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES)


def _split_macro(value: str) -> tuple[str, str]:
    """``%file.json#id`` as MONAI splits it: a file only when the text names one with a config suffix, so
    ``%train#postprocessing`` is the id ``train::postprocessing`` of the same config."""
    from monai.bundle import ConfigParser

    return ConfigParser.split_path_id(value[1:])


def _macro_file(value: str, root: Path) -> tuple[Path | None, str | None]:
    path, _ = _split_macro(value)
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
    on the allow-list and sorting what a reviewer should see into groups (:data:`GROUPS`).

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        extra_configs: config files from elsewhere that runs merge with the bundle's; audited too.
        allow: qualified names or module prefixes to accept besides the allow-list (``--allow NAME``).

    Returns:
        One :class:`AuditItem` per expression, import, ``_target_``, macro, absolute path, logging handler/formatter
        and module of the bundle's own.

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
    globals_ = {name: Value.of(resolve_dotted(module, allowlist)[0]) for name, module in DEFAULT_GLOBALS.items()}
    types = _ConfigTypes(flats, globals_, allowlist)

    items: list[AuditItem] = []
    imports = [(path, key, value) for path, flat in flats.items() for key, value in flat.items()
               if isinstance(value, str) and value.startswith("$") and _is_import(value[1:])]  # fmt: skip
    for path, key, value in imports:  # MONAI evaluates every import first, into globals all expressions share
        check = check_code(value[1:], types.namespace(path), allowlist)
        items.append(_grouped(AuditItem(_source(path, root), key, "import", value, tuple(check.problems)), check.names))
    for path, flat in flats.items():
        source = _source(path, root)
        for key, value in flat.items():
            if isinstance(value, dict) and "_target_" in value:
                items.append(_component_item(source, f"{key}{SEP}_target_" if key else "_target_", value, types, path))
            elif key.endswith(f"{SEP}_target_") or key == "_target_":
                if SEP in key and key.rsplit(SEP, 1)[0] in flat and isinstance(flat[key.rsplit(SEP, 1)[0]], dict):
                    continue  # listed with its component above
                items.append(_component_item(source, key, {"_target_": value}, types, path))
            elif isinstance(value, str) and value.startswith("$") and not _is_import(value[1:]):
                check = types.check(value[1:], path)
                item = AuditItem(source, key, "expression", value, tuple(check.problems))
                items.append(_grouped(item, check.names, check.writes))
            elif isinstance(value, str) and value.startswith("%"):
                _, reason = _macro_file(value, root)
                item = AuditItem(source, key, "macro", value, (reason,) if reason else ())
                items.append(_replace(item, group="reads", detail=value[1:]) if reason else item)
            elif isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
                items.append(AuditItem(source, key, "path", value, group="reads", detail=_where(value)))
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".conf"):
        items += [_grouped(item) for item in audit_logging_conf(path, _source(path, root))]
    return _on_own_objects(items) + bundle_modules(root)


def _on_own_objects(items: list[AuditItem]) -> list[AuditItem]:
    """Expressions the allow-list cannot type because they use an object of the bundle's own code
    (``@network_def.to(@device)`` where ``network_def`` is ``scripts.networks.UNesT``) join that code's group."""
    own = {item.key.removesuffix(f"{SEP}_target_") for item in items if item.group == "code"}
    grew = True
    while grew:
        using = {item.key for item in items if item.key not in own and _references(item.text) & own}
        grew = bool(using)
        own |= using
    return [
        _replace(item, group="code", detail="uses the bundle's own objects: " + ", ".join(
            "@" + ref.replace(SEP, "#") for ref in sorted(_references(item.text) & own)))
        if item.group == "untyped" and _references(item.text) & own else item
        for item in items
    ]  # fmt: skip


def _references(text: str) -> set[str]:
    return {ref[1:].replace("#", SEP) for ref in re.findall(r"@[\w#:]+", text)}


def _target_name(target: Any) -> str:
    """The dotted name a ``_target_`` that was not resolved stands for: MONAI's ``locate`` falls back to Python's
    builtins for a short name it does not know."""
    if not isinstance(target, str) or target.startswith(("$", "@")):
        return ""
    return f"builtins.{target}" if "." not in target and hasattr(builtins, target) else target


def _component_item(source: str, key: str, node: dict, types: _ConfigTypes, path: Path) -> AuditItem:
    flags, resolved = _target_flags(node, types, types.allowlist, path)
    target = node["_target_"]
    names, writes = [name for name in (resolved or _target_name(target),) if name], []
    if isinstance(target, str) and target.startswith("$"):
        check = types.check(target[1:], path)
        flags += check.problems
        names, writes = check.names, check.writes
    if resolved in WRITERS and WRITERS[resolved][0] in node:
        writes = [(resolved, types.value_of(node[WRITERS[resolved][0]], path))]
    item = AuditItem(source, key, "_target_", str(target), tuple(flags), resolved)
    if node.get("_mode_") == "debug" or "_debug_" in node:
        return _replace(item, group="uncontained", detail=UNCONTAINED_DEBUGGER)
    if resolved in CHECKPOINT_LOADERS:
        argument = CHECKPOINT_LOADERS[resolved]
        loaded = types.value_of(node[argument], path) if argument in node else UNKNOWN
        return _replace(item, group="checkpoints", detail=_where(loaded), paths=_known_paths([loaded]))
    return _grouped(item, names, writes)


# Callables that load a checkpoint -> the keyword of the path they load. In a confined run every torch.load
# is weights-only, and a TorchScript archive holds no pickled Python objects.
CHECKPOINT_LOADERS = {
    "torch.serialization.load": "f",
    "torch.jit._serialization.load": "f",
    "monai.handlers.checkpoint_loader.CheckpointLoader": "load_path",
    CHECKED_LOADER: "load_path",
    "monai_ext.sharing.checkpoint.load_checkpoint": "path",
}
# Not covered by the kernel's rules: a UNIX socket may connect to a local service's named socket (seccomp does not see
# the path, and Landlock restricts it only from ABI 9 on), and a debugger reads the user's terminal. Each is decided
# from the objects the config resolves to (allowlist.REACHES_LOCAL_SERVICES), not from its text.
UNCONTAINED_SOCKET = (
    "a UNIX socket can reach a local service (/run/docker.sock, an ssh-agent), which the sandbox does not restrict"
)
UNCONTAINED_DEBUGGER = "a debugger stops the run and takes commands from the terminal of whoever runs it"
UNCONTAINED_HANDLER = (
    "a logging handler of another class may write to a local service (SysLogHandler to /dev/log), which the sandbox "
    "does not restrict"
)
GROUPS = {
    "code": ("Runs the bundle's own code", "needs review: it runs confined, but what it computes is only known by "
             "reading it"),
    "writes": ("Writes to", "contained: the sandbox allows only the bundle's output folders and the folders you name"),
    "reads": ("Reads from", "contained: the sandbox allows only the bundle and the folders you name"),
    "checkpoints": ("Loads checkpoints", "contained: every torch.load of a confined run is weights-only"),
    "untyped": ("The allow-list cannot vouch for", "contained: it runs confined like everything else"),
    "stopped": ("Tries what the sandbox stops", "needs review: no bundle needs it, and run any other way it succeeds; "
                "--strict fails on these"),
    "uncontained": ("Not contained by the sandbox", "needs review: --strict fails on these"),
}  # fmt: skip


def _replace(item: AuditItem, **changes: Any) -> AuditItem:
    return dataclasses.replace(item, **changes)


def _own_code(item: AuditItem) -> bool:
    name = item.resolved or item.text.lstrip("$")
    if item.kind == "module" or name.startswith("scripts."):
        return True
    return item.kind in ("import", "expression") and re.search(r"(?<![\w.])scripts\b", item.text) is not None


def _grouped(
    item: AuditItem,
    names: Sequence[str] = (),
    writes: Sequence[tuple[str, Value]] = (),
) -> AuditItem:
    """The item with the group a reviewer finds it in (empty: allowed and nothing to report) and its detail."""
    if item.group:
        return item
    local = [name for name in names if reaches_local_services(name)]
    if local:
        return _replace(item, group="uncontained", detail=f"{UNCONTAINED_SOCKET}: {', '.join(dict.fromkeys(local))}")
    tries = _what_it_tries(names)
    if tries:
        return _replace(item, group="stopped", detail="; ".join(f"{what}: {', '.join(n)}" for what, n in tries.items()))
    if _own_code(item):
        return _replace(item, group="code", detail=item.resolved or item.text)
    loaders = [name for name in names if name in CHECKPOINT_LOADERS]
    if loaders:
        return _replace(item, group="checkpoints", detail=f"through {loaders[0]}")
    if writes:
        targets = [target for _, target in writes]
        folders = [_folder(writer, target) for writer, target in writes]
        return _replace(item, group="writes", detail="; ".join(map(_where, targets)), paths=_known_paths(folders))
    if item.flags:
        return _replace(item, group="untyped")
    return item


def _what_it_tries(names: Sequence[str]) -> dict[str, list[str]]:
    """What of the sandbox's stops the named objects try, each with the most specific names (``subprocess.run``,
    not also ``subprocess``)."""
    found = list(dict.fromkeys(canonical_name(name) for name in names if sandbox_stops(name)))
    specific = [name for name in found if not any(other.startswith(name + ".") for other in found)]
    tries: dict[str, list[str]] = {}
    for name in specific:
        for what in sandbox_stops(name):
            tries.setdefault(what, []).append(name)
    return tries


def _folder(writer: str, target: Value) -> Value:
    """The folder a writer writes into: its path argument, or that path's parent when the argument names a file."""
    keyword = WRITERS[writer][0] if writer in WRITERS else ""
    if keyword.endswith("_dir") or keyword in ("name", "root", "dirname") or not target.known:
        return target
    return Value.of(os.path.dirname(target.obj)) if isinstance(target.obj, str) else UNKNOWN


def _known_paths(values: Sequence[Value]) -> tuple[str, ...]:
    return tuple(v.obj for v in values if v.known and isinstance(v.obj, str))


def write_folders(items: Sequence[AuditItem]) -> list[str]:
    """The bundle's top-level folders that the configs write to by a relative path (``./output``, ``@bundle_root +
    '/eval'`` with ``bundle_root`` ".") besides the bundle's definition (``configs``, ``docs``, ``scripts``)."""
    folders = set()
    for item in items:
        for path in item.paths if item.group == "writes" else ():
            parts = Path(os.path.normpath(path)).parts
            if path and not os.path.isabs(path) and parts[0] not in ("..", ".", *DEFINITION_FOLDERS):
                folders.add(parts[0])
    return sorted(folders)


def _where(path: Value | str) -> str:
    """A path as a confined run of the bundle would meet it, and what the sandbox says to it."""
    value = path if isinstance(path, str) else (path.obj if path.known and isinstance(path.obj, str) else None)
    if value is None:
        if isinstance(path, Value) and path.provable_path:
            return "a path inside the bundle, known only at run time"
        return "a path known only at run time"
    if os.path.isabs(value) or value.startswith("~"):
        return f"{value} (outside the bundle: a confined run reaches it only when you name it on the command line)"
    relative = os.path.normpath(value)
    top = relative.split(os.sep)[0]
    if top == "..":
        return f"{value} (outside the bundle: the sandbox refuses it)"
    if top in BUNDLE_OUTPUT_FOLDERS:
        return f"BUNDLE/{relative} (an output folder of the bundle)"
    return f"BUNDLE/{relative}" if relative != "." else "BUNDLE"


def module_name(path: Path) -> str | None:
    """The top-level import name ``path`` provides (a module of any suffix Python imports, or a package with any
    ``__init__``), or None."""
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    if path.is_file():
        name = next((path.name[: -len(suffix)] for suffix in suffixes if path.name.endswith(suffix)), None)
    elif path.is_dir() and any((path / f"__init__{suffix}").is_file() for suffix in suffixes):
        name = path.name
    else:
        return None
    return name if name and name.isidentifier() else None


def _installed_origin(name: str) -> str | None:
    """Where an installed top-level module ``name`` is, found without importing anything (a top-level name has no
    parent package to import) and without the working directory, which may be the bundle."""
    if name in sys.builtin_module_names:
        return "built-in"
    found = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p not in ("", os.getcwd())])
    return found.origin if found else None


def bundle_modules(root: Path) -> list[AuditItem]:
    """The bundle's own Python modules that an ``import`` could reach: MONAI puts the bundle root on ``sys.path``.

    ``scripts`` is the Model Zoo's place for a bundle's code: each of its files is listed for a reviewer to read.
    Any other top-level name Python can import, whatever its suffix (``itk.py``, ``fire.pyc``, ``yaml.abi3.so``, a
    package with ``__init__.pyc``), would be imported by MONAI's lazy imports of that name wherever nothing installed
    takes precedence (``monai_ext run`` puts the bundle last on ``sys.path``): each is flagged. Special files (a FIFO
    named ``scripts/net.py``) are flagged and never opened.
    """
    items = []
    for path in sorted((root / "scripts").rglob("*")) if (root / "scripts").is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            continue
        source, module = _source(path, root), ".".join(path.relative_to(root).with_suffix("").parts)
        if not path.is_file() or path.is_symlink():
            flag = "not a regular file (a link, FIFO or device), never opened; needs review"
            items.append(AuditItem(source, module, "module", path.name, (flag,), group="code"))
        elif path.suffix == ".py":
            lines = len(path.read_bytes().splitlines())
            items.append(AuditItem(source, module.removesuffix(".__init__"), "module",
                                   f"{lines} line{'' if lines == 1 else 's'} of Python the configs can import",
                                   group="code"))  # fmt: skip
        elif any(path.name.endswith(suffix) for suffix in importlib.machinery.all_suffixes()):
            flag = "compiled or native code the configs can import, which cannot be read as source; needs review"
            items.append(AuditItem(source, module, "module", path.name, (flag,), group="code"))
    for path in sorted(root.iterdir()):
        name = module_name(path)
        if name is None or name == "scripts":
            continue
        origin = _installed_origin(name)
        installed = f"an installed module of that name is at {origin}" if origin else (
            "no installed module of that name, so MONAI's lazy import of it would load this file"
        )  # fmt: skip
        flag = f"the bundle's own code under the module name {name!r} ({installed}); needs review"
        items.append(AuditItem(_source(path, root), name, "module", str(path.name), (flag,), group="code"))
    return items


def _is_import(code: str) -> bool:
    try:
        tree = ast.parse(code.replace("#", SEP), mode="exec")
    except (SyntaxError, RecursionError):  # too deep to parse: check_code flags it
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Import | ast.ImportFrom)


def _source(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def format_report(items: list[AuditItem], verbose: bool = False) -> str:
    """A reviewer's report: the findings grouped (:data:`GROUPS`), each with its file, key, text and what it reaches,
    then a summary line. ``verbose`` also lists every item that resolved to allowed objects."""
    lines = [
        "Statuses assume the bundle runs under `python -m monai_ext run` (confined by the kernel); run any other way,",
        "everything below runs with your rights.",
    ]
    for group, (title, status) in GROUPS.items():
        members = [item for item in items if item.group == group]
        if not members:
            continue
        lines += ["", f"{title} ({len(members)}) [{status}]"]
        for item in members:
            resolved = f" -> {item.resolved}" if item.resolved and item.resolved != item.text else ""
            lines.append(f"  {item.source}: {item.key}: {item.text:.160}{resolved}")
            if item.detail and item.detail != item.text:
                lines.append(f"      {item.detail}")
            lines += [f"      why: {flag}" for flag in item.flags]
    if verbose:
        lines += ["", "Resolved to allowed objects:"]
        lines += [f"  {i.source}: {i.key}: {i.text:.160}" + (f" -> {i.resolved}" if i.resolved else "")
                  for i in items if not i.group]  # fmt: skip
    review = {group: sum(item.group == group for item in items) for group in ("code", "stopped", "uncontained")}
    listed = sum(bool(item.group) for item in items)
    lines += [
        "",
        f"{len(items)} items: {len(items) - listed} resolve to allowed objects, {listed} listed above; "
        f"{sum(review.values())} need review ({review['code']} the bundle's own code, {review['stopped']} try what "
        f"the sandbox stops, {review['uncontained']} not contained by the sandbox)",
    ]
    return "\n".join(lines)


def audit(
    bundle_dir: str,
    strict: bool = False,
    extra_configs: str | Sequence[str] = (),
    allow: str | Sequence[str] = (),
    verbose: bool = False,
) -> str:
    """Report what a bundle would do, for a reviewer, without running any of it.

    The report groups the bundle's own code it runs, where it writes and reads, the checkpoints it loads, what the
    allow-list cannot vouch for, and what the sandbox of `monai_ext run` does not contain. Each group says whether
    it is contained or needs review.

    Example:

        python -m monai_ext audit received/spleen_ct_segmentation --strict

    Args:
        bundle_dir: the bundle root, holding configs/.
        strict: exit with status 1 when anything tries what the sandbox stops or is not contained by it.
        extra_configs: config files from outside the bundle that runs merge with it (comma-separated or a list).
        allow: qualified names or module prefixes to accept besides the allow-list (comma-separated or a list);
            they are listed in the report.
        verbose: also list every item that resolved to allowed objects.
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
    report = f"Audit of {bundle_dir}\n" + format_report(items, verbose)
    if allow:
        report += "\nallowed beyond the allow-list by --allow: " + ", ".join(allow)
    if strict and any(item.fails_strict for item in items):
        print(report)
        raise SystemExit(1)
    return report
