"""Converters that load checkpoints written by other implementations into monai_ext networks."""

from monai_ext.legacy.autoencoderkl import convert_autoencoderkl_state_dict
from monai_ext.legacy.checkpoint import LegacyCheckpointError, check_state_dict_keys, read_state_dict

__all__ = [
    "LegacyCheckpointError",
    "check_state_dict_keys",
    "convert_autoencoderkl_state_dict",
    "read_state_dict",
]
