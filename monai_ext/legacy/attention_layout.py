"""Rewrite MONAI Generative Models state dicts into MONAI core's key layout, computing what the legacy model computed.

Shared by the AutoencoderKL, DiffusionModelUNet and ControlNet converters. The legacy networks (releases 0.2.0 to
0.2.3) differ from MONAI core's in key names, and in one place in arithmetic:

- Self-attention blocks keep ``<block>.to_q/to_k/to_v`` directly under the block (MONAI: ``<block>.attn.*``) and
  create a ``<block>.proj_attn`` linear that their forward pass never applies. MONAI core's ``load_old_state_dict``
  copies it into ``attn.out_proj``, which MONAI does apply, so the loaded model computes something else. Here
  ``proj_attn`` is dropped and ``attn.out_proj`` (``include_fc=True``) becomes the identity with zero bias.
- Transformer attention (``attn1``/``attn2`` of cross-attention blocks) names its applied output linear
  ``to_out.0`` (MONAI: ``out_proj``).
- Upsampling convolutions are ``<up>.conv.conv`` (MONAI: ``<up>.postconv.conv``).

The target's attention layout is read from the model itself: one fused ``qkv`` linear or ``to_q/to_k/to_v``
(``use_combined_linear``), with or without ``out_proj`` (``include_fc``). Checkpoints already in MONAI's format are
accepted and only converted between layouts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from monai_ext.legacy.checkpoint import check_state_dict_keys, read_state_dict

__all__ = ["LayoutConversion", "convert_attention_layout", "log_conversion"]

QKV = ("to_q", "to_k", "to_v")
# MONAI's self-attention blocks: <block>.attn.to_q or <block>.attn.qkv ("attn" exactly, not a transformer's attn1).
SPATIAL_ATTENTION_WEIGHT = re.compile(r"(?P<block>.+)\.attn\.(?:to_q|qkv)\.weight")
# Legacy self-attention: the projections sit directly under the block, which is not itself an attention module.
LEGACY_SPATIAL_KEY = re.compile(
    r"(?P<block>.+?)(?<!\.attn)(?<!\.attn1)(?<!\.attn2)\.(?P<part>to_q|to_k|to_v|proj_attn)\.(?P<kind>weight|bias)"
)
LEGACY_TRANSFORMER_OUT = re.compile(r"(?P<attention>.+)\.to_out\.0\.(?P<kind>weight|bias)")
FUSED_QKV = re.compile(r"(?P<prefix>.+)\.qkv\.(?P<kind>weight|bias)")
OUT_PROJ_WEIGHT = re.compile(r"(?P<prefix>.+)\.out_proj\.weight")
LEGACY_UPSAMPLE = ".conv.conv."
UPSAMPLE = ".postconv.conv."


@dataclass
class LayoutConversion:
    """A converted state dict and what was done to get it (for logs and the command-line report)."""

    state_dict: dict[str, torch.Tensor]
    source_format: str
    target_layout: str
    renamed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    identity_out_proj: list[str] = field(default_factory=list)
    merged_qkv: list[str] = field(default_factory=list)
    split_qkv: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.state_dict)} keys for a model with {self.target_layout}; source format: "
            f"{self.source_format}; {len(self.renamed)} keys renamed from legacy names, "
            f"{len(self.split_qkv)} qkv linears split, {len(self.merged_qkv)} merged, "
            f"{len(self.identity_out_proj)} out_proj set to identity, {len(self.dropped)} unused keys dropped"
        )


def _split_fused(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes with every fused ``qkv`` entry replaced by its three ``to_q/to_k/to_v`` parts."""
    split = {}
    for key, shape in shapes.items():
        match = FUSED_QKV.fullmatch(key)
        if match:
            for part in QKV:
                split[f"{match['prefix']}.{part}.{match['kind']}"] = (shape[0] // 3, *shape[1:])
        else:
            split[key] = shape
    return split


def _is_identity(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        return False
    return torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype)) and (bias is None or not bias.any())


def convert_attention_layout(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    name: str | None = None,
    hints: Sequence[str] = (),
) -> LayoutConversion:
    """Return ``old``'s weights in ``model``'s key layout, so that ``model`` computes what the legacy model did.

    Args:
        old: checkpoint path (``torch.load(weights_only=True)``) or state dict; wrappers and ``module.`` prefixes are
            removed, and it is never modified.
        model: the MONAI-layout model the result is for; only its ``state_dict()`` keys, shapes and dtypes are read.
        proj_attn_applied: the checkpoint comes from code whose self-attention DID apply ``proj_attn`` (a patched
            fork; no MONAI Generative Models release did). Then ``proj_attn`` becomes ``attn.out_proj``.
        name: how to refer to the checkpoint in messages; defaults to its path, or "checkpoint".
        hints: model-specific sentences added to the error message.

    Returns:
        The conversion; its ``state_dict`` has exactly the keys of ``model.state_dict()``.

    Raises:
        FileNotFoundError: ``old`` is a path that does not exist.
        monai_ext.legacy.LegacyCheckpointError: the checkpoint does not fit ``model``; the message names every
            missing, unexpected and mis-shaped key, in MONAI's key names, and what to change.
    """
    found = read_state_dict(old, name)
    name = name or (str(old) if isinstance(old, str | os.PathLike) else "checkpoint")
    target = model.state_dict()
    expected = _split_fused({key: tuple(value.shape) for key, value in target.items()})
    blocks = sorted({m["block"] for key in target if (m := SPATIAL_ATTENTION_WEIGHT.fullmatch(key))})
    fused = sorted({m["prefix"] for key in target if (m := FUSED_QKV.fullmatch(key)) and m["kind"] == "weight"})
    has_out_proj = any(f"{block}.attn.out_proj.weight" in target for block in blocks) or any(
        key.endswith(".attn1.out_proj.weight") for key in target
    )
    layout = f"include_fc={has_out_proj}, use_combined_linear={bool(fused)} ({len(blocks)} self-attention blocks)"

    # 1. Every key in MONAI's names, attention as separate to_q/to_k/to_v.
    canonical: dict[str, torch.Tensor] = {}
    legacy_blocks: set[str] = set()
    renamed: list[str] = []
    dropped: list[str] = []
    split: list[str] = []
    for key, value in found.items():
        spatial = LEGACY_SPATIAL_KEY.fullmatch(key)
        transformer_out = LEGACY_TRANSFORMER_OUT.fullmatch(key)
        fused_key = FUSED_QKV.fullmatch(key)
        if spatial:
            block, part, kind = spatial["block"], spatial["part"], spatial["kind"]
            legacy_blocks.add(block)
            if part == "proj_attn" and not proj_attn_applied:
                dropped.append(key)
                continue
            canonical[f"{block}.attn.{'out_proj' if part == 'proj_attn' else part}.{kind}"] = value
            renamed.append(key)
        elif transformer_out:
            canonical[f"{transformer_out['attention']}.out_proj.{transformer_out['kind']}"] = value
            renamed.append(key)
        elif LEGACY_UPSAMPLE in key and key not in expected and key.replace(LEGACY_UPSAMPLE, UPSAMPLE) in expected:
            canonical[key.replace(LEGACY_UPSAMPLE, UPSAMPLE)] = value
            renamed.append(key)
        elif fused_key and value.shape[0] % 3 == 0:
            for part, chunk in zip(QKV, value.chunk(3), strict=True):
                canonical[f"{fused_key['prefix']}.{part}.{fused_key['kind']}"] = chunk
            split.append(key)
        else:
            canonical[key] = value

    # 2. Output projections: identity where the checkpoint's forward applied none; dropped where the model has none
    #    and the checkpoint's is the identity.
    identity: list[str] = []
    for weight_key in [key for key in target if OUT_PROJ_WEIGHT.fullmatch(key) and key not in canonical]:
        attention = weight_key.removesuffix(".out_proj.weight")
        if f"{attention}.to_q.weight" in canonical:
            bias_key = f"{attention}.out_proj.bias"
            canonical[weight_key] = torch.eye(target[weight_key].shape[0], dtype=target[weight_key].dtype)
            canonical[bias_key] = torch.zeros_like(target[bias_key])
            identity.append(attention)
    for weight_key in [key for key in canonical if OUT_PROJ_WEIGHT.fullmatch(key) and key not in expected]:
        bias_key = weight_key.removesuffix("weight") + "bias"
        if _is_identity(canonical[weight_key], canonical.get(bias_key)):
            del canonical[weight_key]
            canonical.pop(bias_key, None)
            dropped.append(f"{weight_key.removesuffix('.weight')} (identity)")

    # 3. One error naming every problem.
    messages = [
        "Build the model with the architecture arguments the checkpoint was trained with. Keys are named in MONAI's "
        "layout (legacy <block>.to_q is <block>.attn.to_q, proj_attn is attn.out_proj, to_out.0 is out_proj, "
        "<up>.conv.conv is <up>.postconv.conv)."
    ]
    if any(OUT_PROJ_WEIGHT.fullmatch(key) and key not in expected for key in canonical):
        messages.append(
            "The checkpoint's attention applies an output projection (out_proj) that the model lacks: build the model "
            "with include_fc=True."
        )
    if proj_attn_applied and any(f"{block}.attn.out_proj.weight" not in canonical for block in legacy_blocks):
        messages.append("proj_attn_applied=True needs every legacy <block>.proj_attn.weight and .bias.")
    check_state_dict_keys(expected, canonical, name, " ".join([*messages, *hints]))

    # 4. The model's layout.
    converted = {}
    for key in target:
        fused_key = FUSED_QKV.fullmatch(key)
        if fused_key:
            prefix, kind = fused_key["prefix"], fused_key["kind"]
            converted[key] = torch.cat([canonical[f"{prefix}.{part}.{kind}"] for part in QKV])
        else:
            converted[key] = canonical[key]
    source_format = "MONAI Generative Models (legacy)" if legacy_blocks or renamed else "MONAI / monai_ext"
    return LayoutConversion(
        state_dict=converted,
        source_format=source_format,
        target_layout=layout,
        renamed=renamed,
        dropped=dropped,
        identity_out_proj=identity,
        merged_qkv=[prefix for prefix in fused if f"{prefix}.qkv.weight" not in found],
        split_qkv=split,
    )


def log_conversion(conversion: LayoutConversion, model_name: str, verbose: bool, logger: logging.Logger) -> None:
    """Log to ``logger`` what a conversion renamed, split, merged and dropped (INFO with ``verbose``, else DEBUG),
    then a one-line summary at INFO."""
    level = logging.INFO if verbose else logging.DEBUG
    for title, keys in (
        ("renamed", conversion.renamed),
        ("split", conversion.split_qkv),
        ("merged into qkv", conversion.merged_qkv),
        ("out_proj set to identity", conversion.identity_out_proj),
        ("dropped", conversion.dropped),
    ):
        if keys:
            logger.log(level, "%s: %s", title, ", ".join(keys))
    logger.info("converted %s checkpoint: %s", model_name, conversion.summary())
