"""Convert MONAI Generative Models ``AutoencoderKL`` checkpoints, reproducing their outputs exactly.

The legacy attention block (``generative.networks.nets.autoencoderkl.AttentionBlock``, releases 0.2.0 to 0.2.3) has
``to_q/to_k/to_v`` linears and creates a ``proj_attn`` linear that its forward pass never applies. MONAI core's
``AutoencoderKL.load_old_state_dict`` copies ``proj_attn`` into ``out_proj``, which the new block does apply, so the
loaded model silently computes something else. Here ``proj_attn`` is dropped and ``out_proj`` becomes the identity
(:mod:`monai_ext.legacy.attention_layout` does the renaming for all legacy networks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from monai_ext.legacy.attention_layout import log_conversion
from monai_ext.legacy.release_0_1 import convert_legacy_release

__all__ = ["autoencoderkl_hints", "convert_autoencoderkl_state_dict"]

logger = logging.getLogger(__name__)

TRANSPOSED_UPSAMPLING_HINT = (
    "MONAI Generative's use_convtranspose=True upsampling (3-wide transposed kernel) has no counterpart in MONAI's "
    "AutoencoderKL(use_convtranspose=True) (2-wide kernel), so it cannot be converted."
)


def autoencoderkl_hints(model: nn.Module) -> list[str]:
    """What to tell a user whose checkpoint does not fit ``model``, beyond the key lists."""
    transposed = any(key.endswith(".deconv.weight") for key in model.state_dict())
    return [TRANSPOSED_UPSAMPLING_HINT] if transposed else []


def convert_autoencoderkl_state_dict(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    verbose: bool = False,
    name: str | None = None,
    legacy_version: str | None = None,
) -> dict[str, torch.Tensor]:
    """Return a state dict for ``model`` that reproduces a MONAI Generative Models ``AutoencoderKL`` checkpoint.

    ``model`` is a :class:`monai_ext.networks.nets.AutoencoderKL` or ``monai.networks.nets.AutoencoderKL`` built with
    the checkpoint's architecture and any ``include_fc`` / ``use_combined_linear`` / ``use_flash_attention``. The
    legacy ``<block>.to_q/to_k/to_v`` become ``<block>.attn.to_q/to_k/to_v`` (or one ``attn.qkv``), the decoder's
    ``conv`` becomes ``postconv``, and because the legacy forward never applied ``proj_attn``, it is dropped and
    ``attn.out_proj`` (with ``include_fc=True``) becomes the identity with zero bias. A checkpoint already in MONAI's
    format is accepted too and only converted between attention layouts.

    Legacy ``use_convtranspose=True`` checkpoints cannot be converted: MONAI's transposed upsampling has another
    kernel size. The architecture arguments must match the checkpoint; the conversion checks every key and shape,
    but it cannot tell, for example, a legacy transposed upsampling convolution from a plain one of the same shape.

    Args:
        old: checkpoint path (read with ``torch.load(weights_only=True)``) or state dict; ``state_dict``/``model``
            wrappers and ``module.`` prefixes are removed. It is never modified.
        model: the model the result is for; only its ``state_dict()`` keys, shapes and dtypes are read.
        proj_attn_applied: the checkpoint comes from code whose attention DID apply ``proj_attn`` (a patched fork;
            no MONAI Generative Models release did). Then ``proj_attn`` becomes ``out_proj``, which needs
            ``include_fc=True``.
        verbose: log every renamed, split, merged and dropped key at INFO level (DEBUG otherwise).
        name: how to refer to the checkpoint in messages; defaults to its path, or "checkpoint".
        legacy_version: the MONAI Generative Models version that wrote the checkpoint; None means 0.2.x. Release
            0.1.0's attention was 1x1 convolutions ``q/k/v`` with an applied ``proj_out``, converted here too
            (:mod:`monai_ext.legacy.release_0_1`).

    Returns:
        A new dict with exactly the keys of ``model.state_dict()``, ready for ``model.load_state_dict``. Tensors
        that needed no change are shared with ``old``, not copied.

    Raises:
        FileNotFoundError: ``old`` is a path that does not exist.
        monai_ext.legacy.LegacyCheckpointError: the checkpoint does not fit ``model``; the message names every
            missing, unexpected and mis-shaped key, in MONAI's key names, and what to change.
    """
    conversion = convert_legacy_release(old, model, legacy_version, proj_attn_applied, name, autoencoderkl_hints(model))
    log_conversion(conversion, "AutoencoderKL", verbose, logger)
    return conversion.state_dict
