"""Legacy (MONAI Generative Models 0.2.3) bundles for the migration tests, with seeded weights the legacy package
itself writes, every tensor perturbed so that a dropped or mis-mapped weight changes the output.

- :func:`zoo_bundle`: the Model Zoo's brats_mri_generative_diffusion 1.0.9 (tests/data), its channels, latent and
  patch sizes reduced in the test's copy so that CPU sampling takes seconds;
- :func:`write_ldm_bundle`: our own small 3D latent diffusion bundle, its UNet with cross-attention conditioning or with
  self-attention, in JSON or YAML, written by 0.2.3 or with 0.1.0's semantics (:func:`as_release_0_1`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from legacy_generative import legacy_scheduler_and_inferer_modules

ZOO_BUNDLE = Path(__file__).parent / "data" / "model_zoo" / "brats_mri_generative_diffusion"
# lpips, which generative.losses imports at module level, needs torchvision, which cannot be installed beside the
# CPU torch these machines use; inference never calls it (see legacy_stand_ins/lpips.py)
LEGACY_STAND_INS = Path(__file__).parent / "legacy_stand_ins"

# `python -m monai.bundle run ...` as a user runs it: legacy with IgniteInfo put back where the legacy package looks
# for it; migrated ("core") with the legacy package made unimportable
RUNNER = """
import runpy, sys
if sys.argv[1] == "legacy":
    import monai.config, monai.utils
    monai.config.IgniteInfo = monai.utils.IgniteInfo
else:
    sys.modules["generative"] = None
sys.argv = ["monai.bundle", *sys.argv[2:]]
runpy.run_module("monai.bundle", run_name="__main__")
"""


def bundle_run(kind: str, bundle: Path, *args, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ARGS`` in ``bundle``, as legacy (``kind="legacy"``) or migrated ("core")."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    try:
        import lpips  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        env["PYTHONPATH"] = str(LEGACY_STAND_INS)
    command = [sys.executable, "-c", RUNNER, kind, "run", *map(str, args)]
    done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise AssertionError(f"{kind} run of {bundle} failed:\n{done.stderr[-5000:]}")
    return done


def sample_inference(kind: str, bundle: Path, noise_file: Path, output: Path, *overrides) -> tuple[np.ndarray, float]:
    """Run ``configs/inference.json`` on the noise in ``noise_file``; return the image it writes and the seconds."""
    noise = f"$torch.load('{noise_file}', weights_only=True)"
    start = time.perf_counter()
    bundle_run(kind, bundle, "--config_file", "configs/inference.json", "--noise", noise, "--output_dir", output,
               *overrides)  # fmt: skip
    seconds = time.perf_counter() - start
    [written] = output.rglob("*.nii.gz")
    return np.asarray(nib.load(written).dataobj, dtype=np.float64), seconds


SMALL_AUTOENCODER = {"num_channels": [8, 16, 16], "norm_num_groups": 8}
SMALL_UNET = {"num_channels": [16, 16, 32], "num_head_channels": [0, 8, 8], "norm_num_groups": 8}


def perturbed_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every floating tensor moved off its initial value by seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in model.state_dict().items()
    }


def _edit(path: Path, edits: dict) -> None:
    config = json.loads(path.read_text())
    for key, value in edits.items():
        *parents, last = key.split("#")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(json.dumps(config, indent=4))


def zoo_bundle(folder: Path, small: bool = True, latent: tuple[int, int, int] = (8, 8, 8)) -> Path:
    """The Zoo's brats_mri_generative_diffusion 1.0.9 with seeded legacy weights in models/.

    Args:
        folder: where to put the bundle folder.
        small: reduce channels, latent channels and patches (as the tests do); otherwise keep the Zoo's networks.
        latent: the latent's spatial shape (the Zoo's is 36 x 44 x 28); images are 4 times larger.
    """
    import generative.networks.nets as legacy_nets

    bundle = folder / "brats_mri_generative_diffusion"
    shutil.copytree(ZOO_BUNDLE, bundle)
    configs = bundle / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    latent_channels = 4 if small else inference["latent_channels"]
    image = [4 * size for size in latent]
    sizes = {"latent_channels": latent_channels, "spacing": [4.0, 4.0, 4.0]} if small else {}
    autoencoder = {f"autoencoder_def#{k}": v for k, v in SMALL_AUTOENCODER.items()} if small else {}
    unet = {f"network_def#{k}": v for k, v in SMALL_UNET.items()} if small else {}
    _edit(configs / "inference.json", {**sizes, **autoencoder, **unet, "latent_shape": [latent_channels, *latent]})
    _edit(configs / "inference_autoencoder.json", {**sizes, **autoencoder, "infer_patch_size": image})
    _edit(configs / "train_autoencoder.json", {**sizes, **autoencoder, "train_patch_size": image})
    _edit(
        configs / "train_diffusion.json",
        {**unet, "train_patch_size": image, "latent_shape": ["@latent_channels", *latent]},
    )
    arguments = json.loads((configs / "inference.json").read_text())
    autoencoder_args = {k: v for k, v in arguments["autoencoder_def"].items() if k != "_target_"}
    unet_args = {k: v for k, v in arguments["network_def"].items() if k != "_target_"}
    autoencoder_args.update(spatial_dims=3, in_channels=1, out_channels=1, latent_channels=latent_channels)
    unet_args.update(spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels)
    torch.manual_seed(0)
    models = bundle / "models"
    models.mkdir()
    torch.save(perturbed_state(legacy_nets.AutoencoderKL(**autoencoder_args), 1), models / "model_autoencoder.pt")
    torch.save(perturbed_state(legacy_nets.DiffusionModelUNet(**unet_args), 2), models / "model.pt")
    return bundle


LDM_AUTOENCODER = {
    "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 3, "num_channels": [8, 16],
    "num_res_blocks": 1, "norm_num_groups": 8, "attention_levels": [False, True],
}  # fmt: skip
SELF_ATTENTION_UNET = {
    "spatial_dims": 3, "in_channels": 3, "out_channels": 3, "num_channels": [8, 16], "num_res_blocks": 1,
    "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 8,
}  # fmt: skip
CONDITIONED_UNET = {**SELF_ATTENTION_UNET, "with_conditioning": True, "cross_attention_dim": 4}
CONDITIONING = "$torch.linspace(-1, 1, 4).reshape(1, 1, 4)"


def ldm_config(conditioned: bool = True, steps: int = 10, metadata_version: str = "0.2.3") -> tuple[dict, dict]:
    """A legacy latent diffusion inference config (cross-attention conditioning or self-attention), and metadata."""
    unet = CONDITIONED_UNET if conditioned else SELF_ATTENTION_UNET
    config = {
        "imports": ["$import torch", "$import generative"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "output_dir": "$@bundle_root + '/output'",
        "autoencoder_def": {"_target_": "generative.networks.nets.AutoencoderKL", **LDM_AUTOENCODER},
        "network_def": {"_target_": "generative.networks.nets.DiffusionModelUNet", **unet},
        "load_autoencoder_path": "$@bundle_root + '/models/autoencoder.pt'",
        "load_autoencoder": "$@autoencoder_def.load_state_dict(torch.load(@load_autoencoder_path))",
        "autoencoder": "$@autoencoder_def.to(@device).eval()",
        "load_diffusion": "$@network_def.load_state_dict(torch.load(@bundle_root + '/models/unet.pt'))",
        "diffusion": "$@network_def.to(@device).eval()",
        "noise_scheduler": {
            "_target_": "generative.networks.schedulers.DDIMScheduler",
            "num_train_timesteps": 1000,
            "schedule": "scaled_linear_beta",
            "beta_start": 0.0015,
            "beta_end": 0.0195,
        },
        "set_timesteps": f"$@noise_scheduler.set_timesteps(num_inference_steps={steps})",
        "inferer": {
            "_target_": "generative.inferers.LatentDiffusionInferer",
            "scheduler": "@noise_scheduler",
            "scale_factor": 0.8,
        },
        "noise": "$torch.randn(1, 3, 8, 8, 8)",
        "conditioning": CONDITIONING if conditioned else "$None",
        "saver": {
            "_target_": "SaveImage",
            "output_dir": "@output_dir",
            "output_postfix": "sample",
            "separate_folder": False,
        },
        "sample": "$@inferer.sample(input_noise=@noise, autoencoder_model=@autoencoder, diffusion_model=@diffusion, "
        "scheduler=@noise_scheduler, conditioning=@conditioning, verbose=False)",
        "run": ["@load_autoencoder", "@load_diffusion", "@set_timesteps", "$@saver(@sample[0])"],
    }
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
        "meta_schema_generator_ldm_20230507.json",
        "version": "0.3.1",
        "changelog": {"0.3.1": "a conditioned latent diffusion model"},
        "monai_version": "1.3.1",
        "pytorch_version": "2.2.2",
        "numpy_version": "1.24.4",
        "optional_packages_version": {"nibabel": "5.2.1", "monai-generative": metadata_version},
        "task": "3D latent diffusion synthesis",
        "description": "a test bundle",
        "authors": "monai_ext tests",
        "copyright": "none",
        "network_data_format": {
            "inputs": {"image": {"type": "noise", "format": "image", "num_channels": 3, "spatial_shape": [8, 8, 8],
                                  "dtype": "float32", "value_range": [], "is_patch_data": False}},
            "outputs": {"pred": {"type": "feature", "format": "image", "num_channels": 3, "spatial_shape": [8, 8, 8],
                                 "dtype": "float32", "value_range": [], "is_patch_data": False}},
        },
    }  # fmt: skip
    return config, metadata


def legacy_ldm_models(conditioned: bool = True, release_0_1: bool = False):
    """The legacy autoencoder and UNet of :func:`ldm_config`, seeded and perturbed, in eval mode."""
    import generative.networks.nets as legacy_nets

    torch.manual_seed(0)
    autoencoder = legacy_nets.AutoencoderKL(**LDM_AUTOENCODER)
    autoencoder.load_state_dict(perturbed_state(autoencoder, 3))
    unet = legacy_nets.DiffusionModelUNet(**(CONDITIONED_UNET if conditioned else SELF_ATTENTION_UNET))
    unet.load_state_dict(perturbed_state(unet, 4))
    if release_0_1:
        as_release_0_1(autoencoder)
        as_release_0_1(unet)
    return autoencoder.eval(), unet.eval()


def _applies_proj_attn(block, x):
    """0.2.3's spatial attention forward, then 0.1.0's ``proj_attn`` on the attention output (before the residual)."""
    residual = x
    # the attention output is what 0.2.3 adds to the residual
    out = type(block).forward(block, x) - residual
    shape = out.shape
    flat = out.reshape(shape[0], shape[1], -1).transpose(1, 2)
    return block.proj_attn(flat).transpose(1, 2).reshape(shape) + residual


def as_release_0_1(model: torch.nn.Module) -> torch.nn.Module:
    """Make a 0.2.3 network compute what 0.1.0 did: self-attention applies ``proj_attn``, cross-attention is
    unscaled (GenerativeModels before 9cd35d0 and 1b34291). Changes ``model`` in place and returns it."""
    for module in model.modules():
        if hasattr(module, "proj_attn") and hasattr(module, "to_q"):
            module.forward = types.MethodType(_applies_proj_attn, module)
        elif type(module).__name__ == "CrossAttention":
            module.scale = 1.0
    return model


AUTOENCODER_NAMES_0_1 = {"to_q": "q", "to_k": "k", "to_v": "v", "proj_attn": "proj_out"}
UNET_NAMES_0_1 = {"to_q": "query", "to_k": "key", "to_v": "value", "proj_attn": "proj_attn"}


def release_0_1_state(model: torch.nn.Module, spatial_dims: int = 3) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the key names 0.1.0 wrote (query/key/value, q/k/v 1x1 convolutions,
    ff.net.0.proj / ff.net.2)."""
    renamed = {}
    for key, value in model.state_dict().items():
        parts = key.rsplit(".", 2)
        if len(parts) == 3 and parts[1] in UNET_NAMES_0_1 and ".attn" not in parts[0]:
            block, part, kind = parts
            if key.startswith(("encoder.", "decoder.")):
                weight = value.reshape(*value.shape, *(1,) * spatial_dims) if kind == "weight" else value
                renamed[f"{block}.{AUTOENCODER_NAMES_0_1[part]}.conv.{kind}"] = weight
            else:
                renamed[f"{block}.{UNET_NAMES_0_1[part]}.{kind}"] = value
        else:
            renamed[key.replace(".ff.linear1.", ".ff.net.0.proj.").replace(".ff.linear2.", ".ff.net.2.")] = value
    return renamed


def write_ldm_bundle(
    folder: Path, fmt: str = "json", conditioned: bool = True, release_0_1: bool = False, steps: int = 10
) -> Path:
    """Write :func:`ldm_config` as a bundle with legacy weights; returns the bundle folder."""
    name = f"{'conditioned' if conditioned else 'self_attention'}_{fmt}{'_0_1' if release_0_1 else ''}"
    bundle = folder / name
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    config, metadata = ldm_config(conditioned, steps, "0.1.0" if release_0_1 else "0.2.3")
    if fmt == "json":
        (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    else:
        import yaml

        (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    autoencoder, unet = legacy_ldm_models(conditioned, release_0_1)
    save = release_0_1_state if release_0_1 else (lambda model: model.state_dict())
    torch.save(save(autoencoder), bundle / "models" / "autoencoder.pt")
    torch.save(save(unet), bundle / "models" / "unet.pt")
    return bundle


def legacy_ldm_sample(noise: torch.Tensor, conditioned: bool = True, release_0_1: bool = False, steps: int = 10):
    """The sample the legacy pipeline of :func:`ldm_config` draws from ``noise``, computed with the legacy classes."""
    schedulers, inferers = legacy_scheduler_and_inferer_modules()
    autoencoder, unet = legacy_ldm_models(conditioned, release_0_1)
    config, _ = ldm_config(conditioned, steps)
    scheduler_args = {k: v for k, v in config["noise_scheduler"].items() if k != "_target_"}
    scheduler = schedulers.DDIMScheduler(**scheduler_args)
    scheduler.set_timesteps(num_inference_steps=steps)
    conditioning = torch.linspace(-1, 1, 4).reshape(1, 1, 4) if conditioned else None
    inferer = inferers.LatentDiffusionInferer(scheduler, scale_factor=0.8)
    with torch.no_grad():
        return inferer.sample(noise, autoencoder, unet, scheduler, conditioning=conditioning, verbose=False)
