"""Sample with MONAI core's DDIM and DDPM schedulers on the timesteps MONAI Generative Models used.

MONAI Generative Models 0.2.x spaced ``n`` inference steps as ``(n - 1) * T // n, ..., T // n, 0`` ("leading"
spacing; ``T`` training steps). MONAI 1.6.1 spaces them as ``round(linspace(T - 1, 0, n))`` but its DDIM ``step``
still takes the previous timestep to be ``t - T // n``. With 10 of 1000 steps MONAI visits 999, 888, ..., 0 while
each DDIM step computes the sample for ``t - 100``, so a converted legacy pipeline gives another sample from the
same noise, whatever its weights.
"""

from __future__ import annotations

import torch

__all__ = ["set_legacy_timesteps"]


def set_legacy_timesteps(scheduler, num_inference_steps: int, device: str | torch.device | None = None) -> None:
    """Call ``scheduler.set_timesteps`` and replace its timesteps by MONAI Generative Models' spacing.

    Use it in place of ``scheduler.set_timesteps(num_inference_steps)`` for a MONAI core ``DDIMScheduler`` or
    ``DDPMScheduler`` that samples a model trained and validated with MONAI Generative Models 0.2.x; the
    ``LatentDiffusionInferer`` and ``DiffusionInferer`` then run the legacy chain. ``PNDMScheduler`` kept the
    legacy spacing and needs nothing.

    Args:
        scheduler: a ``monai.networks.schedulers.DDIMScheduler`` or ``DDPMScheduler``.
        num_inference_steps: number of sampling steps.
        device: where to put the timesteps.

    Raises:
        TypeError: ``scheduler`` is neither of the two.
        ValueError: as ``set_timesteps`` raises, e.g. more steps than the scheduler was trained with.
    """
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    if not isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
        raise TypeError(
            f"set_legacy_timesteps takes MONAI's DDIMScheduler or DDPMScheduler, got {type(scheduler).__name__}."
        )
    scheduler.set_timesteps(num_inference_steps, device=device)
    step_ratio = scheduler.num_train_timesteps // num_inference_steps
    timesteps = torch.arange(num_inference_steps - 1, -1, -1, device=device) * step_ratio
    # the legacy DDIM shifted its timesteps by steps_offset; the legacy DDPM had no offset
    scheduler.timesteps = timesteps + getattr(scheduler, "steps_offset", 0)
