"""Convert MONAI Generative Models ``DiffusionModelUNet`` and ``ControlNet`` checkpoints for MONAI core's classes.

MONAI Generative Models 0.2.x creates a ``proj_attn`` linear in the self-attention blocks of both networks and never
applies it. MONAI 1.6.1's ``DiffusionModelUNet.load_old_state_dict`` copies it into ``attn.out_proj``, which MONAI
applies, so a loaded UNet computes something else (off by 0.04 to 0.09 on outputs of about 0.6 in a seeded 2D
model) in every layout but ``include_fc=False, use_combined_linear=False``. ``ControlNet.load_old_state_dict``
does not rename the self-attention keys at all and raises ``KeyError`` or leaves them wrong. These converters
reproduce the legacy outputs in every layout that can hold them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from monai_ext.legacy.attention_layout import log_conversion
from monai_ext.legacy.release_0_1 import convert_legacy_release

__all__ = ["convert_controlnet_state_dict", "convert_diffusion_unet_state_dict", "diffusion_hints"]

logger = logging.getLogger(__name__)

CROSS_ATTENTION_HINT = (
    "With with_conditioning=True the legacy transformer blocks apply attn1.to_out, which MONAI's include_fc=False "
    "drops: build the model with include_fc=True."
)


def diffusion_hints(model: nn.Module) -> list[str]:
    """What to tell a user whose checkpoint does not fit ``model``, beyond the key lists."""
    return [CROSS_ATTENTION_HINT]


def _convert(old, model, proj_attn_applied, verbose, name, model_name, legacy_version):
    conversion = convert_legacy_release(old, model, legacy_version, proj_attn_applied, name, diffusion_hints(model))
    log_conversion(conversion, model_name, verbose, logger)
    return conversion.state_dict


def convert_diffusion_unet_state_dict(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    verbose: bool = False,
    name: str | None = None,
    legacy_version: str | None = None,
) -> dict[str, torch.Tensor]:
    """Return a state dict for ``model`` that reproduces a MONAI Generative Models ``DiffusionModelUNet`` checkpoint.

    ``model`` is ``monai.networks.nets.DiffusionModelUNet`` built with the checkpoint's architecture (legacy
    ``num_channels`` is ``channels``) and any ``include_fc`` / ``use_combined_linear`` / ``use_flash_attention``.
    Self-attention ``<block>.to_q/to_k/to_v`` become ``<block>.attn.to_q/to_k/to_v`` (or one ``attn.qkv``), the
    never-applied ``proj_attn`` is dropped and ``attn.out_proj`` (``include_fc=True``) becomes the identity,
    transformer ``to_out.0`` becomes ``out_proj`` and upsampling ``conv.conv`` becomes ``postconv.conv``. A
    checkpoint already in MONAI's format is accepted and only converted between attention layouts.

    With ``with_conditioning=True`` the legacy cross-attention blocks apply an output linear after self-attention
    (``attn1``), which MONAI's ``include_fc=False`` layout has no place for; such a model is refused with the reason.

    Args:
        old: checkpoint path (read with ``torch.load(weights_only=True)``) or state dict; ``state_dict``/``model``
            wrappers and ``module.`` prefixes are removed. It is never modified.
        model: the model the result is for; only its ``state_dict()`` keys, shapes and dtypes are read.
        proj_attn_applied: the checkpoint comes from code whose self-attention DID apply ``proj_attn`` (a patched
            fork; no MONAI Generative Models release did). Then ``proj_attn`` becomes ``out_proj``, which needs
            ``include_fc=True``.
        verbose: log every renamed, split, merged and dropped key at INFO level (DEBUG otherwise).
        name: how to refer to the checkpoint in messages; defaults to its path, or "checkpoint".
        legacy_version: the MONAI Generative Models version that wrote the checkpoint; None means 0.2.x. Before
            0.2.0 the self-attention applied ``proj_attn`` and cross-attention was unscaled, and keys had other names
            (:mod:`monai_ext.legacy.release_0_1`); a checkpoint already in MONAI's format is taken as it is.

    Returns:
        A new dict with exactly the keys of ``model.state_dict()``, ready for ``model.load_state_dict``. Tensors
        that needed no change are shared with ``old``, not copied.

    Raises:
        FileNotFoundError: ``old`` is a path that does not exist.
        monai_ext.legacy.LegacyCheckpointError: the checkpoint does not fit ``model``; the message names every
            missing, unexpected and mis-shaped key, in MONAI's key names, and what to change.
    """
    return _convert(old, model, proj_attn_applied, verbose, name, "DiffusionModelUNet", legacy_version)


def convert_controlnet_state_dict(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    verbose: bool = False,
    name: str | None = None,
    legacy_version: str | None = None,
) -> dict[str, torch.Tensor]:
    """Return a state dict for ``model`` that reproduces a MONAI Generative Models ``ControlNet`` checkpoint.

    ``model`` is ``monai.networks.nets.ControlNet`` built with the checkpoint's architecture (legacy
    ``num_channels`` is ``channels``) and any attention layout. The keys are converted as by
    :func:`convert_diffusion_unet_state_dict`, which documents the arguments, return value and errors.
    """
    return _convert(old, model, proj_attn_applied, verbose, name, "ControlNet", legacy_version)
