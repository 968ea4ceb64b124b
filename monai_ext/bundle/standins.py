"""Small synthetic stand-ins for Medical Segmentation Decathlon tasks, with the properties that break pipelines.

Each stand-in keeps what matters to a segmentation bundle of its task, at a size a CPU test can train on: the
channel count and modality names, the class count, the voxel spacing (anisotropic where the task's is), the
intensity range (CT in Hounsfield units), volumes smaller than a typical ROI, varied spacings and orientations
between cases, and the share of the volume the foreground takes. They are made of ellipsoids, not anatomy: for
testing and for trying the bundle's commands, never as evidence of accuracy.

=============  ============  =======  =======================  =================================================
task           modality      classes  spacing (mm)             what it tests
=============  ============  =======  =======================  =================================================
Hippocampus    MRI           3        1 x 1 x 1                tiny volumes (about 35 x 50 x 35), below the ROI
BrainTumour    4 MR          4        4 x 4 x 4 (240 mm FOV)   four channels, skull-stripped zero background
Prostate       T2, ADC       3        0.6 x 0.6 x 3.6          two channels, thick slices (anisotropic spacing)
Spleen         CT            2        0.8 x 0.8 x 5            Hounsfield units (-1024..3000), 5 mm slices
Liver          CT            3        1.5 x 1.5 x 2            one large foreground with a lesion inside
=============  ============  =======  =======================  =================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["STANDINS", "StandIn", "standin", "write_standin"]


@dataclass(frozen=True)
class StandIn:
    """How to draw one Decathlon task's stand-in (see the module docstring)."""

    modalities: tuple[str, ...]
    labels: tuple[str, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    # per case, each axis of the shape varies by up to this many voxels and the spacing by up to this fraction
    shape_jitter: int
    spacing_jitter: float
    ct: bool = False
    skull_stripped: bool = False


STANDINS: dict[str, StandIn] = {
    "Hippocampus": StandIn(("MRI",), ("background", "Anterior", "Posterior"), (35, 50, 35), (1.0, 1.0, 1.0), 3, 0.0),
    "BrainTumour": StandIn(
        ("FLAIR", "T1w", "t1gd", "T2w"),
        ("background", "edema", "non-enhancing tumor", "enhancing tumour"),
        (60, 60, 39),
        (4.0, 4.0, 4.0),
        0,
        0.0,
        skull_stripped=True,
    ),
    "Prostate": StandIn(("T2", "ADC"), ("background", "PZ", "TZ"), (64, 64, 12), (0.6, 0.6, 3.6), 4, 0.1),
    "Spleen": StandIn(("CT",), ("background", "spleen"), (64, 64, 16), (0.8, 0.8, 5.0), 4, 0.2, ct=True),
    "Liver": StandIn(("CT",), ("background", "liver", "cancer"), (48, 48, 32), (1.5, 1.5, 2.0), 4, 0.2, ct=True),
}


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def _case(task: StandIn, rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = np.array(task.shape) + rng.integers(-task.shape_jitter, task.shape_jitter + 1, 3)
    spacing = np.array(task.spacing) * (1.0 + rng.uniform(-task.spacing_jitter, task.spacing_jitter, 3))
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"))
    extent = shape * spacing
    centre = extent * rng.uniform(0.42, 0.58, 3)
    label = np.zeros(shape, np.uint8)
    body = _ellipsoid(grid, extent / 2, extent * 0.47)
    classes = len(task.labels) - 1
    # the first structure is large when there is a lesion inside it (liver), else mid-sized; the others nest inside
    outer = extent * (0.33 if classes > 1 and task.ct else rng.uniform(0.18, 0.24))
    for structure in range(1, classes + 1):
        radii = outer * (0.62 ** (structure - 1))
        offset = rng.uniform(-0.15, 0.15, 3) * radii if structure > 1 else 0.0
        label[_ellipsoid(grid, centre + offset, radii) & body] = structure
    channels = []
    for channel in range(len(task.modalities)):
        if task.ct:
            # air outside the body, soft tissue about 40 HU, organs 60-160 HU, one bright bone-like rim
            means = np.array([40.0] + [60.0 + 50.0 * s for s in range(1, classes + 1)])
            image = means[label] + rng.normal(0.0, 20.0, shape)
            image[~body] = -1024.0
            rim = body & ~_ellipsoid(grid, extent / 2, extent * 0.44)
            image[rim] = rng.uniform(300.0, 3000.0, int(rim.sum()))
        else:
            means = rng.uniform(150.0, 900.0, classes + 1) * (1.0 + 0.4 * channel)
            image = means[label] + rng.normal(0.0, 40.0, shape)
            if task.skull_stripped:
                image[~body] = 0.0
        channels.append(image.astype(np.float32))
    image = np.stack(channels, -1) if len(channels) > 1 else channels[0]
    affine = np.diag([*spacing, 1.0])
    if index % 2:  # mixed orientation: every other case is stored left-right flipped
        affine[0, 0] = -spacing[0]
        affine[0, 3] = spacing[0] * (shape[0] - 1)
    return image, label, affine


def write_standin(task: str, dataset_dir: str | os.PathLike, num_training: int = 6, seed: int = 0) -> str:
    """Write a Decathlon task's stand-in (``dataset.json``, ``imagesTr/``, ``labelsTr/``, one image in ``imagesTs/``).

    Args:
        task: a key of :data:`STANDINS`.
        dataset_dir: folder to write into; created if missing.
        num_training: labelled cases.
        seed: seed of sizes, spacings, positions and noise; the same arguments always give the same files.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        ValueError: for an unknown task or fewer than 2 training cases.
    """
    if task not in STANDINS:
        raise ValueError(f"task must be one of {sorted(STANDINS)}, got {task!r}")
    if num_training < 2:
        raise ValueError(f"num_training must be at least 2 (training and validation), got {num_training}")
    spec = STANDINS[task]
    root = Path(dataset_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    training = []
    for index in range(num_training + 1):
        image, label, affine = _case(spec, rng, index)
        name = f"{task.lower()}_{index:03d}.nii.gz"
        if index == num_training:
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTs" / name)
            continue
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": f"{task} stand-in",
        "description": f"Synthetic stand-in for the Decathlon's {task} task (monai_ext.bundle.standins)",
        # every property key of the Decathlon's files, which MONAI's DecathlonDataset requires
        "reference": "none: synthetic ellipsoids",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "4D" if len(spec.modalities) > 1 else "3D",
        "modality": {str(i): name for i, name in enumerate(spec.modalities)},
        "labels": {str(i): name for i, name in enumerate(spec.labels)},
        "numTraining": num_training,
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/{task.lower()}_{num_training:03d}.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return str(root)


def standin(task: str, dataset_dir: str, num_training: int = 6, seed: int = 0) -> None:
    """Write a small synthetic stand-in for a Decathlon task, to try a bundle on data shaped like the real task's.

    Tasks: Hippocampus (MRI, 3 classes, volumes below a typical ROI), BrainTumour (4 MR channels, 4 classes),
    Prostate (T2 and ADC, 0.6 x 0.6 x 3.6 mm), Spleen (CT in Hounsfield units, 5 mm slices), Liver (CT, a large organ
    with a lesion). Ellipsoids, not anatomy: for trying commands, never for judging accuracy.

    Args:
        task: one of the tasks above.
        dataset_dir: folder to write (dataset.json, imagesTr/, labelsTr/, imagesTs/).
        num_training: labelled cases.
        seed: the same seed always writes the same files.
    """
    print(f"wrote the {task} stand-in to {write_standin(task, dataset_dir, num_training, seed)}")
