"""monai_ext: network components that MONAI lacks or gets wrong, and bundles that use them.

``import monai_ext`` (or ``"imports": ["$import monai_ext"]`` in a bundle config) imports every public component, so a
bundle can refer to them with fully dotted targets such as ``monai_ext.networks.blocks.SABlock``.
"""

__version__ = "0.1.0"

from monai_ext import bundle, legacy, networks, sharing  # noqa: E402

__all__ = ["__version__", "bundle", "legacy", "networks", "sharing"]
