"""Converters that load checkpoints written by other implementations into monai_ext networks."""

from monai_ext.legacy.autoencoderkl import convert_autoencoderkl_state_dict
from monai_ext.legacy.checkpoint import LegacyCheckpointError, check_state_dict_keys, read_state_dict
from monai_ext.legacy.diffusion import convert_controlnet_state_dict, convert_diffusion_unet_state_dict
from monai_ext.legacy.medt import convert_medt_state_dict, medt_from_original
from monai_ext.legacy.schedulers import set_legacy_timesteps

__all__ = [
    "LegacyCheckpointError",
    "check_state_dict_keys",
    "convert_autoencoderkl_state_dict",
    "convert_controlnet_state_dict",
    "convert_diffusion_unet_state_dict",
    "convert_medt_state_dict",
    "medt_from_original",
    "read_state_dict",
    "set_legacy_timesteps",
]
