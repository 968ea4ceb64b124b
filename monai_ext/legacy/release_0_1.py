"""What MONAI Generative Models 0.1.0 (December 2022) computed differently from 0.2.x, as state-dict rewrites.

Release 0.1.0 came before GenerativeModels commits 9cd35d0 (cross-attention scale), 1b34291 (attention refactor)
and fd362dc (``MLPBlock``). Its checkpoints differ from 0.2.x ones in names and in arithmetic:

- the diffusion UNet's self-attention names its projections ``query/key/value`` and APPLIES ``proj_attn``;
- the AutoencoderKL's attention is 1x1 convolutions ``q/k/v`` and an applied ``proj_out``;
- the transformer blocks' feed-forward is ``ff.net.0.proj`` and ``ff.net.2`` (0.2.x and MONAI: ``ff.linear1/2``);
- cross-attention (``attn1``/``attn2``) multiplies queries and keys without the ``1/sqrt(head_dim)`` scale.

:func:`rename_release_0_1_keys` gives 0.1.0 weights 0.2.x names, after which the 0.2.x conversion runs with
``proj_attn_applied=True``; :func:`unscale_cross_attention` then folds the missing scale into the queries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from packaging.version import InvalidVersion, Version

from monai_ext.legacy.attention_layout import LayoutConversion, convert_attention_layout
from monai_ext.legacy.checkpoint import read_state_dict

__all__ = [
    "convert_legacy_release",
    "is_release_0_1",
    "is_release_0_1_checkpoint",
    "rename_release_0_1_keys",
    "unscale_cross_attention",
]

SELF_ATTENTION_0_1 = re.compile(r"(?P<block>.+)\.(?P<part>query|key|value)\.(?P<kind>weight|bias)")
# proj_out.conv also names the spatial transformers' output convolution in every release: it belongs to 0.1.0's
# autoencoder attention only in a block that also has that attention's q.conv
AUTOENCODER_ATTENTION_0_1 = re.compile(r"(?P<block>.+)\.(?P<part>q|k|v|proj_out)\.conv\.(?P<kind>weight|bias)")
AUTOENCODER_QUERY_0_1 = re.compile(r"(?P<block>.+)\.q\.conv\.weight")
FEED_FORWARD_0_1 = {".ff.net.0.proj.": ".ff.linear1.", ".ff.net.2.": ".ff.linear2."}
PARTS_0_2 = {"query": "to_q", "key": "to_k", "value": "to_v", "q": "to_q", "k": "to_k", "v": "to_v"}
TRANSFORMER_QUERY = re.compile(r"(?P<attention>.+\.attn[12])\.(?P<part>to_q|qkv)\.(?P<kind>weight|bias)")


def is_release_0_1_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether any key has a name that only MONAI Generative Models 0.1.0 wrote."""
    return any(
        SELF_ATTENTION_0_1.fullmatch(key)
        or AUTOENCODER_QUERY_0_1.fullmatch(key)
        or any(part in key for part in FEED_FORWARD_0_1)
        for key in state_dict
    )


def rename_release_0_1_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a new dict with 0.1.0's names in 0.2.x's, and 1x1 attention convolutions as linear weights.

    Keys that 0.1.0 and 0.2.x share are kept as they are, so a 0.2.x checkpoint passes through unchanged. An applied
    ``proj_out`` becomes ``proj_attn``, which the caller must then convert with ``proj_attn_applied=True``.
    """
    renamed: dict[str, torch.Tensor] = {}
    autoencoder_blocks = {m["block"] for key in state_dict if (m := AUTOENCODER_QUERY_0_1.fullmatch(key))}
    for key, value in state_dict.items():
        attention = SELF_ATTENTION_0_1.fullmatch(key)
        convolution = AUTOENCODER_ATTENTION_0_1.fullmatch(key)
        if convolution and convolution["block"] in autoencoder_blocks:
            attention = convolution
        if attention:
            block, part, kind = attention["block"], attention["part"], attention["kind"]
            # the autoencoder's 1x1 convolutions are linear layers with trailing singleton dimensions
            linear = value.reshape(value.shape[0], value.shape[1]) if kind == "weight" else value
            renamed[f"{block}.{PARTS_0_2.get(part, 'proj_attn')}.{kind}"] = linear
        else:
            for old, new in FEED_FORWARD_0_1.items():
                key = key.replace(old, new)
            renamed[key] = value
    return renamed


def unscale_cross_attention(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Return a new dict whose transformer queries absorb the ``1/sqrt(head_dim)`` that 0.1.0 did not apply.

    MONAI's transformer attention multiplies ``q @ k.T`` by its ``scale``; dividing the query projection (``to_q``,
    or the first third of a fused ``qkv``) by that same scale gives back 0.1.0's unscaled scores exactly.
    """
    modules = dict(model.named_modules())
    unscaled = dict(state_dict)
    for key, value in state_dict.items():
        query = TRANSFORMER_QUERY.fullmatch(key)
        if not query:
            continue
        scale = modules[query["attention"]].scale
        if query["part"] == "to_q":
            unscaled[key] = value / scale
        else:
            rows = value.shape[0] // 3
            unscaled[key] = torch.cat([value[:rows] / scale, value[rows:]])
    return unscaled


def is_release_0_1(legacy_version: str | None) -> bool:
    """Whether ``legacy_version`` (a MONAI Generative Models version, or None for 0.2.x) is before 0.2.0.

    Raises:
        ValueError: ``legacy_version`` is not a version number.
    """
    if legacy_version is None:
        return False
    try:
        return Version(str(legacy_version)) < Version("0.2.0")
    except InvalidVersion as err:
        raise ValueError(f"legacy_version {legacy_version!r} is not a version number such as 0.2.3 or 0.1.0") from err


def convert_legacy_release(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    legacy_version: str | None,
    proj_attn_applied: bool,
    name: str | None,
    hints: Sequence[str],
) -> LayoutConversion:
    """:func:`~monai_ext.legacy.attention_layout.convert_attention_layout` for a checkpoint of ``legacy_version``.

    For 0.1.x the 0.1.0 names are rewritten first, ``proj_attn`` is applied, and the cross-attention queries are
    unscaled, but only where the checkpoint is still in a legacy format: a file that was already converted to
    MONAI's format (by ``monai_ext migrate``) passes through unchanged, so one config loads either.
    """
    if not is_release_0_1(legacy_version):
        return convert_attention_layout(old, model, proj_attn_applied, name, hints)
    name = name or (str(old) if isinstance(old, str | os.PathLike) else "checkpoint")
    found = read_state_dict(old, name)
    conversion = convert_attention_layout(rename_release_0_1_keys(found), model, True, name, hints)
    if conversion.source_format.startswith("MONAI Generative Models"):
        conversion.state_dict = unscale_cross_attention(conversion.state_dict, model)
        conversion.source_format = f"MONAI Generative Models {legacy_version} (legacy)"
    return conversion
