"""How long an epoch is: a fixed number of iterations, whatever the dataset's size.

An epoch that is one pass over the cases lasts 2 iterations on a 4-case dataset and 100 on a 200-case one, so the
same ``max_epochs``, validation interval and checkpoints mean 50 times more training on one than on the other.
nnU-Net fixes an epoch at 250 iterations of patches sampled with foreground oversampling (the bundle's
``RandCropByPosNegLabeld`` centres two patches in three on foreground). 250 is sized for a GPU; on a CPU the
fingerprint derives a shorter epoch from the patch, so that an epoch processes about :data:`CPU_EPOCH_VOXELS` voxels
and validation and checkpoints still come every minute or two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CPU_EPOCH_VOXELS", "NNUNET_ITERATIONS", "cpu_iterations", "iterations_per_epoch"]

NNUNET_ITERATIONS = 250
CPU_EPOCH_VOXELS = 2**22
MIN_ITERATIONS = 10


def cpu_iterations(roi_size: Sequence[int], patches_per_step: int) -> tuple[int, str]:
    """Iterations per epoch on a CPU for steps of ``patches_per_step`` patches of ``roi_size``, and why."""
    per_iteration = patches_per_step * math.prod(roi_size)
    count = min(NNUNET_ITERATIONS, max(MIN_ITERATIONS, round(CPU_EPOCH_VOXELS / per_iteration)))
    return count, (
        f"on a GPU nnU-Net's {NNUNET_ITERATIONS}; on a CPU about {CPU_EPOCH_VOXELS / 1e6:.1f} M voxels an epoch at "
        f"{per_iteration} a step, {MIN_ITERATIONS} to {NNUNET_ITERATIONS}; the same on any number of cases"
    )


def iterations_per_epoch(fingerprint: Mapping[str, Any], device: Any) -> int:
    """The iterations of an epoch for a run on ``device``: nnU-Net's 250 on a GPU, the fingerprint's CPU count
    otherwise (see :func:`cpu_iterations`)."""
    if str(device).startswith("cuda"):
        return NNUNET_ITERATIONS
    return int(fingerprint["cpu_iterations_per_epoch"])
