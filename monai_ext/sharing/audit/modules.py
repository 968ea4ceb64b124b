"""The bundle's own Python that imports could reach: ``scripts/`` and every top-level importable name."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

from monai_ext.sharing.audit.configs import source_name
from monai_ext.sharing.audit.findings import AuditItem
from monai_ext.sharing.sandbox.layout import module_name


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
        source, module = source_name(path, root), ".".join(path.relative_to(root).with_suffix("").parts)
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
        items.append(AuditItem(source_name(path, root), name, "module", str(path.name), (flag,), group="code"))
    return items
