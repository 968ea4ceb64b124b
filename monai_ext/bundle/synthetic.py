"""A small deterministic 3D dataset in Medical Segmentation Decathlon layout, so a bundle's first run needs no data.

Each case is a NIfTI volume with three labelled structures (1 sphere, 2 box, 3 tube) of random size and position on a
noisy background with a smooth intensity bias. Voxels are anisotropic (1.5 x 1.5 x 3 mm) and the voxel axes are
permuted, flipped and rotated against patient axes, so the loading transforms must reorient and resample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_ext.bundle.errors import BundleError

__all__ = [
    "DATASET_NAME", "LABELS", "SPACING", "SyntheticDataRefusedError", "dataset_or_synthetic", "ensure_synthetic_msd",
    "synthetic_affine", "write_synthetic_msd",
]  # fmt: skip

logger = logging.getLogger(__name__)

DATASET_NAME = "monai_ext synthetic shapes"

LABELS: dict[str, str] = {"0": "background", "1": "sphere", "2": "box", "3": "tube"}
SPACING: tuple[float, float, float] = (1.5, 1.5, 3.0)
_MEANS = (100.0, 700.0, 450.0, 300.0)  # background, sphere, box, tube


def synthetic_affine(spacing: tuple[float, float, float] = SPACING, angle_deg: float = 20.0) -> np.ndarray:
    """Return the voxel-to-world affine of the synthetic volumes.

    Voxel axis 0 runs anterior-to-posterior, axis 1 left-to-right and axis 2 inferior-to-superior, then the whole grid
    is rotated by ``angle_deg`` about the superior axis.

    Args:
        spacing: voxel size in mm along the three voxel axes.
        angle_deg: in-plane rotation in degrees.

    Returns:
        A 4x4 float64 affine.
    """
    axes = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # columns: voxel axis in RAS
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ axes @ np.diag(spacing)
    affine[:3, 3] = (12.0, -30.0, 5.0)
    return affine


def _case(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, ...]):
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"))  # mm
    extent = np.array([n * s for n, s in zip(shape, spacing, strict=True)])
    label = np.zeros(shape, np.uint8)

    centre = extent * np.array([0.3, 0.3, 0.5]) + rng.uniform(-4, 4, 3)
    radius = rng.uniform(9.0, 13.0)
    label[((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2] = 1

    low = extent * np.array([0.55, 0.55, 0.3]) + rng.uniform(-3, 3, 3)
    high = low + rng.uniform(14.0, 20.0, 3)
    inside = np.all((grid >= low[:, None, None, None]) & (grid <= high[:, None, None, None]), axis=0)
    label[inside & (label == 0)] = 2

    axis_point = extent[:2] * np.array([0.25, 0.75]) + rng.uniform(-3, 3, 2)
    tube_radius = rng.uniform(4.5, 6.0)
    along = (grid[2] > extent[2] * 0.15) & (grid[2] < extent[2] * 0.85)
    in_tube = ((grid[:2] - axis_point[:, None, None, None]) ** 2).sum(0) <= tube_radius**2
    label[in_tube & along & (label == 0)] = 3

    image = np.asarray(_MEANS, np.float32)[label]
    bias = 1.0 + 0.15 * np.sin(grid[0] / extent[0] * math.pi + rng.uniform(0, math.pi))
    image = image * bias.astype(np.float32) + rng.normal(0.0, 60.0, shape).astype(np.float32)
    return image.astype(np.float32), label


def write_synthetic_msd(
    dataset_dir: str | os.PathLike,
    num_training: int = 10,
    num_test: int = 2,
    shape: tuple[int, int, int] = (48, 40, 20),
    seed: int = 0,
) -> str:
    """Write the synthetic dataset (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``) into a folder.

    The same arguments always give the same files. ``dataset.json`` has ``training`` and ``test`` lists and no
    ``validation`` list, so bundles use their documented deterministic split.

    Args:
        dataset_dir: folder to write into; created if missing.
        num_training: number of labelled cases (``case_000`` ...).
        num_test: number of unlabelled cases written to ``imagesTs/``.
        shape: voxel grid of every volume.
        seed: seed of the random sizes, positions and noise.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        ValueError: when ``num_training`` is below 2 or a dimension of ``shape`` is below 8.
    """
    if num_training < 2:
        raise ValueError(f"num_training must be at least 2 (training and validation), got {num_training}.")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}.")
    root = Path(dataset_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = synthetic_affine()
    rng = np.random.default_rng(seed)
    training, test = [], []
    for i in range(num_training + num_test):
        image, label = _case(rng, tuple(shape), SPACING)
        if i < num_training:
            name = f"case_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            name = f"test_{i - num_training:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
    description = {
        "name": DATASET_NAME,
        "description": "Deterministic synthetic volumes with a sphere, a box and a tube (monai_ext.bundle.synthetic).",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": LABELS,
        "numTraining": num_training,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return str(root)


def ensure_synthetic_msd(dataset_dir: str | os.PathLike) -> str:
    """Return ``dataset_dir``, first filling it with the synthetic dataset if it has no ``dataset.json``.

    A missing folder is written under a temporary name and renamed into place, so processes that start together (DDP
    ranks) never read a half-written dataset.

    Args:
        dataset_dir: the bundle's default dataset folder.

    Returns:
        ``dataset_dir`` as a string.
    """
    root = Path(dataset_dir)
    if (root / "dataset.json").is_file():
        return str(dataset_dir)
    if root.exists():
        write_synthetic_msd(root)
        return str(dataset_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    staging.chmod(0o755)
    write_synthetic_msd(staging)
    try:
        os.rename(staging, root)
    except OSError:  # another process renamed its copy first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return str(dataset_dir)


class SyntheticDataRefusedError(BundleError):
    """A command without ``--dataset_dir`` would use the built-in synthetic data with a model trained on other data."""


def trained_on(model_file: str | os.PathLike) -> str | None:
    """The name of the dataset a model's record says it was trained on; ``None`` without a model."""
    from monai_ext.sharing.hashes import read_manifest

    path = Path(model_file)
    if not path.is_file():
        return None
    return str(
        read_manifest(path.parent).get(path.name, {}).get("configuration", {}).get("dataset", "an unknown dataset")
    )


def dataset_or_synthetic(
    dataset_dir: str | os.PathLike, default_dir: str | os.PathLike, model_file: str | os.PathLike, write: bool = True
) -> str:
    """The dataset a command runs on: ``dataset_dir`` when one was given, else the built-in synthetic data.

    The synthetic data serves only a bundle that holds no model trained on other data, and a log line says it is in
    use. Only training writes it (``write``); evaluation and inference use it when it is there.

    Raises:
        SyntheticDataRefusedError: no ``--dataset_dir`` was given and the bundle's model was trained on another
            dataset, or there is nothing to read and ``write`` is off; the message says what to pass.
    """
    if os.path.abspath(dataset_dir) != os.path.abspath(default_dir):
        return str(dataset_dir)
    model = trained_on(model_file)
    if model is not None and model != DATASET_NAME:
        raise SyntheticDataRefusedError(
            f"{model_file} was trained on {model}, and no --dataset_dir was given: pass --dataset_dir DIR (an MSD "
            "folder) or, to segment any folder of images, --image_dir DIR. The built-in synthetic data only serves a "
            "bundle without such a model."
        )
    if not write and not (Path(default_dir) / "dataset.json").is_file():
        raise SyntheticDataRefusedError(
            f"no --dataset_dir was given and {default_dir} holds no dataset: pass --dataset_dir DIR or --image_dir DIR"
        )
    logger.info(
        f"no --dataset_dir given: using the built-in synthetic data in {default_dir} (sphere, box and tube), for a "
        "first run; --dataset_dir DIR runs on yours"
    )
    return ensure_synthetic_msd(default_dir) if write else str(default_dir)
