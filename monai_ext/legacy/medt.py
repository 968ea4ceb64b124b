"""Loading checkpoints of the original Medical Transformer code (jeya-maria-jose/Medical-Transformer, axialnet.py).

``medt_from_original`` builds our network configured like the original factory functions, and
``convert_medt_state_dict`` renames and reshapes an original state dict for it::

    model = medt_from_original("medt", img_size=128)
    model.load_state_dict(convert_medt_state_dict(torch.load("medt.pth", weights_only=True), model))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from monai_ext.legacy.checkpoint import check_state_dict_keys, read_state_dict
from monai_ext.networks.blocks.gated_axial_attention import GatedAxialAttention
from monai_ext.networks.nets.medt import GatedAxialUNet, MedT

__all__ = ["convert_medt_state_dict", "medt_from_original"]

VARIANTS = ("axialunet", "gated", "medt", "logo")

# original name -> ours, inside the stem, a block and an attention layer
_STEM = {"conv1": "stem.0", "bn1": "stem.1", "conv2": "stem.3", "bn2": "stem.4", "conv3": "stem.6", "bn3": "stem.7"}
_BLOCK = {
    "conv_down": "conv_down",
    "bn1": "norm_down",
    "hight_block": "attention.0",
    "width_block": "attention.1",
    "conv_up": "conv_up",
    "bn2": "norm_up",
    "downsample": "shortcut",
}
_ATTENTION = {"qkv_transform": "qkv", "bn_qkv": "norm_qkv"}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def medt_from_original(variant: str, img_size: int, in_channels: int = 3, out_channels: int = 2) -> nn.Module:
    """Build the network that an original factory function builds, with our module names.

    Args:
        variant: ``"axialunet"`` (``GatedAxialUNet(gated=False)``), ``"gated"`` (``GatedAxialUNet``), ``"medt"``
            (``MedT``: gated global branch, position-free local branch) or ``"logo"`` (``MedT`` with ungated
            positional attention in both branches).
        img_size: the original's ``img_size``; the original MedT/LoGo only run at 128 (their patch loop is
            hard-coded to 4 x 4 patches of 32 pixels); ours accept any multiple of 128 and smaller inputs.
        in_channels: the original's ``imgchan``.
        out_channels: the original's ``num_classes``.

    Returns:
        A 2D ``GatedAxialUNet`` or ``MedT`` in train mode, randomly initialised.

    Raises:
        ValueError: for an unknown variant.
    """
    if variant in ("axialunet", "gated"):
        return GatedAxialUNet(2, in_channels, out_channels, img_size, gated=variant == "gated")
    if variant in ("medt", "logo"):
        medt = variant == "medt"
        return MedT(2, in_channels, out_channels, img_size, patch_grid=4, global_gated=medt, local_positional=not medt)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _convert_attention(
    prefix: str, original: str, key: str, value: torch.Tensor, layer: GatedAxialAttention
) -> dict[str, torch.Tensor]:
    """Our keys for one original attention key (``key`` relative to the layer); the tensor split if needed."""
    module, _, field = key.partition(".")
    if module == "flatten_index":
        return {}  # derived from the positional span; we rebuild it
    if module in _ATTENTION:
        return {f"{prefix}{_ATTENTION[module]}.{field}": value.clone()}
    if module in ("bn_similarity", "bn_output"):
        if module == "bn_similarity":
            names = ["norm_qk", "norm_qr", "norm_kr"] if layer.positional else ["norm_qk"]
            size = layer.num_groups
        else:
            names = ["norm_sv", "norm_sve"] if layer.positional else ["norm_sv"]
            size = layer.out_channels
        if field == "num_batches_tracked":
            return {f"{prefix}{name}.{field}": value.clone() for name in names}
        if value.dim() != 1 or value.numel() != size * len(names):
            return {original: value}  # reported as unexpected, with our split keys missing
        if module == "bn_similarity":  # maps stacked as [qk groups, qr groups, kr groups]
            parts = value.split(size)
        else:  # outputs interleaved per channel as (sv, sve)
            parts = [value[offset :: len(names)] for offset in range(len(names))]
        return {f"{prefix}{name}.{field}": part.clone() for name, part in zip(names, parts, strict=True)}
    return {f"{prefix}{key}": value.clone()}  # relative, f_qr, f_kr, f_sv, f_sve keep their names


def _network_key(key: str, model: nn.Module) -> str | None:
    """Our key for an original network key; ``None`` for weights the original never uses; unchanged if unknown."""
    medt = isinstance(model, MedT)
    match = re.fullmatch(r"(conv\d|bn\d)(_p)?\.(.+)", key)
    if match and match[1] in _STEM:
        branch = ("local_branch" if match[2] else "global_branch") if medt else "backbone"
        return f"{branch}.{_STEM[match[1]]}.{match[3]}"
    match = re.fullmatch(r"layer(\d+)(_p)?\.(\d+)\.(\w+)\.(.+)", key)
    if match and match[4] in (*_BLOCK, "conv1"):
        if match[4] == "conv1":
            return None if medt and match[2] else key  # a 1x1 convolution the original position-free block skips
        branch = ("local_branch" if match[2] else "global_branch") if medt else "backbone"
        return f"{branch}.stages.{int(match[1]) - 1}.{match[3]}.{_BLOCK[match[4]]}.{match[5]}"
    match = re.fullmatch(r"decoder(\d)(_p)?\.(.+)", key)
    if match:
        branch_name = ("local_branch" if match[2] else "global_branch") if medt else "backbone"
        branch = getattr(model, branch_name, None)
        if branch is None:
            return key
        # the original numbers the decoder convolutions so that the last one is decoder5
        index = int(match[1]) - 5 + len(branch.decoder) - 1
        return f"{branch_name}.decoder.{index}.{match[3]}" if index >= 0 else key
    head = {"adjust": "head", "decoderf": "fuse"} if medt else {"adjust": "head"}
    module, _, field = key.partition(".")
    if module in head:
        return f"{head[module]}.{field}"
    if medt and module == "adjust_p":
        return None  # defined but unused by the original forward
    return key


def convert_medt_state_dict(
    original_state_dict: Mapping[str, torch.Tensor] | str | os.PathLike, model: nn.Module
) -> dict[str, torch.Tensor]:
    """Return a state dict for ``model`` from a state dict (or checkpoint file) of the original implementation.

    Keys are renamed; each attention layer's ``bn_similarity`` is split into ``norm_qk``/``norm_qr``/``norm_kr``
    and its ``bn_output`` (interleaved ``(sv, sve)`` per channel) into ``norm_sv``/``norm_sve``; the derived
    ``flatten_index`` buffers, and in MedT the weights the original forward never uses (``adjust_p`` and the
    position-free blocks' ``conv1``), are dropped.

    Args:
        original_state_dict: the original ``state_dict()`` (also accepted: a path, or a checkpoint wrapping it
            under ``state_dict``/``model``, or with ``module.`` prefixes). It is not modified.
        model: the ``GatedAxialUNet``/``MedT`` (e.g. from :func:`medt_from_original`) or single
            ``GatedAxialAttention`` that will load the result.

    Returns:
        A new dict of new tensors, ready for ``model.load_state_dict``.

    Raises:
        TypeError: ``model`` is of another type.
        LegacyCheckpointError: when the converted keys do not fit ``model``; the message lists every missing,
            unexpected and mis-shaped key.
    """
    if not isinstance(model, GatedAxialAttention | GatedAxialUNet | MedT):
        raise TypeError(
            f"model must be a GatedAxialAttention, GatedAxialUNet or MedT, got {type(model).__name__}; "
            "build it with medt_from_original"
        )
    original = read_state_dict(original_state_dict, name="original MedT state dict")
    converted: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        if isinstance(model, GatedAxialAttention):
            converted.update(_convert_attention("", key, key, value, model))
            continue
        ours = _network_key(key, model)
        if ours is None:
            continue
        layer_path, found, inner = ours.partition(".attention.")
        if found:
            axis, _, field = inner.partition(".")
            layer_name = f"{layer_path}.attention.{axis}"
            try:
                layer = model.get_submodule(layer_name)
            except AttributeError:
                layer = None
            if isinstance(layer, GatedAxialAttention):
                converted.update(_convert_attention(f"{layer_name}.", key, field, value, layer))
                continue
        converted[ours] = value.clone()
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    check_state_dict_keys(
        expected,
        converted,
        name="original MedT state dict (after conversion)",
        hint=f"Is the model built with medt_from_original for the same variant and img_size? ({type(model).__name__})",
    )
    return converted
