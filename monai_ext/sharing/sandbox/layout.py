"""A bundle's layout as the sandbox and the audit see it: the definition a run may only read, the output folders it
may write, and the top-level names Python could import from the bundle root."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

__all__ = [
    "BUNDLE_OUTPUT_FOLDERS", "DEFINITION_FOLDERS", "OPTIONAL_OUTPUT_FOLDERS", "WRITABLE_OVERRIDES", "module_name",
]  # fmt: skip

# what a bundle is: a run reads these and never writes them; macros resolve only into them
DEFINITION_FOLDERS = ("configs", "docs", "scripts")
BUNDLE_OUTPUT_FOLDERS = ("models", "eval", "outputs", "dataset", "logs")
# the only other top-level folders a run may write, and only where its configs write there (the Model Zoo's output/):
# never an import name (monai/), a dotfile (.git) or __pycache__, which a later unconfined process would run
OPTIONAL_OUTPUT_FOLDERS = ("output", "runs")
WRITABLE_OVERRIDES = ("output_dir", "ckpt_dir", "log_dir")


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
