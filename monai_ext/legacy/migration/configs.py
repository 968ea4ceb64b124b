"""A bundle's config files, read statically: ids, literal values, paths, and the rewrite to MONAI core names.

Nothing a config says is evaluated: values are resolved only through literals, ``@id`` references and string
concatenation, and an expression that needs more is reported for a person instead of being guessed.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ext.legacy.migration.expressions import (
    PLACEHOLDER,
    PLACEHOLDER_NAME,
    REFERENCE,
    WeightLoad,
    dotted_name,
    rewrite_expression,
)
from monai_ext.legacy.migration.rules import ARGUMENT_VALUES, ARGUMENTS, core_name

__all__ = [
    "BundleConfigs", "Change", "MigrationError", "UnresolvedError", "read_config", "walk_ids", "write_config",
]  # fmt: skip

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# keys of a component that are not constructor arguments
COMPONENT_KEYS = ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")
# methods that return the same network (``$@net_def.to(@device)``), followed to find what an id refers to
SAME_OBJECT_METHODS = ("to", "eval", "train", "float", "cuda", "cpu", "requires_grad_")


class MigrationError(ValueError):
    """The bundle cannot be migrated as asked; the message says which file and what to do."""


class UnresolvedError(ValueError):
    """A value that only running the config could give."""


@dataclass(frozen=True)
class Change:
    """One change the migration made: ``file : where, old -> new``."""

    file: str
    where: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.file} : {self.where}: {self.old} -> {self.new}"


@dataclass
class FoundLoad:
    """A weight load in a config file, at config id ``where``."""

    file: str
    where: str
    load: WeightLoad


@dataclass
class ConfigRewrite:
    changes: list[Change] = field(default_factory=list)
    loads: list[FoundLoad] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_config(path: Path) -> Any:
    """A JSON or YAML config file's content.

    Raises:
        MigrationError: the file cannot be read or parsed; the message names it.
    """
    try:
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MigrationError(f"cannot read config {path}: {str(err).splitlines()[0]}") from err
    except ImportError as err:
        raise MigrationError(f"{path} is YAML: install PyYAML (pip install 'monai-ext[sharing]')") from err


def write_config(path: Path, content: Any) -> None:
    """Write ``content`` as JSON (4-space indent, as the Model Zoo does) or YAML, by the file's suffix."""
    if path.suffix == ".json":
        path.write_text(json.dumps(content, indent=4) + "\n")
    else:
        import yaml

        path.write_text(yaml.safe_dump(content, sort_keys=False))


def walk_ids(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every ``(config id, value)`` in ``node``, ``node`` itself first (id ``where``)."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_ids(value, f"{where}#{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_ids(value, f"{where}#{index}")


def _same_object(value: Any) -> str | None:
    """The id whose object ``value`` is: ``@x``, or ``$@x.to(...)`` and the like, which return the same network."""
    if not isinstance(value, str):
        return None
    if REFERENCE.fullmatch(value):
        return value[1:]
    reference = REFERENCE.match(value[1:]) if value.startswith("$@") else None
    tail = value[1 + reference.end() :] if reference else ""
    if reference and tail.startswith(".") and tail[1:].split("(", 1)[0] in SAME_OBJECT_METHODS:
        return reference[1]
    return None


class BundleConfigs:
    """Every config file under a bundle's ``configs/``, with lookups across files as MONAI merges them.

    Args:
        bundle: the bundle folder.
    """

    def __init__(self, bundle: Path):
        self.bundle = bundle
        folder = bundle / "configs"
        if not folder.is_dir():
            raise MigrationError(f"{bundle} has no configs/ folder: is it a MONAI bundle?")
        paths = sorted(p for p in folder.rglob("*") if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")
        for path in paths:
            if not path.is_file():
                raise MigrationError(f"{path} is not a regular file")
        self.files: dict[str, Any] = {str(p.relative_to(bundle)): read_config(p) for p in paths}
        self.ids: dict[str, list[tuple[str, Any]]] = {}
        self._index()
        self._needs_monai_ext = False

    def _index(self) -> None:
        self.ids = {}
        for file, content in self.files.items():
            for where, value in walk_ids(content, ""):
                if where:
                    self.ids.setdefault(where, []).append((file, value))

    def lookup(self, id_: str, file: str | None = None) -> tuple[str, Any]:
        """``(file, value)`` of a config id, preferring its definition in ``file``.

        Raises:
            UnresolvedError: no config defines the id.
        """
        found = self.ids.get(id_.replace("::", "#"))
        if not found:
            raise UnresolvedError(f"no config defines @{id_}")
        return next((entry for entry in found if entry[0] == file), found[-1])

    def component(self, id_: str, file: str | None = None, depth: int = 0) -> tuple[str, dict]:
        """``(file, definition)`` of the component a config id refers to, following ``@x`` and ``$@x.to(...)``.

        Raises:
            UnresolvedError: the id refers to no component.
        """
        file, value = self.lookup(id_, file)
        if isinstance(value, dict) and isinstance(value.get("_target_"), str):
            return file, value
        same = _same_object(value)
        if same is None or depth > 8:
            raise UnresolvedError(f"@{id_} is not a component")
        return self.component(same, file, depth + 1)

    def replace_text(self, file: str, id_: str, old: str, new: str) -> str:
        """Replace ``old`` by ``new`` in the string at config id ``id_`` of ``file``; return the previous value."""
        *parents, last = id_.replace("::", "#").split("#")
        node = self.files[file]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        previous = node[key]
        node[key] = previous.replace(old, new)
        self._index()
        return previous

    def class_of(self, id_: str, file: str | None = None) -> str | None:
        """The class name of the component a config id refers to (as :meth:`component` finds it), or None."""
        try:
            _, definition = self.component(id_, file)
        except UnresolvedError:
            return None
        return definition["_target_"].rsplit(".", 1)[-1]

    def literal(self, value: Any, file: str | None, depth: int = 0) -> Any:
        """``value`` with every ``@id`` replaced by its literal value; components' ``_keys_`` are dropped.

        Raises:
            UnresolvedError: a value is an expression or a macro.
        """
        if depth > 32:
            raise UnresolvedError("references nested too deep")
        if isinstance(value, str) and REFERENCE.fullmatch(value):
            ref_file, ref_value = self.lookup(value[1:], file)
            return self.literal(ref_value, ref_file, depth + 1)
        if isinstance(value, str) and value[:1] in ("$", "%"):
            raise UnresolvedError(f"{value!r} is computed when the bundle runs")
        if isinstance(value, dict):
            return {k: self.literal(v, file, depth + 1) for k, v in value.items() if k not in COMPONENT_KEYS}
        if isinstance(value, list):
            return [self.literal(v, file, depth + 1) for v in value]
        return value

    def path(self, source: str, file: str | None) -> tuple[Path, list[tuple[str | None, str, str]]]:
        """Resolve a path expression (``@load_path``, ``@bundle_root + '/models/x.pt'``) to a file in the bundle.

        ``@bundle_root`` is the bundle folder, whatever its config value, as when the bundle runs from its folder;
        a relative result is taken relative to the bundle folder too.

        Returns:
            The path, and every string constant it was built from as ``(file, config id, text)``, so that a caller
            can find which one names the file.

        Raises:
            UnresolvedError: the path is computed by anything but ``+``, ``/``, ``os.path.join`` or ``Path``.
        """
        text, constants = self._path_text(source, file, 0)
        resolved = Path(text)
        return (resolved if resolved.is_absolute() else self.bundle / resolved), constants

    def _path_text(self, source: str, file: str | None, depth: int) -> tuple[str, list[tuple[str | None, str, str]]]:
        references: list[str] = []

        def placeholder(match: Any) -> str:
            references.append(match[1])
            return PLACEHOLDER.format(len(references) - 1)

        try:
            tree = ast.parse(REFERENCE.sub(placeholder, source), mode="eval").body
        except SyntaxError as err:
            raise UnresolvedError(f"{source!r} is not an expression") from err
        constants: list[tuple[str | None, str, str]] = []

        def evaluate(node: ast.AST) -> str:
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants.append((file, "", node.value))
                return node.value
            if isinstance(node, ast.Name) and (match := PLACEHOLDER_NAME.fullmatch(node.id)):
                ref = references[int(match[1])]
                if ref == "bundle_root":
                    return str(self.bundle.resolve())
                ref_file, value = self.lookup(ref, file)
                if not isinstance(value, str) or depth > 16:
                    raise UnresolvedError(f"@{ref} is not a path")
                if value.startswith("$") or REFERENCE.fullmatch(value):
                    text, found = self._path_text(value[1:] if value.startswith("$") else value, ref_file, depth + 1)
                    constants.extend((f, w or ref, t) for f, w, t in found)
                    return text
                constants.append((ref_file, ref, value))
                return value
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                return evaluate(node.left) + evaluate(node.right)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                return os.path.join(evaluate(node.left), evaluate(node.right))
            if isinstance(node, ast.Call) and dotted_name(node.func) in ("os.path.join", "Path", "pathlib.Path"):
                return os.path.join(*(evaluate(arg) for arg in node.args))
            raise UnresolvedError(f"{source!r} is computed when the bundle runs")

        return evaluate(tree), constants

    def rewrite(self, legacy_version: str | None) -> ConfigRewrite:
        """Rewrite every config in place (in this object) to MONAI core names; ids are kept, except renamed
        constructor arguments. ``legacy_version`` is passed to the weight converters (only for 0.1.x)."""
        result = ConfigRewrite()
        for file, content in self.files.items():
            self.files[file] = self._rewrite_node(content, file, "", legacy_version, result)
        self._import_monai_ext(result)
        self._index()
        return result

    def _rewrite_node(self, node: Any, file: str, where: str, version: str | None, result: ConfigRewrite) -> Any:
        if isinstance(node, dict):
            renames: dict[str, str] = {}
            target, new_target = node.get("_target_"), None
            if isinstance(target, str) and (target == "generative" or target.startswith("generative.")):
                new_target = core_name(target)
                if new_target is None:
                    result.problems.append(f"{file} : {where}: {target} has no counterpart in MONAI core")
                else:
                    renames = ARGUMENTS.get(new_target.rsplit(".", 1)[-1], {})
                    result.changes.append(Change(file, f"{where}#_target_", target, new_target))
            rewritten = {}
            for key, value in node.items():
                child = f"{where}#{key}" if where else str(key)
                new_key = renames.get(key, key)
                if key == "_target_" and new_target:
                    rewritten[key] = new_target
                    continue
                if new_key != key:
                    result.changes.append(Change(file, child, f"argument {key}", f"{new_key} (id {where}#{new_key})"))
                    values = ARGUMENT_VALUES.get(key, {})
                    if isinstance(value, str) and value in values:
                        result.changes.append(Change(file, f"{where}#{new_key}", value, values[value]))
                        value = values[value]
                rewritten[new_key] = self._rewrite_node(value, file, child, version, result)
            return rewritten
        if isinstance(node, list):
            return [self._rewrite_node(v, file, f"{where}#{i}", version, result) for i, v in enumerate(node)]
        if isinstance(node, str) and node.startswith("$"):
            rewrite = rewrite_expression(node[1:], lambda ref: self.class_of(ref, file), version)
            if rewrite.problem:
                result.problems.append(f"{file} : {where}: {rewrite.problem}; left as it was")
                return node
            if rewrite.text is not None:
                result.changes.append(Change(file, where, node, "$" + rewrite.text))
                result.loads += [FoundLoad(file, where, load) for load in rewrite.loads]
                if rewrite.uses_monai_ext:
                    self._needs_monai_ext = True
                return "$" + rewrite.text
        return node

    def _import_monai_ext(self, result: ConfigRewrite) -> None:
        if not self._needs_monai_ext:
            return
        for file, content in self.files.items():
            if not isinstance(content, dict):
                continue
            imports = content.get("imports")
            if isinstance(imports, list) and "$import monai_ext" not in imports:
                content["imports"] = [*imports, "$import monai_ext"]
                result.changes.append(Change(file, "imports", "(without monai_ext)", "$import monai_ext added"))
            elif imports is None and self._self_contained(file):
                # an overlay config (train_diffusion.json on train_autoencoder.json) takes its base's imports;
                # giving it an imports key would replace them when MONAI merges the two
                content["imports"] = ["$import monai_ext"]
                result.changes.append(Change(file, "imports", "(none)", "['$import monai_ext']"))

    def _self_contained(self, file: str) -> bool:
        own = {where for where, _ in walk_ids(self.files[file], "")}
        text = json.dumps(self.files[file])
        return all(ref.replace("::", "#") in own for ref in REFERENCE.findall(text))
