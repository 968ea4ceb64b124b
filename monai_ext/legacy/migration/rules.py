"""What moved from MONAI Generative Models (``generative``, 0.1 to 0.2.x) to MONAI core, as lookup tables.

Sources: MONAI 1.4's import of the package, the Model Zoo's hand migration of its BraTS latent-diffusion bundles
(model-zoo #621 and #625), and GenerativeModels' own history for what 0.1.0 did differently.
"""

from __future__ import annotations

import importlib

# Legacy subpackage -> MONAI core subpackage. A class's submodule (``generative.networks.nets.autoencoderkl``) is
# dropped: every moved class is exported by its MONAI package.
PACKAGES = {
    "generative.networks.nets": "monai.networks.nets",
    "generative.networks.schedulers": "monai.networks.schedulers",
    "generative.inferers": "monai.inferers",
    "generative.losses": "monai.losses",
    "generative.metrics": "monai.metrics",
    "generative.networks.blocks": "monai.networks.blocks",
    "generative.networks.layers": "monai.networks.layers",
    "generative.utils": "monai.utils",
}

# How metadata.json names the legacy package among its package versions
LEGACY_PACKAGE_NAMES = ("monai-generative", "monai_generative", "generative")

# Names that MONAI moved inside MONAI itself since the legacy bundles were written.
MOVED_NAMES = {"monai.config.IgniteInfo": "monai.utils.IgniteInfo"}

# class name -> {legacy argument: MONAI argument}; the classes are the MONAI core ones the legacy names became.
CHANNEL_CLASSES = (
    "AutoencoderKL", "ControlNet", "DiffusionModelUNet", "MultiScalePatchDiscriminator", "PatchDiscriminator",
    "SPADEAutoencoderKL", "SPADEDiffusionModelUNet", "SPADENet", "VQVAE",
)  # fmt: skip
ARGUMENTS: dict[str, dict[str, str]] = {name: {"num_channels": "channels"} for name in CHANNEL_CLASSES}
ARGUMENTS["AutoencoderKL"]["use_checkpointing"] = "use_checkpoint"
for scheduler in ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler"):
    ARGUMENTS[scheduler] = {"beta_schedule": "schedule"}
# 0.1.0's schedulers named their schedules without MONAI's "_beta" suffix
ARGUMENT_VALUES = {"beta_schedule": {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}}
ARGUMENTS["SSIMMetric"] = {"kernel_size": "win_size"}
ARGUMENTS["MultiScaleSSIMMetric"] = {"kernel_size": "win_size"}

# class name -> the monai_ext converter that reproduces its legacy checkpoints
CONVERTERS = {
    "AutoencoderKL": "monai_ext.legacy.convert_autoencoderkl_state_dict",
    "DiffusionModelUNet": "monai_ext.legacy.convert_diffusion_unet_state_dict",
    "ControlNet": "monai_ext.legacy.convert_controlnet_state_dict",
}

# Schedulers whose set_timesteps MONAI 1.6 spaces differently from the legacy package (PNDM kept the spacing).
RESPACED_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")

# Constructor arguments that exist only from MONAI Generative Models 0.2.0 on.
ARGUMENTS_SINCE_0_2 = ("use_flash_attention", "upcast_attention", "resblock_updown")


def core_name(dotted: str) -> str | None:
    """The MONAI core name for a legacy dotted name (``generative.networks.nets.x.AutoencoderKL``), or None.

    Returns None for a name outside the moved packages, or one that MONAI core does not export.
    """
    if dotted in MOVED_NAMES:
        return MOVED_NAMES[dotted]
    for legacy, core in PACKAGES.items():
        if dotted == legacy:
            return core
        if dotted.startswith(legacy + "."):
            name = dotted.rsplit(".", 1)[1]
            return f"{core}.{name}" if hasattr(importlib.import_module(core), name) else None
    return None
