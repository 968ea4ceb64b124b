"""Rewrite one bundle-config expression (``"$..."``) from MONAI Generative Models names to MONAI core's.

Expressions are parsed with :mod:`ast`, never evaluated. MONAI's ``@id`` references are swapped for placeholder
names while parsing and put back afterwards, so an expression is rewritten as code, not as text.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from monai_ext.legacy.migration.rules import CONVERTERS, RESPACED_SCHEDULERS, core_name

__all__ = ["ExpressionRewrite", "WeightLoad", "dotted_name", "rewrite_expression"]

# MONAI separates nested ids with "::" or "#"
REFERENCE = re.compile(r"@([A-Za-z_]\w*(?:(?:#|::)\w+)*)")
PLACEHOLDER = "__monai_ext_ref_{}__"
PLACEHOLDER_NAME = re.compile(r"__monai_ext_ref_(\d+)__")
LOADERS = ("load_state_dict", "load_old_state_dict")


@dataclass
class WeightLoad:
    """A legacy weight load found in an expression: which network, from which path expression, with what."""

    network: str
    path: str
    converter: str


@dataclass
class ExpressionRewrite:
    """The rewritten expression (``None`` when nothing changed) and what was done."""

    text: str | None
    notes: list[str] = field(default_factory=list)
    loads: list[WeightLoad] = field(default_factory=list)
    uses_monai_ext: bool = False
    problem: str | None = None


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute lookups on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _name_node(dotted: str) -> ast.expr:
    head, *rest = dotted.split(".")
    node: ast.expr = ast.Name(head, ast.Load())
    for part in rest:
        node = ast.Attribute(node, part, ast.Load())
    return node


class _Rewriter(ast.NodeTransformer):
    def __init__(self, references: list[str], class_of: Callable[[str], str | None], legacy_version: str | None):
        self.references = references
        self.class_of = class_of
        self.legacy_version = legacy_version
        self.result = ExpressionRewrite(None)

    def _reference(self, node: ast.AST) -> str | None:
        match = PLACEHOLDER_NAME.fullmatch(node.id) if isinstance(node, ast.Name) else None
        return self.references[int(match[1])] if match else None

    def _source(self, node: ast.AST) -> str:
        return PLACEHOLDER_NAME.sub(lambda m: "@" + self.references[int(m[1])], ast.unparse(node))

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        dotted = dotted_name(node)
        if dotted is None:
            return self.generic_visit(node)
        # the longest prefix of the chain that names a moved module, class or function
        parts = dotted.split(".")
        for end in range(len(parts), 1, -1):
            prefix = ".".join(parts[:end])
            if not (prefix.startswith("generative.") or prefix in ("monai.config.IgniteInfo",)):
                continue
            new = core_name(prefix)
            if new is None:
                if end == len(parts):
                    self.result.problem = f"{prefix} has no counterpart in MONAI core"
                continue
            self.result.notes.append(f"{prefix} -> {new}")
            return _name_node(".".join([new, *parts[end:]]))
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        names = []
        for alias in node.names:
            if alias.name == "generative" or alias.name.startswith("generative."):
                new = core_name(alias.name) if alias.asname else "monai"
                if new is None:
                    self.result.problem = f"import {alias.name} has no counterpart in MONAI core"
                    new = alias.name
                self.result.notes.append(f"import {alias.name} -> import {new}")
                names.append(ast.alias(new, alias.asname))
            else:
                names.append(alias)
        return ast.Import(names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        module = node.module or ""
        if module == "monai.config" and any(alias.name == "IgniteInfo" for alias in node.names):
            if len(node.names) == 1:
                self.result.notes.append("from monai.config import IgniteInfo -> from monai.utils import IgniteInfo")
                return ast.ImportFrom("monai.utils", node.names, 0)
            self.result.problem = "IgniteInfo moved to monai.utils; split this import by hand"
        if module == "generative" or module.startswith("generative."):
            new = core_name(module)
            missing = [a.name for a in node.names if new and core_name(f"{module}.{a.name}") is None]
            if new is None or missing:
                self.result.problem = f"from {module} import {', '.join(missing or ['...'])} has no MONAI counterpart"
                return node
            self.result.notes.append(f"from {module} -> from {new}")
            return ast.ImportFrom(new, node.names, 0)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.func, ast.Attribute):
            return node
        owner = self._reference(node.func.value)
        owner_class = self.class_of(owner) if owner else None
        if node.func.attr in LOADERS and owner_class in CONVERTERS and node.args:
            source = node.args[0]
            is_torch_load = isinstance(source, ast.Call) and dotted_name(source.func) == "torch.load"
            path = source.args[0] if is_torch_load and source.args else source
            converter = CONVERTERS[owner_class]
            arguments = [path, ast.Name(node.func.value.id, ast.Load())]
            keywords = [ast.keyword("legacy_version", ast.Constant(self.legacy_version))] if self.legacy_version else []
            converted = ast.Call(_name_node(converter), arguments, keywords)
            self.result.loads.append(WeightLoad(owner, self._source(path), converter))
            self.result.notes.append(f"@{owner}.{node.func.attr}(...) loads through {converter}")
            self.result.uses_monai_ext = True
            return ast.Call(ast.Attribute(node.func.value, "load_state_dict", ast.Load()), [converted], [])
        if node.func.attr == "set_timesteps" and owner_class in RESPACED_SCHEDULERS:
            self.result.notes.append(f"@{owner}.set_timesteps keeps the legacy timesteps")
            self.result.uses_monai_ext = True
            call = _name_node("monai_ext.legacy.set_legacy_timesteps")
            return ast.Call(call, [node.func.value, *node.args], node.keywords)
        return node


def rewrite_expression(
    code: str, class_of: Callable[[str], str | None], legacy_version: str | None = None
) -> ExpressionRewrite:
    """Rewrite a config expression (without its ``$``; an ``imports`` statement too) for MONAI core.

    Args:
        code: the source; ``@id`` references are allowed, as in bundle configs.
        class_of: config id -> MONAI class name of the object it refers to (for weight loads and schedulers).
        legacy_version: passed to the converters that replace weight loads, when the weights are from 0.1.x.

    Returns:
        The rewrite; ``text`` is None when nothing changed, ``problem`` says what could not be rewritten safely.
    """
    references: list[str] = []

    def placeholder(match: re.Match) -> str:
        references.append(match[1])
        return PLACEHOLDER.format(len(references) - 1)

    try:
        tree = ast.parse(REFERENCE.sub(placeholder, code))
    except SyntaxError as err:
        return ExpressionRewrite(None, problem=f"not parsed as Python ({err.msg})")
    rewriter = _Rewriter(references, class_of, legacy_version)
    new_tree = ast.fix_missing_locations(rewriter.visit(tree))
    result = rewriter.result
    if result.notes:
        result.text = PLACEHOLDER_NAME.sub(lambda m: "@" + references[int(m[1])], ast.unparse(new_tree))
    return result
