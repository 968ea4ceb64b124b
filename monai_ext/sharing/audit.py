"""Listing and vetting everything a bundle's configs would execute, without executing any of it.

A MONAI bundle is code: ``$`` expressions are ``eval``-ed, ``$import`` lines are imported, every ``_target_`` is
imported and called, and ``logging.conf`` names handler classes whose ``args`` are ``eval``-ed too. Before running a
bundle received from another lab, :func:`audit_bundle` lists all of these, parsed with :mod:`ast` only, and flags
whatever reaches beyond monai, monai_ext, torch, numpy, ignite and harmless standard-library modules, or calls
something dangerous: shell and process calls, ``eval``/``exec``/``__import__``, network access, unpickling, deletions,
and file writes to absolute or ``..`` paths.
"""

from __future__ import annotations

import ast
import configparser
import functools
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AuditItem", "audit", "audit_bundle", "audit_expression", "format_report"]

# MONAI's ConfigParser makes these names available to every expression without an import.
DEFAULT_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}
ALLOWED_ROOTS = frozenset({"monai", "monai_ext", "torch", "numpy", "ignite"})
HARMLESS_STDLIB = frozenset(
    {
        "math", "functools", "itertools", "operator", "collections", "copy", "json", "glob", "re", "string",
        "random", "datetime", "time", "typing", "dataclasses", "enum", "numbers", "statistics", "fnmatch",
        "logging", "warnings", "pathlib", "os.path", "posixpath", "sys.stdout", "sys.stderr",
    }
)  # fmt: skip
# Modules harmless only in part: importing them is fine, each use is checked.
PARTLY_HARMLESS = frozenset({"os", "sys"})
# os is only harmless for these attributes; anything else under os is flagged.
HARMLESS_OS = frozenset({"os.path", "os.sep", "os.getcwd", "os.cpu_count", "os.environ", "os.listdir", "os.makedirs"})
SAFE_BUILTINS = frozenset(
    {
        "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "hasattr", "int",
        "isinstance", "issubclass", "len", "list", "map", "max", "min", "print", "range", "repr", "reversed", "round",
        "set", "slice", "sorted", "str", "sum", "tuple", "type", "zip", "None", "True", "False", "ValueError",
        "TypeError", "KeyError", "RuntimeError",
    }
)  # fmt: skip
DANGEROUS_BUILTINS = {
    "eval": "eval runs arbitrary code",
    "exec": "exec runs arbitrary code",
    "compile": "compile builds code objects to run",
    "__import__": "__import__ imports modules dynamically, hiding what runs",
    "getattr": "getattr reaches attributes by computed name, hiding what runs",
    "setattr": "setattr changes objects by computed name",
    "delattr": "delattr changes objects by computed name",
    "globals": "globals exposes the interpreter's namespace",
    "locals": "locals exposes the interpreter's namespace",
    "vars": "vars exposes object namespaces",
    "breakpoint": "breakpoint stops for interactive input",
    "input": "input waits for interactive input",
}
# Qualified-name prefixes and why each is dangerous.
DANGEROUS_PREFIXES = {
    "os.system": "runs a shell command",
    "os.popen": "runs a shell command",
    "os.exec*": "replaces the process with another program",
    "os.spawn*": "starts another program",
    "os.fork": "forks the process",
    "os.kill": "sends signals to processes",
    "os.remove": "deletes files",
    "os.unlink": "deletes files",
    "os.rmdir": "deletes directories",
    "os.removedirs": "deletes directories",
    "os.rename": "moves files",
    "os.replace": "moves files",
    "os.chmod": "changes file permissions",
    "os.environ.update": "changes the environment",
    "subprocess": "starts other programs",
    "pty": "starts other programs",
    "shutil.rmtree": "deletes directory trees",
    "shutil.move": "moves files",
    "socket": "opens network connections",
    "urllib": "accesses the network",
    "http": "accesses the network",
    "requests": "accesses the network",
    "httpx": "accesses the network",
    "aiohttp": "accesses the network",
    "ftplib": "accesses the network",
    "smtplib": "accesses the network",
    "telnetlib": "accesses the network",
    "torch.hub": "downloads code and weights from the network",
    "monai.apps.download_url": "downloads from the network",
    "monai.apps.download_and_extract": "downloads from the network",
    "monai.apps.utils.download_url": "downloads from the network",
    "monai.apps.utils.download_and_extract": "downloads from the network",
    "monai.bundle.download": "downloads from the network",
    "monai.bundle.load": "downloads from the network",
    "pickle": "unpickling runs arbitrary code",
    "torch.serialization": "loads checkpoints or changes what weights-only loads may call (add_safe_globals); "
    "load weights with monai_ext.sharing.checkpoint.load_checkpoint",
    "torch.load": "loads a checkpoint without a SHA-256 check; use monai_ext.sharing.checkpoint.load_checkpoint",
    "monai.handlers.CheckpointLoader": "loads weights without a SHA-256 check; use "
    "monai_ext.sharing.checkpoint.CheckedCheckpointLoader",
    "monai.handlers.checkpoint_loader": "loads weights without a SHA-256 check; use "
    "monai_ext.sharing.checkpoint.CheckedCheckpointLoader",
    "torch.package": "imports code packed with the model",
    "torch.ops.load_library": "loads native code",
    "marshal": "loads code objects",
    "shelve": "unpickling runs arbitrary code",
    "dill": "unpickling runs arbitrary code",
    "joblib.load": "unpickling runs arbitrary code",
    "numpy.load": "can unpickle objects (allow_pickle)",
    "ctypes": "calls native code",
    "importlib": "imports modules dynamically, hiding what runs",
    "builtins": "reaches Python's builtins by name",
    "sys.modules": "reaches any loaded module",
    "logging.handlers.SocketHandler": "sends logs over the network",
    "logging.handlers.DatagramHandler": "sends logs over the network",
    "logging.handlers.HTTPHandler": "sends logs over the network",
    "logging.handlers.SMTPHandler": "sends logs by e-mail",
    "logging.handlers.SysLogHandler": "can send logs over the network",
}
# Callables that write files, and the index of their path argument (None: the receiver, e.g. Path(...).write_text).
WRITERS = {
    "open": 0,
    "builtins.open": 0,
    "torch.save": 1,
    "numpy.save": 0,
    "numpy.savez": 0,
    "numpy.savez_compressed": 0,
    "numpy.savetxt": 0,
    "shutil.copy": 1,
    "shutil.copy2": 1,
    "shutil.copyfile": 1,
    "shutil.copytree": 1,
    "os.makedirs": 0,
    "os.mkdir": 0,
    "logging.FileHandler": 0,
    "logging.handlers.RotatingFileHandler": 0,
    "logging.handlers.TimedRotatingFileHandler": 0,
    "logging.handlers.WatchedFileHandler": 0,
}
PATH_WRITE_METHODS = frozenset({"write_text", "write_bytes", "touch", "mkdir", "symlink_to", "hardlink_to"})
PATH_DELETE_METHODS = frozenset({"unlink", "rmdir", "rmtree"})
# MONAI's reference syntax (@id, @id#sub or @id::sub) is not Python; it is replaced by a placeholder name to parse.
REFERENCE = re.compile(r"@\w*(?:(?:::|#)\w*)*")
REF_NAME = "__monai_ref__"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class AuditItem:
    """One thing a bundle would execute.

    Attributes:
        source: the file, relative to the bundle root (e.g. ``configs/train.json``).
        key: where in the file (MONAI ``#``-separated id, or ``[section] option`` for logging.conf).
        kind: ``expression``, ``import``, ``_target_``, ``macro`` or ``logging``.
        text: the expression, target or value as written.
        flags: why it needs a human look; empty when it stays within the allowed packages.
    """

    source: str
    key: str
    kind: str
    text: str
    flags: tuple[str, ...] = ()


def _qualname(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _outside_root(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    return os.path.isabs(value) or value.startswith("~") or ".." in Path(value).parts


def _path_literals(node: ast.AST | None) -> list[str]:
    if node is None:
        return []
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _under(qualname: str, prefix: str) -> bool:
    if prefix.endswith("*"):
        return qualname.startswith(prefix[:-1])
    return qualname == prefix or qualname.startswith(prefix + ".")


def _dangers(qualname: str) -> list[str]:
    return [f"{qualname}: {why}" for prefix, why in DANGEROUS_PREFIXES.items() if _under(qualname, prefix)][:1]


def _module_flags(qualname: str) -> list[str]:
    dangers = _dangers(qualname)
    if dangers:
        return dangers
    allowed = qualname.split(".")[0] in ALLOWED_ROOTS or any(_under(qualname, p) for p in HARMLESS_OS | HARMLESS_STDLIB)
    if not allowed:
        root = qualname.split(".")[0]
        hint = " (the bundle's own code: review it)" if root == "scripts" else ""
        return [f"{qualname}: reaches beyond monai, monai_ext, torch, numpy and harmless stdlib{hint}"]
    return []


def _write_flags(qualname: str, path_node: ast.AST | None, mode_node: ast.AST | None) -> list[str]:
    if qualname in ("open", "builtins.open", ".open()"):
        mode = mode_node.value if isinstance(mode_node, ast.Constant) else "r"
        if not isinstance(mode, str) or not set(mode) & set("wax+"):
            return []
    outside = [value for value in _path_literals(path_node) if _outside_root(value)]
    return [f"{qualname} writes to {value!r}, outside the bundle root" for value in outside]


class _ExpressionAuditor(ast.NodeVisitor):
    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.local_names: set[str] = set()
        self.flags: list[str] = []

    def _resolve(self, node: ast.AST) -> str | None:
        name = _qualname(node)
        if name is None:
            return None
        root, _, rest = name.partition(".")
        if root in self.aliases:
            return self.aliases[root] + ("." + rest if rest else "")
        return name

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            # Importing os or sys is harmless; what the expressions then use from them is checked.
            if alias.name not in PARTLY_HARMLESS:
                self.flags += _module_flags(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flags.append(f"relative import from {'.' * node.level}{node.module or ''}: runs bundle-local code")
            return
        for alias in node.names:
            self.flags += _module_flags(f"{node.module}.{alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__") and node.attr.endswith("__"):
            self.flags.append(f"accesses {node.attr}: dunder attributes can escape to arbitrary code")
        name = self._resolve(node)
        if name is not None and name.split(".")[0] not in self.local_names | {REF_NAME}:
            if name.split(".")[0] in self.aliases:
                self.flags += _module_flags(name)
                return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.local_names or name == REF_NAME or name in SAFE_BUILTINS:
            return
        if name in DANGEROUS_BUILTINS:
            self.flags.append(f"{name}: {DANGEROUS_BUILTINS[name]}")
        elif name in self.aliases:
            self.flags += _module_flags(self.aliases[name])
        elif name != "open":
            self.flags.append(f"{name}: name not defined by any import of the bundle")

    def visit_Call(self, node: ast.Call) -> None:
        name = self._resolve(node.func)
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        if name in WRITERS:
            index = WRITERS[name]
            path = node.args[index] if len(node.args) > index else keywords.get("file" if index == 0 else "f")
            mode = node.args[1] if name in ("open", "builtins.open") and len(node.args) > 1 else keywords.get("mode")
            self.flags += _write_flags(name, path, mode)
        # Methods of objects that are not modules (Path(...).unlink(), @ref.write_text(...)) are judged by name.
        if isinstance(node.func, ast.Attribute) and (name is None or name.split(".")[0] not in self.aliases):
            method = node.func.attr
            if method in PATH_DELETE_METHODS:
                self.flags.append(f".{method}(): deletes files")
            elif method in PATH_WRITE_METHODS:
                self.flags += _write_flags(f".{method}()", node.func.value, None)
            elif method == "open" and name != "open":
                mode = node.args[0] if node.args else keywords.get("mode")
                self.flags += _write_flags(".open()", node.func.value, mode)
        self.generic_visit(node)


def _parse(code: str) -> ast.AST:
    code = REFERENCE.sub(REF_NAME, code)
    try:
        return ast.parse(code, mode="eval")
    except SyntaxError:
        tree = ast.parse(code, mode="exec")
        if not all(isinstance(statement, ast.Import | ast.ImportFrom) for statement in tree.body):
            raise SyntaxError("MONAI evaluates only expressions and import statements") from None
        return tree


def _collect_aliases(tree: ast.AST, aliases: dict[str, str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"


def audit_expression(code: str, aliases: dict[str, str] | None = None) -> list[str]:
    """Return the flags of one Python expression or import statement (without a leading ``$``), never running it.

    Args:
        code: the expression; MONAI references (``@id``) are allowed.
        aliases: names bound by the bundle's imports (name -> module); MONAI's defaults are always included.

    Returns:
        One message per concern; empty when the expression stays within the allowed packages.
    """
    try:
        tree = _parse(code)
    except SyntaxError as err:
        return [f"does not parse as a MONAI expression ({err.msg}); it cannot be audited"]
    known = {**DEFAULT_GLOBALS, **(aliases or {})}
    _collect_aliases(tree, known)
    auditor = _ExpressionAuditor(known)
    # Names bound inside the expression (lambda arguments, comprehension and := targets) are not globals.
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            auditor.local_names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            auditor.local_names.add(node.id)
    auditor.visit(tree)
    return list(dict.fromkeys(auditor.flags))


def _walk(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for every leaf of a config, with MONAI ``#``-separated keys."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}#{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}#{i}" if key else str(i))
    else:
        yield key, node


def _load_config(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


@functools.cache
def _component_locator() -> Any:
    import monai  # noqa: F401 - the components MONAI's runner sees once it has imported monai
    from monai.bundle import ComponentLocator

    return ComponentLocator()


def _resolve_short_target(name: str) -> tuple[str | None, list[str]]:
    """The dotted name MONAI gives a short ``_target_``, or ``None`` with the reason it cannot be trusted."""
    modules = _component_locator().get_component_module_name(name)
    if modules is None:
        return None, [
            f"short _target_ {name!r} is no MONAI component: MONAI looks it up by name and falls back to Python's "
            "builtins (eval, open, __import__)"
        ]
    if isinstance(modules, list):
        return None, [
            f"short _target_ {name!r} is ambiguous ({', '.join(modules)}): MONAI picks one by import order; "
            "write the full dotted name"
        ]
    return f"{modules}.{name}", []


def _target_flags(target: str, siblings: dict, aliases: dict[str, str]) -> list[str]:
    if target.startswith("@"):
        return []
    if target.startswith("$"):
        return audit_expression(target[1:], aliases)
    flags: list[str] = []
    if "." not in target:
        target, flags = _resolve_short_target(target)
        if target is None:
            return flags
    flags += _module_flags(target)
    if target in WRITERS:
        value = next((v for k, v in siblings.items() if not k.startswith("_")), None)
        if _outside_root(value):
            flags.append(f"{target} writes to {value!r}, outside the bundle root")
    return flags


def _audit_config(config: Any, source: str, aliases: dict[str, str]) -> list[AuditItem]:
    items = []
    targets = []

    def find_targets(node: Any, key: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                targets.append((f"{key}#_target_" if key else "_target_", node["_target_"], node))
            for k, v in node.items():
                find_targets(v, f"{key}#{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                find_targets(v, f"{key}#{i}" if key else str(i))

    find_targets(config, "")
    target_keys = {key for key, _, _ in targets}
    for key, target, siblings in targets:
        if not target.startswith("$"):
            items.append(AuditItem(source, key, "_target_", target, tuple(_target_flags(target, siblings, aliases))))
    for key, value in _walk(config, ""):
        if not isinstance(value, str):
            continue
        if value.startswith("$"):
            kind = "_target_" if key in target_keys else "import" if key.startswith("imports#") else "expression"
            items.append(AuditItem(source, key, kind, value, tuple(audit_expression(value[1:], aliases))))
        elif value.startswith("%"):
            macro_file = value[1:].split("#")[0].split("::")[0]
            flags = ()
            if _outside_root(macro_file):
                flags = (f"pulls config from {macro_file!r}, outside the bundle: audit that file too",)
            items.append(AuditItem(source, key, "macro", value, flags))
    return items


# What logging.conf may name: fileConfig evaluates `class` in logging's namespace, then imports it as a dotted path.
KNOWN_HANDLERS = frozenset({"StreamHandler", "FileHandler", "NullHandler"})
KNOWN_FORMATTERS = frozenset({"Formatter"})
STREAM_NAMES = frozenset({"sys.stdout", "sys.stderr"})


def _known_class(value: str, known: frozenset[str]) -> bool:
    return value.removeprefix("logging.") in known


def _literal_flags(value: str, option: str) -> list[str]:
    """``args`` must be a tuple and ``kwargs`` a dict of literals; only ``sys.stdout``/``sys.stderr`` may be named."""
    try:
        node = ast.parse(value, mode="eval").body
    except SyntaxError:
        return [f"{option} = {value!r} does not parse; fileConfig would eval it"]
    expected = ast.Tuple if option == "args" else ast.Dict
    if not isinstance(node, expected):
        return [f"{option} must be a literal {'tuple' if option == 'args' else 'dict'}, got {value!r}"]
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute) and _qualname(child) in STREAM_NAMES:
            continue
        if isinstance(child, ast.Name) and child.id == "sys":
            continue
        if not isinstance(child, ast.Constant | ast.Tuple | ast.Dict | ast.List | ast.Load | ast.Attribute | ast.Name):
            return [f"{option} = {value!r} is not literal: fileConfig would eval it ({type(child).__name__})"]
        if isinstance(child, ast.Name | ast.Attribute):
            return [f"{option} = {value!r} names {ast.unparse(child)}; only sys.stdout and sys.stderr are accepted"]
    return []


def _audit_logging_conf(path: Path, source: str) -> list[AuditItem]:
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
                    if _known_class(value, known)
                    else [
                        f"class {value!r} is not one of the accepted {'handlers' if handler else 'formatters'} "
                        f"({', '.join(sorted(known))})"
                    ]
                )
            else:
                flags = _literal_flags(value, option)
                if not flags and option == "args" and _known_class(parser.get(section, "class"), {"FileHandler"}):
                    path_node = ast.parse(value, mode="eval").body
                    flags = _write_flags("logging.FileHandler", path_node.elts[0] if path_node.elts else None, None)
            items.append(AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags)))
    return items


def _source_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def audit_bundle(bundle_dir: str | os.PathLike, extra_configs: Sequence[str | os.PathLike] = ()) -> list[AuditItem]:
    """List everything the configs under ``BUNDLE_DIR/configs`` would execute, flagging what needs review.

    None of the bundle's code is executed or imported: configs are read as JSON/YAML (``yaml.safe_load``),
    logging.conf with configparser, and every expression is parsed with :mod:`ast`. Short ``_target_`` names are
    looked up in MONAI's own component index, as MONAI's runner does.

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        extra_configs: config files from elsewhere that runs merge with the bundle's (``--config_file "[...]"``);
            they are audited too, and their imports count for the bundle's expressions.

    Returns:
        One :class:`AuditItem` per expression, import, ``_target_``, macro and logging handler/formatter.

    Raises:
        FileNotFoundError: ``bundle_dir/configs`` does not exist.
        ValueError: a config file is not valid JSON/YAML (naming it).
    """
    root = Path(bundle_dir).resolve()
    config_dir = root / "configs"
    if not config_dir.is_dir():
        raise FileNotFoundError(f"{config_dir}: no configs directory, is {bundle_dir} a MONAI bundle?")
    configs = {}
    own = sorted(p for p in config_dir.rglob("*") if p.suffix in CONFIG_SUFFIXES and p.is_file())
    for path in own + [Path(p).resolve() for p in extra_configs]:
        try:
            configs[path] = _load_config(path)
        except Exception as err:  # JSON and YAML raise different types; name the file either way
            raise ValueError(f"{path}: not a valid config file: {err}") from err
    # MONAI shares the globals bound by any config's imports with every expression of the merged config.
    aliases: dict[str, str] = {}
    for config in configs.values():
        for _, value in _walk(config, ""):
            if isinstance(value, str) and value.startswith("$"):
                try:
                    _collect_aliases(_parse(value[1:]), aliases)
                except SyntaxError:
                    pass
    items = []
    for path, config in configs.items():
        items += _audit_config(config, _source_name(path, root), aliases)
    for path in sorted(config_dir.rglob("*.conf")):
        items += _audit_logging_conf(path, _source_name(path, root))
    return items


def format_report(items: list[AuditItem]) -> str:
    """Render audit items: one line per item, then one ``FLAG`` line per concern naming file and key."""
    lines = []
    for item in items:
        lines.append(f"{'!!' if item.flags else 'ok'} {item.source}: {item.key}: [{item.kind}] {item.text}")
        lines += [f"   FLAG {item.source}: {item.key}: {flag}" for flag in item.flags]
    flagged = sum(bool(item.flags) for item in items)
    lines.append(f"{len(items)} items would execute, {flagged} flagged")
    return "\n".join(lines)


def audit(bundle_dir: str, strict: bool = False, extra_configs: str | Sequence[str] = ()) -> str:
    """List everything a bundle's configs would execute (parsed, never run) and flag what reaches too far.

    Args:
        bundle_dir: the bundle root, holding configs/.
        strict: exit with status 1 when anything is flagged.
        extra_configs: config files from outside the bundle that runs merge with it (comma-separated or a list).
    """
    if isinstance(extra_configs, str):
        extra_configs = [p for p in extra_configs.split(",") if p]
    try:
        items = audit_bundle(bundle_dir, extra_configs)
    except (FileNotFoundError, ValueError) as err:
        print(f"audit: {err}")
        raise SystemExit(2) from None
    report = format_report(items)
    if strict and any(item.flags for item in items):
        print(report)
        raise SystemExit(1)
    return report
