from monai_ext.networks.blocks.axial_bottleneck import AxialBottleneck
from monai_ext.networks.blocks.gated_axial_attention import GatedAxialAttention
from monai_ext.networks.blocks.rel_pos_bias import DecomposedRelPosBias
from monai_ext.networks.blocks.selfattention import SABlock
from monai_ext.networks.blocks.upsample_conv import NearestUpsampleConv

__all__: list[str] = [
    "AxialBottleneck",
    "DecomposedRelPosBias",
    "GatedAxialAttention",
    "NearestUpsampleConv",
    "SABlock",
]
