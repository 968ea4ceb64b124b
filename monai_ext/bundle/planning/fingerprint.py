"""A dataset's fingerprint, as nnU-Net takes it, and the training configuration derived from it.

One pass over the training cases of a Medical Segmentation Decathlon folder reads each image (spacing and shape in
RAS order, as the bundle's ``Orientationd`` puts them; how its intensities lie, :mod:`.intensities`) and, for CT
channels, a sample of foreground intensities. From these:

- **target spacing**: the median spacing per axis. When one axis is more than 3 times coarser than the finest and
  has fewer than a third of its voxels (thick slices), that axis takes the 10th percentile of its spacings instead
  (nnU-Net's rule), so thin-slice cases are not thrown away;
- **ROI**: the median shape at the target spacing, rounded up to the network's size multiple, shrunk along its
  longest axis (relative to the median shape) until the smallest training step fits ``memory_gb``;
- **batch size**: images per step, each giving :data:`NUM_SAMPLES` patches (``num_samples``): as many as fit
  ``memory_gb``, at least 2, with the step's patches at most 5% of the dataset's voxels;
- **iterations per epoch** on a CPU (:mod:`.schedule`; nnU-Net's 250 on a GPU), the same on any number of cases;
- **normalisation** per channel by modality: CT is clipped to the 0.5 and 99.5 percentiles of its foreground
  intensities and z-scored with their mean and standard deviation; any other modality is z-scored per image, over
  its nonzero voxels only when cropping the images to their nonzero region shrinks the median image by more than a
  quarter, else over the whole image (nnU-Net's rule). Each entry keeps its reason, and so does the trained model;
- **warnings**, naming the cases, when training and validation cases differ in their share of exact zeros or in
  their intensity range.

``python -m monai_ext fingerprint DATASET_DIR --output BUNDLE/configs/fingerprint.json`` writes it and prints what it
chose and why; the bundles read ``configs/fingerprint.json`` when it describes the dataset they train on, and
otherwise fingerprint the dataset at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_ext.bundle import datalist
from monai_ext.bundle.planning.intensities import (
    case_name,
    file_profile,
    intensity_profile,
    intensity_warnings,
    nonzero_mask_rule,
)
from monai_ext.bundle.planning.schedule import cpu_iterations

__all__ = [
    "BYTES_PER_VOXEL",
    "FINGERPRINT_VERSION",
    "NUM_SAMPLES",
    "compute_fingerprint",
    "fingerprint",
    "format_fingerprint",
    "load_fingerprint",
    "model_configuration",
    "saved_fingerprint",
]

logger = logging.getLogger(__name__)

# 2: nnU-Net's nonzero-mask rule, reasons per channel, warnings; 3: num_samples, memory counts every patch of a step
FINGERPRINT_VERSION = 3
# Training memory of the bundle's network per voxel of a batch (activations, gradients, optimiser, in bytes), and the
# fixed part (weights, CUDA context). Measured for HybridAxialUNet: about 300 bytes per voxel on CPU; doubled for
# cuDNN workspaces and allocator slack.
BYTES_PER_VOXEL = 600
FIXED_BYTES = 2**29
ANISOTROPY = 3.0
CT_PERCENTILES = (0.5, 99.5)
# foreground voxels sampled per CT case for the intensity statistics (nnU-Net takes 10,000)
CT_SAMPLES_PER_CASE = 10_000
MAX_BATCH_SHARE = 0.05
MIN_BATCH = 2
# patches cropped from each loaded image per step: a step reads half as many images as it trains patches on
NUM_SAMPLES = 2
CT_WHY = "CT: clip to the foreground's 0.5-99.5 percentiles, z-score with their mean and std (nnU-Net's rule)"


def _dataset_digest(dataset_dir: Path) -> str:
    return hashlib.sha256((dataset_dir / "dataset.json").read_bytes()).hexdigest()


def _ras_geometry(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Spacing and shape of a NIfTI image along R, A, S, as ``Orientationd(axcodes="RAS")`` orders its axes."""
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(0))
    axes = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)  # voxel axis i lies along RAS axis axes[i]
    ras_spacing, ras_shape = np.empty(3), np.empty(3, int)
    ras_spacing[axes] = spacing
    ras_shape[axes] = image.shape[:3]
    return ras_spacing, ras_shape


def _channel_count(image: Any) -> int:
    return int(image.shape[3]) if len(image.shape) > 3 else 1


def _target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], str]:
    median = np.median(spacings, 0)
    median_shape = np.median(shapes, 0)
    target = median.copy()
    coarse = int(np.argmax(median))
    others = [a for a in range(3) if a != coarse]
    thick = median[coarse] > ANISOTROPY * median[others].min()
    few_slices = median_shape[coarse] * ANISOTROPY < median_shape[others].min()
    if thick and few_slices:
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), median[others].max())
        why = (
            f"median spacing, except axis {coarse}: its median {median[coarse]:.3g} mm is over {ANISOTROPY:g}x the "
            f"finest axis and it has under 1/{ANISOTROPY:g} of the voxels, so its 10th percentile"
        )
    else:
        why = "median spacing of the training cases"
    return [round(float(s), 4) for s in target], why


def _roi_and_batch(
    median_shape: np.ndarray, total_voxels: float, size_multiple: int, memory_gb: float, max_roi: int
) -> tuple[list[int], int, str, str]:
    budget = memory_gb * 2**30 - FIXED_BYTES
    rounded = np.ceil(median_shape / size_multiple) * size_multiple
    roi = np.maximum(np.minimum(rounded, max_roi), size_multiple).astype(int)
    shrunk = False
    while MIN_BATCH * NUM_SAMPLES * int(np.prod(roi)) * BYTES_PER_VOXEL > budget and roi.max() > size_multiple:
        axis = int(np.argmax(roi / median_shape))
        if roi[axis] <= size_multiple:
            axis = int(np.argmax(roi))
        roi[axis] -= size_multiple
        shrunk = True
    roi_why = f"median shape {[int(s) for s in median_shape]} rounded up to a multiple of {size_multiple}"
    if (rounded > max_roi).any():
        roi_why += f", at most {max_roi} per axis"
    if shrunk:
        roi_why += f", shrunk to fit {MIN_BATCH} images of {NUM_SAMPLES} patches in {memory_gb:g} GB"
    per_image = NUM_SAMPLES * int(np.prod(roi))
    by_memory = max(MIN_BATCH, int(budget // (per_image * BYTES_PER_VOXEL)))
    by_share = max(MIN_BATCH, int(MAX_BATCH_SHARE * total_voxels // per_image))
    batch = min(by_memory, by_share)
    batch_why = (
        f"images a step, {NUM_SAMPLES} patches each: fits {memory_gb:g} GB: {by_memory}; "
        f"{MAX_BATCH_SHARE:.0%} of the dataset's voxels: {by_share}"
    )
    return [int(r) for r in roi], batch, roi_why, batch_why


def compute_fingerprint(
    dataset_dir: str | os.PathLike,
    memory_gb: float = 8.0,
    size_multiple: int = 8,
    max_roi: int = 128,
    val_fraction: float = 0.2,
    cases: list[dict] | None = None,
    other_cases: list[dict] | None = None,
) -> dict[str, Any]:
    """Fingerprint the training cases of a Decathlon-layout folder and derive a training configuration.

    Args:
        dataset_dir: folder with ``dataset.json`` (``training`` cases; ``modality`` and ``labels`` as the Decathlon
            writes them).
        memory_gb: memory a training step, all its patches, may use (GPU memory on a GPU).
        size_multiple: every ROI axis is a multiple of this (the network's downsampling: 8 for HybridAxialUNet's
            four levels).
        max_roi: largest ROI per axis.
        val_fraction: held-out share when dataset.json has no ``validation`` list (only training cases are read).
        cases: the training cases to read (``{"image": path, "label": path}``), e.g. those that passed
            :func:`monai_ext.bundle.data_check.checked_datalist`; by default the training split of dataset.json.
        other_cases: cases read only to warn how they differ from the training cases (the validation split).

    Returns:
        A JSON-ready dict: ``dataset`` (name, digest of dataset.json, case count), ``in_channels``,
        ``channel_names``, ``num_classes``, ``class_names``, ``spacing``, ``median_shape``, ``roi_size``,
        ``batch_size`` (images a step), ``num_samples`` (patches an image), ``cpu_iterations_per_epoch``,
        ``normalization`` (one entry per channel, with its ``why``), ``memory_gb``, ``reasons`` (key -> why) and
        ``warnings``.

    Raises:
        FileNotFoundError, ValueError: from reading dataset.json (naming the key that is wrong, or asking for a
            ``labels`` mapping); ValueError when the images disagree on their channel count (naming the file) or
            ``memory_gb`` is too small or ``max_roi`` not a multiple of ``size_multiple``.
    """
    if not math.isfinite(memory_gb) or memory_gb * 2**30 <= FIXED_BYTES:
        raise ValueError(f"memory_gb must be a number above {FIXED_BYTES / 2**30:g}, got {memory_gb}")
    if max_roi < size_multiple or max_roi % size_multiple:
        raise ValueError(f"max_roi must be a positive multiple of {size_multiple} (the network's), got {max_roi}")
    root = Path(dataset_dir)
    split = datalist.training_datalist(root, val_fraction)  # first: its errors name dataset_dir and the file
    cases = split if cases is None else cases
    if not cases:
        raise ValueError(f"dataset_dir: no training case to fingerprint in '{dataset_dir}'")
    content = datalist.read_dataset_json(root / "dataset.json")
    spacings, shapes, channels = [], [], None
    ct_samples: dict[int, list[np.ndarray]] = {}
    rng = np.random.default_rng(0)
    modalities: list[str] = []
    profiles = []
    for case in cases:
        image = nib.load(case["image"])
        spacing, shape = _ras_geometry(image)
        spacings.append(spacing)
        shapes.append(shape)
        count = _channel_count(image)
        if channels is None:
            channels = count
            modalities = datalist.channel_names(content, channels)
        elif count != channels:
            raise ValueError(f"{case['image']}: {count} channels, while the first training case has {channels}")
        data = np.asanyarray(image.dataobj, dtype=np.float32).reshape(*image.shape[:3], channels)
        profiles.append(intensity_profile(data, case_name(case["image"], root)))
        ct_channels = [c for c, name in enumerate(modalities) if name.upper() == "CT"]
        if ct_channels:
            foreground = np.asanyarray(nib.load(case["label"]).dataobj) > 0
            if foreground.shape != tuple(image.shape[:3]):
                raise ValueError(
                    f"{case['label']}: shape {foreground.shape} differs from its image's {tuple(image.shape[:3])} "
                    "(python -m monai_ext check_data lists every such problem)"
                )
            for c in ct_channels:
                values = data[..., c][foreground]
                if values.size > CT_SAMPLES_PER_CASE:
                    values = rng.choice(values, CT_SAMPLES_PER_CASE, replace=False)
                ct_samples.setdefault(c, []).append(values)
    spacings_array, shapes_array = np.array(spacings), np.array(shapes)
    target, spacing_why = _target_spacing(spacings_array, shapes_array)
    at_target = shapes_array * spacings_array / np.array(target)
    median_shape = np.round(np.median(at_target, 0))  # voxel counts: 40.0000001 must not round up to the next 8
    total_voxels = float(np.prod(at_target, 1).sum())
    roi, batch, roi_why, batch_why = _roi_and_batch(median_shape, total_voxels, size_multiple, memory_gb, max_roi)
    iterations, iterations_why = cpu_iterations(roi, batch * NUM_SAMPLES)

    use_nonzero_mask, zscore_why = nonzero_mask_rule(profiles)
    other_profiles = [file_profile(case["image"], root) for case in other_cases or ()]
    warnings = intensity_warnings(profiles + other_profiles, modalities)
    normalization = []
    for c, name in enumerate(modalities):
        if c in ct_samples and sum(v.size for v in ct_samples[c]):
            values = np.concatenate(ct_samples[c]).astype(np.float64)
            low, high = np.percentile(values, CT_PERCENTILES)
            clipped = np.clip(values, low, high)
            normalization.append(
                {
                    "channel": name,
                    "scheme": "ct",
                    "clip": [round(float(low), 3), round(float(high), 3)],
                    "mean": round(float(clipped.mean()), 4),
                    "std": round(float(max(clipped.std(), 1e-8)), 4),
                    "why": CT_WHY,
                }
            )
        else:
            scheme = "zscore_nonzero" if use_nonzero_mask else "zscore"
            normalization.append({"channel": name, "scheme": scheme, "why": zscore_why})
    num_classes = datalist.num_classes(root)
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset": {
            "name": str(content.get("name", root.name)),
            "dataset_json_sha256": _dataset_digest(root),
            "training_cases": len(cases),
        },
        "in_channels": channels,
        "channel_names": modalities,
        "num_classes": num_classes,
        "class_names": datalist.class_names(root, num_classes),
        "median_spacing": [round(float(s), 4) for s in np.median(spacings_array, 0)],
        "spacing": target,
        "median_shape": [int(round(s)) for s in median_shape],
        "roi_size": roi,
        "batch_size": batch,
        "num_samples": NUM_SAMPLES,
        "cpu_iterations_per_epoch": iterations,
        "normalization": normalization,
        "memory_gb": memory_gb,
        "reasons": {
            "spacing": spacing_why,
            "roi_size": roi_why,
            "batch_size": batch_why,
            "cpu_iterations_per_epoch": iterations_why,
            "normalization": "; ".join(dict.fromkeys(entry["why"] for entry in normalization)),
        },
        "warnings": warnings,
    }


def saved_fingerprint(path: str | os.PathLike, dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint at ``path`` when this version wrote it from ``dataset_dir``'s dataset.json (SHA-256), else
    ``None``.

    Raises:
        ValueError: ``path`` exists but is not a fingerprint (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        digest = saved["dataset"]["dataset_json_sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a fingerprint written by 'python -m monai_ext fingerprint' ({err})") from err
    current = saved.get("fingerprint_version") == FINGERPRINT_VERSION
    return saved if current and digest == _dataset_digest(Path(dataset_dir)) else None


def model_configuration(result: dict[str, Any]) -> dict[str, Any]:
    """The fields of a fingerprint that define a trained model (see :mod:`monai_ext.bundle.model_record`)."""
    return {
        "num_classes": result["num_classes"],
        "class_names": result["class_names"],
        "in_channels": result["in_channels"],
        "channel_names": result["channel_names"],
        "pixdim": result["spacing"],
        "roi_size": result["roi_size"],
        "normalization": result["normalization"],
    }


def load_fingerprint(path: str | os.PathLike, dataset_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Return the fingerprint at ``path`` when it describes ``dataset_dir``; else fingerprint the dataset now. Its
    warnings (cases that differ in background or intensity range) go to the log either way.

    A fingerprint describes a dataset when it was taken from the same ``dataset.json`` (SHA-256). Bundles call this
    at start, so a run on another dataset never trains with a stale configuration.

    Args:
        path: a ``fingerprint.json`` (may be missing).
        dataset_dir: the dataset the run trains on.
        kwargs: passed to :func:`compute_fingerprint` when it runs.

    Raises:
        ValueError: ``path`` exists but is not a fingerprint (naming the file).
    """
    result = saved_fingerprint(path, dataset_dir)
    if result is None:
        state = "describes another dataset or is older" if Path(path).is_file() else "does not exist"
        logger.info(
            f"{path} {state}: fingerprinting {dataset_dir} for this run (python -m monai_ext fingerprint DATASET_DIR "
            "--output BUNDLE/configs/fingerprint.json saves it)"
        )
        result = compute_fingerprint(dataset_dir, **kwargs)
    for warning in result.get("warnings", []):
        logger.warning(warning)
    return result


def format_fingerprint(result: dict[str, Any]) -> str:
    """A table of what the fingerprint chose and why, for people."""

    def shown(value: Any) -> str:
        if isinstance(value, list) and value and isinstance(value[0], float):
            return " x ".join(f"{v:g}" for v in value)
        if isinstance(value, list) and value and isinstance(value[0], int):
            return " x ".join(str(v) for v in value)
        return str(value)

    norms = []
    for entry in result["normalization"]:
        if entry["scheme"] == "ct":
            low, high = entry["clip"]
            norms.append(f"{entry['channel']}: clip {low:g}..{high:g}, (x - {entry['mean']:g}) / {entry['std']:g}")
        else:
            over = "nonzero voxels" if entry["scheme"] == "zscore_nonzero" else "the whole image"
            norms.append(f"{entry['channel']}: z-score over {over}")
    reasons = result["reasons"]
    rows = [
        ("dataset", f"{result['dataset']['name']} ({result['dataset']['training_cases']} training cases)", ""),
        ("channels", f"{result['in_channels']}: {', '.join(result['channel_names'])}", ""),
        ("classes", f"{result['num_classes']}: {', '.join(result['class_names'])}", ""),
        ("median spacing (mm)", shown(result["median_spacing"]), "RAS order, as the bundle resamples"),
        ("target spacing (mm)", shown(result["spacing"]), reasons["spacing"]),
        ("median shape at target", shown(result["median_shape"]), ""),
        ("ROI", shown(result["roi_size"]), reasons["roi_size"]),
        ("batch size", f"{result['batch_size']} images, {result['num_samples']} patches each", reasons["batch_size"]),
        ("iterations per epoch", f"{result['cpu_iterations_per_epoch']} on a CPU", reasons["cpu_iterations_per_epoch"]),
        ("normalisation", "; ".join(norms), reasons["normalization"]),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = []
    for name, value, why in rows:
        lines.append(f"{name:<{width}}  {value}")
        if why:
            lines.append(f"{'':<{width}}    why: {why}")
    lines += [f"WARNING: {warning}" for warning in result.get("warnings", [])]
    return "\n".join(lines)


def fingerprint(dataset_dir: str, output: str | None = None, memory_gb: float = 8.0, max_roi: int = 128) -> None:
    """Fingerprint a Decathlon-layout dataset and print the training configuration derived from it.

    Reads every training case once (and the validation cases, to warn how they differ). Prints the target spacing,
    ROI, batch size and per-channel normalisation with the reason for each, and warnings naming the cases that differ
    in background or intensity range.

    Args:
        dataset_dir: folder with dataset.json, imagesTr/ and labelsTr/.
        output: where to write the result as JSON, normally BUNDLE/configs/fingerprint.json; the bundle's train and
            inference configs read it. Any value can still be overridden on the command line (--roi_size ...).
        memory_gb: memory one training step may use (GPU memory when training on a GPU).
        max_roi: largest ROI per axis.
    """
    validation = datalist.validation_datalist(dataset_dir)
    result = compute_fingerprint(dataset_dir, memory_gb=memory_gb, max_roi=max_roi, other_cases=validation)
    print(format_fingerprint(result))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {output}")
