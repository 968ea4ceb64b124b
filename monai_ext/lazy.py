"""Subpackages and modules imported the first time a config or a caller names them (``monai_ext.bundle.datalist``
after ``$import monai_ext``), so that commands which need no torch never import it. Standard library only: the
package imports this before ``python -m monai_ext`` has dropped the working directory from ``sys.path``."""

import importlib
from collections.abc import Callable, Sequence

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, names: Sequence[str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports ``package.NAME`` for each of ``names`` when first asked."""

    def attribute(name: str) -> object:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute
