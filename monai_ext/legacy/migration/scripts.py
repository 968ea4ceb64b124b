"""Rewrite the imports of a bundle's ``scripts/`` from MONAI Generative Models to MONAI core, in place in the text.

Only import statements are rewritten, each spliced into the file where it stood, so comments and formatting stay.
Whatever else names the legacy package, or calls what MONAI 1.6 changed (``set_timesteps``, ``load_old_state_dict``,
``torch.load`` into a legacy network), is listed with its file and line for a person: a script's types cannot be
known without running it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from monai_ext.legacy.migration.configs import Change
from monai_ext.legacy.migration.rules import ARGUMENTS, core_name

__all__ = ["ScriptsReport", "rewrite_scripts"]

# calls whose meaning changed in MONAI core, and what to do about each
CHANGED_CALLS = {
    "set_timesteps": "MONAI 1.6 spaces DDIM/DDPM timesteps differently: use monai_ext.legacy.set_legacy_timesteps",
    "load_old_state_dict": "MONAI's loader changes legacy outputs: use the monai_ext.legacy converters",
}


@dataclass
class ScriptsReport:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _names(aliases: list[ast.alias]) -> str:
    return ", ".join(f"{a.name} as {a.asname}" if a.asname else a.name for a in aliases)


def _import_text(node: ast.ImportFrom | ast.Import, file: str, report: ScriptsReport) -> str | None:
    """The rewritten statement, or None to keep it."""
    if isinstance(node, ast.Import):
        moved = [a for a in node.names if a.name == "generative" or a.name.startswith("generative.")]
        if not moved:
            return None
        if any(not alias.asname for alias in moved):
            report.problems.append(
                f"{file} : line {node.lineno}: uses of the module name 'generative' in this file must be renamed by "
                "hand"
            )
            return None
        names = []
        for alias in node.names:
            new = core_name(alias.name) if alias in moved else alias.name
            if new is None:
                report.problems.append(f"{file} : line {node.lineno}: import {alias.name} has no MONAI counterpart")
                return None
            names.append(f"{new} as {alias.asname}" if alias.asname else new)
        return "import " + ", ".join(names)
    module = node.module or ""
    names = ", ".join(f"{a.name} as {a.asname}" if a.asname else a.name for a in node.names)
    if module == "monai.config" and any(a.name == "IgniteInfo" for a in node.names):
        rest = [a for a in node.names if a.name != "IgniteInfo"]
        moved = [a for a in node.names if a.name == "IgniteInfo"]
        lines = [
            f"from monai.utils import {', '.join(a.name + (f' as {a.asname}' if a.asname else '') for a in moved)}"
        ]
        if rest:
            lines.insert(
                0,
                f"from monai.config import {', '.join(a.name + (f' as {a.asname}' if a.asname else '') for a in rest)}",
            )
        return "\n".join(lines)
    if module == "generative" or module.startswith("generative."):
        new = core_name(module)
        missing = [a.name for a in node.names if new is None or core_name(f"{module}.{a.name}") is None]
        if missing:
            report.problems.append(
                f"{file} : line {node.lineno}: from {module} import {', '.join(missing)}: not in MONAI core"
            )
            return None
        return f"from {new} import {names}"
    return None


def _review(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, finding)`` for what the import rewrite leaves for a person."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "generative":
            found.append((node.lineno, "names the legacy package 'generative'"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if called in CHANGED_CALLS:
                found.append((node.lineno, f"{called}(...): {CHANGED_CALLS[called]}"))
            legacy = [k.arg for k in node.keywords if k.arg in ARGUMENTS.get(called, {})]
            if legacy:
                renames = ", ".join(f"{arg} -> {ARGUMENTS[called][arg]}" for arg in legacy)
                found.append((node.lineno, f"{called}(...) argument {renames}"))
    return found


def _left_for_a_person(tree: ast.AST, file: str) -> list[str]:
    """What the migrated file still needs, by its own line numbers: imports not rewritten, then the review."""
    imports = ScriptsReport()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            _import_text(node, file, imports)
    found = [(int(problem.split(" : line ")[1].split(":")[0]), problem) for problem in imports.problems]
    found += [(line, f"{file} : line {line}: {text}") for line, text in _review(tree)]
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def rewrite_scripts(bundle: Path) -> ScriptsReport:
    """Rewrite the legacy imports of every ``*.py`` under ``bundle/scripts`` in place and list what is left.

    Returns:
        Every rewritten import as ``file : line N`` of the legacy file, old -> new, and what a person must still
        change, by the line of the migrated file.
    """
    report = ScriptsReport()
    folder = bundle / "scripts"
    for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
        file = str(path.relative_to(bundle))
        if not path.is_file():
            report.problems.append(f"{file}: not a regular file, left alone")
            continue
        source = path.read_text()
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            report.problems.append(f"{file} : line {err.lineno}: not parsed as Python ({err.msg}); left alone")
            continue
        lines = source.splitlines(keepends=True)
        edits = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                new = _import_text(node, file, ScriptsReport())
                if new is not None:
                    edits.append((node, new))
        for node, new in sorted(edits, key=lambda edit: edit[0].lineno, reverse=True):
            start, end = node.lineno - 1, node.end_lineno
            indent = " " * node.col_offset
            old = "".join(lines[start:end])
            replacement = "".join(f"{indent}{line}\n" for line in new.splitlines())
            lines[start:end] = [replacement]
            report.changes.append(Change(file, f"line {node.lineno}", old.strip(), new.replace("\n", "; ")))
        if edits:
            path.write_text("".join(lines))
        report.problems += _left_for_a_person(ast.parse("".join(lines)), file)
    report.changes.reverse()
    return report
