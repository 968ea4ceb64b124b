"""A legacy latent diffusion pipeline beside its MONAI core conversions: samples, differences, sampling time, a PNG.

    python benchmarks/legacy_ldm.py [--size 64] [--steps 25] [--repeats 3] [--png docs/legacy_ldm_samples.png]

Builds a seeded MONAI Generative Models 0.2.3 pipeline (2D AutoencoderKL with attention, DiffusionModelUNet with
self- and cross-attention, DDIM) with every weight moved off its initial value, samples it, then samples MONAI
core's classes from the same noise three ways: converted with monai_ext's loaders on the legacy timesteps; loaded
with MONAI's own ``load_old_state_dict``; converted with our loaders but on MONAI 1.6's DDIM spacing. Prints each
sample's largest difference from the legacy one and median sampling times, and draws the four samples side by side.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import monai.config
import monai.utils
import torch

# MONAI moved IgniteInfo to monai.utils; MONAI Generative 0.2.3's schedulers and inferers still import it from here.
if not hasattr(monai.config, "IgniteInfo"):
    monai.config.IgniteInfo = monai.utils.IgniteInfo

from generative.inferers import LatentDiffusionInferer as LegacyInferer  # noqa: E402
from generative.networks.nets import AutoencoderKL as LegacyAutoencoderKL  # noqa: E402
from generative.networks.nets import DiffusionModelUNet as LegacyUNet  # noqa: E402
from generative.networks.schedulers import DDIMScheduler as LegacyDDIM  # noqa: E402
from monai.inferers import LatentDiffusionInferer  # noqa: E402
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDIMScheduler  # noqa: E402

from monai_ext.legacy import (  # noqa: E402
    convert_autoencoderkl_state_dict,
    convert_diffusion_unet_state_dict,
    set_legacy_timesteps,
)

AUTOENCODER = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "latent_channels": 3, "num_res_blocks": 1,
    "norm_num_groups": 16, "attention_levels": (False, False, True),
}  # fmt: skip
UNET = {
    "spatial_dims": 2, "in_channels": 3, "out_channels": 3, "num_res_blocks": 1, "attention_levels": (False, True),
    "num_head_channels": 16, "norm_num_groups": 16, "with_conditioning": True, "cross_attention_dim": 8,
}  # fmt: skip
SCHEDULER = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}
SCALE_FACTOR = 0.8


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def _sample(inferer_class, scheduler, autoencoder, unet, noise, context, repeats):
    inferer = inferer_class(scheduler, scale_factor=SCALE_FACTOR)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            sample = inferer.sample(noise, autoencoder, unet, scheduler, conditioning=context, verbose=False)
        times.append(time.perf_counter() - start)
    return sample, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (the latent is size / 4)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM sampling steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed samplings per pipeline (median reported)")
    parser.add_argument("--png", default=None, help="write the four samples side by side to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    legacy_autoencoder = _perturbed(LegacyAutoencoderKL(num_channels=(16, 32, 32), **AUTOENCODER), 1)
    legacy_unet = _perturbed(LegacyUNet(num_channels=(32, 64), **UNET), 2)
    torch.manual_seed(3)
    noise = torch.randn(1, 3, args.size // 4, args.size // 4)
    context = torch.randn(1, 1, 8)

    ours_autoencoder = AutoencoderKL(channels=(16, 32, 32), **AUTOENCODER)
    ours_autoencoder.load_state_dict(
        convert_autoencoderkl_state_dict(legacy_autoencoder.state_dict(), ours_autoencoder)
    )
    ours_unet = DiffusionModelUNet(channels=(32, 64), **UNET)
    ours_unet.load_state_dict(convert_diffusion_unet_state_dict(legacy_unet.state_dict(), ours_unet))
    monai_autoencoder = AutoencoderKL(channels=(16, 32, 32), **AUTOENCODER)
    monai_autoencoder.load_old_state_dict(copy.deepcopy(legacy_autoencoder.state_dict()))
    monai_unet = DiffusionModelUNet(channels=(32, 64), **UNET)
    monai_unet.load_old_state_dict(copy.deepcopy(legacy_unet.state_dict()))

    legacy_scheduler = LegacyDDIM(**SCHEDULER)
    legacy_scheduler.set_timesteps(args.steps)
    legacy_timesteps = DDIMScheduler(**SCHEDULER)
    set_legacy_timesteps(legacy_timesteps, args.steps)
    monai_timesteps = DDIMScheduler(**SCHEDULER)
    monai_timesteps.set_timesteps(args.steps)
    ours, monai_eval = (ours_autoencoder.eval(), ours_unet.eval()), (monai_autoencoder.eval(), monai_unet.eval())
    runs = {
        "MONAI Generative 0.2.3 (reference)": (LegacyInferer, legacy_scheduler, legacy_autoencoder, legacy_unet),
        "MONAI core, monai_ext loaders, legacy timesteps": (LatentDiffusionInferer, legacy_timesteps, *ours),
        "MONAI core, MONAI's load_old_state_dict": (LatentDiffusionInferer, legacy_timesteps, *monai_eval),
        "MONAI core, monai_ext loaders, MONAI's DDIM spacing": (LatentDiffusionInferer, monai_timesteps, *ours),
    }
    samples = {}
    print(f"{args.size}x{args.size} image, {args.steps} DDIM steps, median of {args.repeats} samplings, 2 threads")
    print("| pipeline | median s | max abs diff vs legacy | max rel diff |\n|---|---|---|---|")
    for name, (inferer, scheduler, autoencoder, unet) in runs.items():
        samples[name], seconds = _sample(inferer, scheduler, autoencoder, unet, noise, context, args.repeats)
        reference = samples[next(iter(runs))]
        difference = (samples[name] - reference).abs().max().item()
        print(f"| {name} | {seconds:.3f} | {difference:.2e} | {difference / reference.abs().max().item():.2e} |")
    if args.png:
        _save_png(samples, next(iter(runs)), args.png)
        print(f"wrote {args.png}")


def _save_png(samples: dict[str, torch.Tensor], reference: str, path: str) -> None:
    """Top row: the samples on one grey scale. Bottom row: |sample - reference| on one colour scale, with a bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    low = min(s.min().item() for s in samples.values())
    high = max(s.max().item() for s in samples.values())
    differences = {name: (sample - samples[reference]).abs()[0, 0] for name, sample in samples.items()}
    largest = max(d.max().item() for d in differences.values())
    figure = Figure(figsize=(3.2 * len(samples), 7.0), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(samples))
    for column, (name, sample) in enumerate(samples.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(sample[0, 0].T.numpy(), cmap="gray", vmin=low, vmax=high, origin="lower")
        caption = "reference" if name == reference else f"max |diff| {differences[name].max().item():.1e}"
        top.set_title(name.replace(", ", ",\n", 1) + f"\n{caption}", fontsize=8)
        shown = bottom.imshow(differences[name].T.numpy(), cmap="magma", vmin=0, vmax=largest, origin="lower")
        bottom.set_title("|sample - reference|", fontsize=8)
        for axis in (top, bottom):
            axis.set_axis_off()
    figure.colorbar(shown, ax=axes[1, :].tolist(), shrink=0.8, label="absolute difference")
    figure.savefig(path)


if __name__ == "__main__":
    main()
