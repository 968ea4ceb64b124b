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

import builtins
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_ext.sharing.allowlist import WRITERS, Allowlist, resolve_dotted
from monai_ext.sharing.audit.configs import (
    DEFAULT_GLOBALS,
    SEP,
    ConfigTypes,
    config_files,
    flatten,
    is_import,
    load_config,
    macro_file,
    merged,
    resolve_target,
    source_name,
    target_flags,
    undefined_macros,
)
from monai_ext.sharing.audit.findings import (
    CHECKPOINT_LOADERS,
    GROUPS,
    UNCONTAINED_DEBUGGER,
    UNCONTAINED_MACRO,
    AuditItem,
    format_report,
    grouped,
    known_paths,
    replaced,
    where,
    write_folders,
)
from monai_ext.sharing.audit.logging_conf import audit_logging_conf
from monai_ext.sharing.audit.modules import bundle_modules
from monai_ext.sharing.expressions import UNKNOWN, Value, check_code

__all__ = [
    "DEFINITION_FOLDERS", "GROUPS", "AuditItem", "audit", "audit_bundle", "audit_logging_conf", "bundle_modules",
    "format_report", "resolve_target", "write_folders",
]  # fmt: skip


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
    pending = config_files(config_dir) + [Path(p).resolve() for p in extra_configs]
    configs: dict[Path, Any] = {}
    while pending:
        path = pending.pop(0)
        if path in configs:
            continue
        try:
            configs[path] = load_config(path)
        except Exception as err:  # JSON and YAML raise different types; name the file either way
            raise ValueError(f"{path}: not a valid config file: {err}") from err
        flat: dict[str, Any] = {}
        flatten(configs[path], "", flat)
        for value in flat.values():
            if isinstance(value, str) and value.startswith("%"):
                target, _ = macro_file(value, root)
                if target is not None:
                    pending.append(target)

    flats = {}
    for path, config in configs.items():
        flats[path] = {}
        flatten(merged(json.loads(json.dumps(config))), "", flats[path])
    globals_ = {name: Value.of(resolve_dotted(module, allowlist)[0]) for name, module in DEFAULT_GLOBALS.items()}
    types = ConfigTypes(flats, globals_, allowlist)

    items: list[AuditItem] = []
    imports = [(path, key, value) for path, flat in flats.items() for key, value in flat.items()
               if isinstance(value, str) and value.startswith("$") and is_import(value[1:])]  # fmt: skip
    for path, key, value in imports:  # MONAI evaluates every import first, into globals all expressions share
        check = check_code(value[1:], types.namespace(path), allowlist)
        item = AuditItem(source_name(path, root), key, "import", value, tuple(check.problems))
        items.append(grouped(item, check.names))
    for path, flat in flats.items():
        source = source_name(path, root)
        for key, value in flat.items():
            if isinstance(value, dict) and "_target_" in value:
                items.append(_component_item(source, f"{key}{SEP}_target_" if key else "_target_", value, types, path))
            elif key.endswith(f"{SEP}_target_") or key == "_target_":
                if SEP in key and key.rsplit(SEP, 1)[0] in flat and isinstance(flat[key.rsplit(SEP, 1)[0]], dict):
                    continue  # listed with its component above
                items.append(_component_item(source, key, {"_target_": value}, types, path))
            elif isinstance(value, str) and value.startswith("$") and not is_import(value[1:]):
                check = types.check(value[1:], path)
                item = AuditItem(source, key, "expression", value, tuple(check.problems))
                items.append(grouped(item, check.names, check.writes))
            elif isinstance(value, str) and value.startswith("%"):
                _, reason = macro_file(value, root)
                item = AuditItem(source, key, "macro", value, (reason,) if reason else ())
                if undefined_macros({key: value}, root):
                    item = replaced(item, group="uncontained", detail=UNCONTAINED_MACRO)
                items.append(replaced(item, group="reads", detail=value[1:]) if reason and not item.group else item)
            elif isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
                items.append(AuditItem(source, key, "path", value, group="reads", detail=where(value)))
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".conf"):
        items += [grouped(item) for item in audit_logging_conf(path, source_name(path, root))]
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
        replaced(item, group="code", detail="uses the bundle's own objects: " + ", ".join(
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


def _component_item(source: str, key: str, node: dict, types: ConfigTypes, path: Path) -> AuditItem:
    flags, resolved = target_flags(node, types, types.allowlist, path)
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
        return replaced(item, group="uncontained", detail=UNCONTAINED_DEBUGGER)
    if resolved in CHECKPOINT_LOADERS:
        argument = CHECKPOINT_LOADERS[resolved]
        loaded = types.value_of(node[argument], path) if argument in node else UNKNOWN
        return replaced(item, group="checkpoints", detail=where(loaded), paths=known_paths([loaded]))
    return grouped(item, names, writes)


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
