"""``python -m monai_ext convert_legacy_MODEL --src OLD.pt --dst NEW.pt --config NET.json``: one shape for all models.

Each command builds the target network from a JSON file of constructor arguments, converts the legacy checkpoint
with the matching converter, and writes the result atomically with its SHA-256 recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

__all__ = ["convert_legacy_autoencoderkl", "convert_legacy_controlnet", "convert_legacy_diffusion_unet"]

# Constructor arguments that MONAI renamed from MONAI Generative Models.
LEGACY_ARGUMENT_NAMES = {"num_channels": "channels", "use_checkpointing": "use_checkpoint"}


def _build(model_class: type[nn.Module], config: str) -> nn.Module:
    try:
        arguments = json.loads(Path(str(config)).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read the network arguments from --config {config}: {err}") from err
    if not isinstance(arguments, dict):
        raise SystemExit(f"error: --config {config} must hold a JSON object of {model_class.__name__} arguments")
    arguments.pop("_target_", None)
    for legacy_name, name in LEGACY_ARGUMENT_NAMES.items():
        if legacy_name in arguments and name not in arguments:
            arguments[name] = arguments.pop(legacy_name)
    try:
        return model_class(**arguments)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: --config {config} does not build a {model_class.__name__}: {err}") from err


def _convert_file(
    model_class: type[nn.Module],
    hints: Callable[[nn.Module], list[str]],
    src: str,
    dst: str,
    config: str,
    force: bool,
    proj_attn_applied: bool,
) -> str:
    from monai_ext.legacy.attention_layout import convert_attention_layout
    from monai_ext.legacy.checkpoint import LegacyCheckpointError
    from monai_ext.sharing.checkpoint import save_checkpoint

    src, dst_path = str(src), Path(str(dst))
    if dst_path.exists() and not force:
        raise SystemExit(f"error: {dst_path} exists; pass --force to overwrite it")
    model = _build(model_class, config)
    try:
        conversion = convert_attention_layout(src, model, proj_attn_applied, hints=hints(model))
    except (FileNotFoundError, LegacyCheckpointError) as err:
        raise SystemExit(f"error: {err}") from err
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    digest = save_checkpoint(conversion.state_dict, dst_path)
    proj_attn = [key for key in conversion.dropped if key.endswith(".proj_attn.weight")]
    return "\n".join(
        [
            f"converted {src} -> {dst_path} ({model_class.__module__}.{model_class.__name__})",
            f"keys written: {len(conversion.state_dict)}, SHA-256 {digest}",
            f"source format: {conversion.source_format}",
            f"model layout: {conversion.target_layout}",
            f"keys renamed from legacy names: {len(conversion.renamed)}",
            "proj_attn dropped (never applied by the legacy forward): "
            + (f"yes, in {len(proj_attn)} attention blocks" if proj_attn else "no"),
            f"out_proj set to identity: {len(conversion.identity_out_proj)} attention blocks",
        ]
    )


def _command(
    model_class: Callable[[], type[nn.Module]], hints: Callable[[nn.Module], list[str]], example: str
) -> Callable[..., str]:
    def convert(src: str, dst: str, config: str, force: bool = False, proj_attn_applied: bool = False) -> str:
        return _convert_file(model_class(), hints, src, dst, config, force, proj_attn_applied)

    name = model_class().__name__
    convert.__doc__ = f"""Convert a MONAI Generative Models {name} checkpoint so that it reproduces the legacy outputs.

    The legacy self-attention never applied proj_attn, so it is dropped and out_proj becomes the identity (MONAI's
    own load_old_state_dict gets this wrong); legacy key names become MONAI's, and checkpoints already in MONAI's
    format are converted between attention layouts. Every key and shape is checked, and the output is written
    atomically with its SHA-256 in sha256_manifest.json beside it.

    Example:

        python -m monai_ext convert_legacy_{example} --src old.pt --dst new.pt --config net.json

    where net.json holds the {name} constructor arguments the checkpoint was trained with (legacy num_channels is
    channels; a "_target_" key, as in a bundle's network_def, is ignored). include_fc and use_combined_linear may be
    chosen freely.

    Args:
        src: legacy checkpoint file (a state dict, possibly wrapped in {{"state_dict": ...}}, with "module." prefixes).
        dst: where to write the converted state dict; never over an existing file without --force.
        config: JSON file with the constructor arguments of {model_class().__module__}.{name}.
        force: overwrite dst if it exists.
        proj_attn_applied: only for checkpoints from code whose attention DID apply proj_attn (no release did).

    Returns:
        A short report: source, destination, keys written, layout, renamed keys, whether proj_attn was dropped.
    """
    return convert


def _autoencoderkl() -> type[nn.Module]:
    from monai_ext.networks.nets.autoencoderkl import AutoencoderKL

    return AutoencoderKL


def _diffusion_unet() -> type[nn.Module]:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet


def _controlnet() -> type[nn.Module]:
    from monai.networks.nets import ControlNet

    return ControlNet


def _autoencoderkl_hints(model: nn.Module) -> list[str]:
    from monai_ext.legacy.autoencoderkl import autoencoderkl_hints

    return autoencoderkl_hints(model)


def _diffusion_hints(model: nn.Module) -> list[str]:
    from monai_ext.legacy.diffusion import diffusion_hints

    return diffusion_hints(model)


convert_legacy_autoencoderkl = _command(_autoencoderkl, _autoencoderkl_hints, "autoencoderkl")
convert_legacy_diffusion_unet = _command(_diffusion_unet, _diffusion_hints, "diffusion_unet")
convert_legacy_controlnet = _command(_controlnet, _diffusion_hints, "controlnet")
