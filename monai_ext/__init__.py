"""monai_ext: network components that MONAI lacks or gets wrong, and bundles that use them.

``import monai_ext`` (or ``"imports": ["$import monai_ext"]`` in a bundle config) makes every public component
reachable by a fully dotted name such as ``monai_ext.networks.blocks.SABlock``. Each subpackage is imported the first
time it is named, so that the command line (``python -m monai_ext versions``) starts without torch or MONAI.
"""

# only this package's own module and standard-library modules the interpreter has loaded before it runs
# ``python -m monai_ext``: this package is imported before __main__ can drop the working directory (maybe a received
# bundle's folder) from sys.path
from monai_ext.lazy import lazy_attributes

__version__ = "0.1.0"

SUBPACKAGES = ("bundle", "legacy", "networks", "sharing")

__all__ = ["__version__", *SUBPACKAGES]


__getattr__ = lazy_attributes(__name__, SUBPACKAGES)


def __dir__() -> list[str]:
    return sorted([*globals(), *SUBPACKAGES])
