from monai_ext.networks.blocks.rel_pos_bias import DecomposedRelPosBias
from monai_ext.networks.blocks.selfattention import SABlock

__all__: list[str] = ["DecomposedRelPosBias", "SABlock"]
