"""``logging.conf`` read as ``logging.config.fileConfig`` reads it: only known classes with literal arguments."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

from monai_ext.sharing.audit.configs import outside_bundle
from monai_ext.sharing.audit.findings import UNCONTAINED_HANDLER, AuditItem, replaced, where

__all__ = ["audit_logging_conf"]

# What logging.conf may name; fileConfig evaluates `class` in logging's namespace, then imports it as a dotted path.
KNOWN_HANDLERS = frozenset({"StreamHandler", "FileHandler", "NullHandler"})
KNOWN_FORMATTERS = frozenset({"Formatter"})
STREAM_NAMES = frozenset({"sys.stdout", "sys.stderr"})
EVALUATED = "runs code it builds: logging.config.fileConfig evaluates args and kwargs, under any runner"


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
                    items.append(replaced(item, group="uncontained", detail=UNCONTAINED_HANDLER) if handler else item)
                    continue
                flags = []
            else:
                flags = _logging_literal_flags(value, option)
                handler_class = parser.get(section, "class", fallback="").removeprefix("logging.")
                if not flags and option == "args" and handler_class == "FileHandler":
                    arguments = ast.parse(value, mode="eval").body.elts
                    target = arguments[0].value if arguments and isinstance(arguments[0], ast.Constant) else None
                    if not isinstance(target, str) or outside_bundle(target):
                        flags = [f"FileHandler writes to {target!r}, outside the bundle root"]
                    place = where(target) if isinstance(target, str) else "a path that is not a literal"
                    items.append(AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags),
                                           group="writes", detail=place))  # fmt: skip
                    continue
            item = AuditItem(source, f"[{section}] {option}", "logging", shown, tuple(flags))
            items.append(replaced(item, group="stopped", detail=EVALUATED) if flags and option != "class" else item)
    return items
