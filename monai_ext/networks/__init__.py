from monai_ext.networks import blocks, nets
from monai_ext.networks.patching import patch_attention

__all__ = ["blocks", "nets", "patch_attention"]
