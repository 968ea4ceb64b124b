"""Convert MONAI Generative Models ``AutoencoderKL`` checkpoints, reproducing their outputs exactly.

The legacy attention block (``generative.networks.nets.autoencoderkl.AttentionBlock``, releases 0.2.0 to 0.2.3) has
``to_q/to_k/to_v`` linears and creates a ``proj_attn`` linear that its forward pass never applies. MONAI core's
``AutoencoderKL.load_old_state_dict`` copies ``proj_attn`` into ``out_proj``, which the new block does apply, so the
loaded model silently computes something else. Here ``proj_attn`` is dropped and ``out_proj`` becomes the identity.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from monai_ext.legacy.checkpoint import check_state_dict_keys, read_state_dict

__all__ = ["convert_autoencoderkl_state_dict", "convert_legacy_autoencoderkl"]

logger = logging.getLogger(__name__)

QKV = ("to_q", "to_k", "to_v")
# <block>.to_q.weight etc. directly under the block: the legacy AttentionBlock (MONAI nests them under ".attn").
LEGACY_ATTENTION_KEY = re.compile(
    r"(?P<block>.+?)(?<!\.attn)\.(?P<part>to_q|to_k|to_v|proj_attn)\.(?P<kind>weight|bias)"
)
# The legacy decoder's Upsample kept its convolution under ".conv"; MONAI's Upsample calls it ".postconv".
LEGACY_UPSAMPLE_KEY = re.compile(r"(?P<block>decoder\.blocks\.\d+)\.conv\.(?P<rest>conv\.(weight|bias))")
ATTENTION_WEIGHT_KEY = re.compile(r"(.+)\.attn\.(?:to_q|qkv)\.weight")
FUSED_QKV_KEY = re.compile(r"(.+\.attn)\.qkv\.(weight|bias)")
# Constructor arguments of the legacy AutoencoderKL that MONAI renamed.
LEGACY_ARGUMENT_NAMES = {"num_channels": "channels", "use_checkpointing": "use_checkpoint"}


@dataclass
class AutoencoderKLConversion:
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


def _attention_blocks(keys: list[str]) -> list[str]:
    """Prefixes of the spatial attention blocks of a MONAI-layout AutoencoderKL state dict."""
    return sorted({match[1] for key in keys if (match := ATTENTION_WEIGHT_KEY.fullmatch(key))})


def _split_qkv(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Expected shapes with every fused ``attn.qkv`` entry replaced by its three ``attn.to_q/to_k/to_v`` parts."""
    split = {}
    for key, shape in shapes.items():
        match = FUSED_QKV_KEY.fullmatch(key)
        if match:
            for part in QKV:
                split[f"{match[1]}.{part}.{match[2]}"] = (shape[0] // 3, *shape[1:])
        else:
            split[key] = shape
    return split


def _is_identity(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        return False
    return torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype)) and (bias is None or not bias.any())


def _convert(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    name: str | None = None,
) -> AutoencoderKLConversion:
    found = read_state_dict(old, name)
    name = name or (str(old) if isinstance(old, str | os.PathLike) else "checkpoint")
    target = model.state_dict()
    expected = _split_qkv({key: tuple(value.shape) for key, value in target.items()})
    blocks = _attention_blocks(list(target))
    fused = [block for block in blocks if f"{block}.attn.qkv.weight" in target]
    has_out_proj = any(f"{block}.attn.out_proj.weight" in target for block in blocks)
    layout = f"include_fc={has_out_proj}, use_combined_linear={bool(fused)} ({len(blocks)} attention blocks)"

    # 1. Bring every key into MONAI's separate to_q/to_k/to_v naming.
    canonical: dict[str, torch.Tensor] = {}
    legacy_blocks: set[str] = set()
    renamed: list[str] = []
    dropped: list[str] = []
    split: list[str] = []
    for key, value in found.items():
        legacy = LEGACY_ATTENTION_KEY.fullmatch(key)
        upsample = LEGACY_UPSAMPLE_KEY.fullmatch(key)
        fused_key = FUSED_QKV_KEY.fullmatch(key)
        if legacy:
            block, part, kind = legacy["block"], legacy["part"], legacy["kind"]
            legacy_blocks.add(block)
            if part == "proj_attn" and not proj_attn_applied:
                dropped.append(key)
                continue
            canonical[f"{block}.attn.{'out_proj' if part == 'proj_attn' else part}.{kind}"] = value
            renamed.append(key)
        elif upsample and key not in expected and f"{upsample['block']}.postconv.{upsample['rest']}" in expected:
            canonical[f"{upsample['block']}.postconv.{upsample['rest']}"] = value
            renamed.append(key)
        elif fused_key and value.shape[0] % 3 == 0:
            for part, chunk in zip(QKV, value.chunk(3), strict=True):
                canonical[f"{fused_key[1]}.{part}.{fused_key[2]}"] = chunk
            split.append(key)
        else:
            canonical[key] = value

    # 2. Output projections: identity where the checkpoint's forward applied none, dropped where the model has none.
    current_applies_out_proj = any(key.endswith(".attn.out_proj.weight") for key in found)
    identity: list[str] = []
    for block in blocks:
        weight_key, bias_key = f"{block}.attn.out_proj.weight", f"{block}.attn.out_proj.bias"
        applied = proj_attn_applied if block in legacy_blocks else current_applies_out_proj
        if weight_key in target and not applied:
            canonical[weight_key] = torch.eye(target[weight_key].shape[0], dtype=target[weight_key].dtype)
            canonical[bias_key] = torch.zeros_like(target[bias_key])
            identity.append(block)
        elif (
            weight_key not in target
            and weight_key in canonical
            and _is_identity(canonical[weight_key], canonical.get(bias_key))
        ):
            del canonical[weight_key]
            canonical.pop(bias_key, None)
            dropped.append(f"{block}.attn.out_proj (identity)")

    # 3. One error naming every problem.
    hints = [
        "Build the model with the architecture arguments the checkpoint was trained with. Attention keys are named "
        "in MONAI's layout (legacy <block>.to_q is <block>.attn.to_q, proj_attn is attn.out_proj) and legacy "
        "upsampling convolutions decoder.blocks.N.conv as decoder.blocks.N.postconv."
    ]
    if any(key.endswith(".attn.out_proj.weight") and key not in expected for key in canonical):
        hints.append("The checkpoint's attention applies out_proj: build the model with include_fc=True.")
    if proj_attn_applied and any(f"{block}.attn.out_proj.weight" not in canonical for block in legacy_blocks):
        hints.append("proj_attn_applied=True needs every legacy <block>.proj_attn.weight and .bias.")
    if any(LEGACY_UPSAMPLE_KEY.fullmatch(key) for key in canonical) and any(
        key.endswith(".deconv.weight") for key in expected
    ):
        hints.append(
            "MONAI Generative's use_convtranspose=True upsampling (3-wide transposed kernel) has no counterpart in "
            "MONAI's AutoencoderKL(use_convtranspose=True) (2-wide kernel), so it cannot be converted."
        )
    check_state_dict_keys(expected, canonical, name, " ".join(hints))

    # 4. Write the model's layout.
    converted = {}
    for key in target:
        fused_key = FUSED_QKV_KEY.fullmatch(key)
        if fused_key:
            converted[key] = torch.cat([canonical[f"{fused_key[1]}.{part}.{fused_key[2]}"] for part in QKV])
        else:
            converted[key] = canonical[key]
    source_format = "MONAI Generative Models (legacy)" if legacy_blocks or renamed else "MONAI / monai_ext"
    return AutoencoderKLConversion(
        state_dict=converted,
        source_format=source_format,
        target_layout=layout,
        renamed=renamed,
        dropped=dropped,
        identity_out_proj=identity,
        merged_qkv=[block for block in fused if f"{block}.attn.qkv.weight" not in found],
        split_qkv=split,
    )


def convert_autoencoderkl_state_dict(
    old: str | os.PathLike | Mapping[str, torch.Tensor],
    model: nn.Module,
    proj_attn_applied: bool = False,
    verbose: bool = False,
    name: str | None = None,
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

    Returns:
        A new dict with exactly the keys of ``model.state_dict()``, ready for ``model.load_state_dict``. Tensors
        that needed no change are shared with ``old``, not copied.

    Raises:
        FileNotFoundError: ``old`` is a path that does not exist.
        monai_ext.legacy.LegacyCheckpointError: the checkpoint does not fit ``model``; the message names every
            missing, unexpected and mis-shaped key, in MONAI's key names, and what to change.
    """
    conversion = _convert(old, model, proj_attn_applied, name)
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
    logger.info("converted AutoencoderKL checkpoint: %s", conversion.summary())
    return conversion.state_dict


def convert_legacy_autoencoderkl(
    src: str, dst: str, config: str, force: bool = False, proj_attn_applied: bool = False
) -> str:
    """Convert a MONAI Generative Models AutoencoderKL checkpoint for monai_ext's (or MONAI's) AutoencoderKL.

    The result reproduces the legacy model's outputs: the legacy forward never applied proj_attn, so it is dropped
    and out_proj becomes the identity (MONAI's own load_old_state_dict gets this wrong). Checkpoints already in
    MONAI's format are converted between attention layouts. Every key and shape is checked.

    Example, for a 3D model trained with channels (32, 64, 64) and attention at the last two levels:

        python -m monai_ext convert_legacy_autoencoderkl --src old.pt --dst new.pt --config net.json

    where net.json holds {"spatial_dims": 3, "channels": [32, 64, 64], "attention_levels": [false, true, true],
    "num_res_blocks": 2, "latent_channels": 3, "norm_num_groups": 32}. Give the architecture the checkpoint was
    trained with (legacy num_channels is channels here); include_fc and use_combined_linear may be chosen freely.

    Args:
        src: legacy checkpoint file (a state dict, possibly wrapped in {"state_dict": ...}, with "module." prefixes).
        dst: where to write the converted state dict; written atomically, never over an existing file without --force.
        config: JSON file with the monai_ext.networks.nets.AutoencoderKL constructor arguments, as above; the legacy
            names num_channels and use_checkpointing are accepted, and a "_target_" key (as in a bundle's
            network_def) is ignored.
        force: overwrite dst if it exists.
        proj_attn_applied: only for checkpoints from code whose attention DID apply proj_attn (no release did).

    Returns:
        A short report: source, destination, keys written, layout, renamed keys, whether proj_attn was dropped.
    """
    from monai_ext.legacy.checkpoint import LegacyCheckpointError
    from monai_ext.networks.nets.autoencoderkl import AutoencoderKL

    src, dst_path = str(src), Path(str(dst))
    if dst_path.exists() and not force:
        raise SystemExit(f"error: {dst_path} exists; pass --force to overwrite it")
    try:
        arguments = json.loads(Path(str(config)).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read the network arguments from --config {config}: {err}") from err
    if not isinstance(arguments, dict):
        raise SystemExit(f"error: --config {config} must hold a JSON object of AutoencoderKL arguments")
    arguments.pop("_target_", None)
    for legacy_name, name in LEGACY_ARGUMENT_NAMES.items():
        if legacy_name in arguments and name not in arguments:
            arguments[name] = arguments.pop(legacy_name)
    try:
        model = AutoencoderKL(**arguments)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: --config {config} does not build an AutoencoderKL: {err}") from err
    try:
        conversion = _convert(src, model, proj_attn_applied=proj_attn_applied)
    except (FileNotFoundError, LegacyCheckpointError) as err:
        raise SystemExit(f"error: {err}") from err

    dst_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=dst_path.parent, prefix=f".{dst_path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(conversion.state_dict, tmp_name)
        os.replace(tmp_name, dst_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    proj_attn = [key for key in conversion.dropped if key.endswith(".proj_attn.weight")]
    return "\n".join(
        [
            f"converted {src} -> {dst_path}",
            f"keys written: {len(conversion.state_dict)}",
            f"source format: {conversion.source_format}",
            f"model layout: {conversion.target_layout}",
            f"keys renamed from legacy names: {len(conversion.renamed)}",
            "proj_attn dropped (never applied by the legacy forward): "
            + (f"yes, in {len(proj_attn)} attention blocks" if proj_attn else "no"),
            f"out_proj set to identity: {len(conversion.identity_out_proj)} attention blocks",
        ]
    )
