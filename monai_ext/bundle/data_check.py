"""Checking every case of a datalist once, before the first epoch, and reporting all problems together.

A training run that meets a truncated file or a NaN voxel at epoch 37 wastes hours; :func:`checked_datalist` reads each
case once with nibabel (one case in memory at a time) and either raises :class:`DataCheckError` listing every problem,
naming its file, or drops the bad cases with one warning.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_ext.bundle.datalist import channel_names, modality_channels, read_dataset_json
from monai_ext.bundle.errors import BundleError
from monai_ext.bundle.planning.intensities import file_profile, intensity_warnings

__all__ = [
    "MAX_BYTES",
    "MAX_VOXELS",
    "DataCheckError",
    "check_data",
    "check_dataset_dir",
    "checked_datalist",
    "find_problems",
]

logger = logging.getLogger(__name__)

# Affines of an image and its label are compared with this absolute tolerance (mm); NIfTI stores float32.
AFFINE_ATOL = 1e-3
# A header may claim any shape; this many voxels, and this many bytes once nibabel has applied the header's scaling,
# are read at most unless the caller raises them.
MAX_VOXELS = 2**31
MAX_BYTES = 2**33
# deflate cannot compress better than about 1032:1, so a .gz file's data is at most this many times its size
MAX_DEFLATE_RATIO = 1032


class DataCheckError(BundleError, ValueError):
    """A datalist has problems; the message lists every one, each naming its file."""


def _resolve(path: str | os.PathLike, base_dir: Path | None) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _loaded_itemsize(image: Any) -> int:
    """Bytes per voxel of the array nibabel returns: a header's scaling turns any stored type into float64."""
    itemsize = image.get_data_dtype().itemsize
    # nibabel moves the header's scl_slope and scl_inter onto the array proxy when it loads the header
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    if slope == 1.0 and inter == 0.0:
        return itemsize
    return max(itemsize, 16 if image.get_data_dtype().kind == "c" else 8)


def _header_problem(image: Any, path: Path, role: str, max_voxels: int, max_bytes: int) -> str | None:
    """Why the voxel data a header claims must not be read, judged before anything is allocated."""
    shape = tuple(int(n) for n in image.shape)
    if any(n <= 0 for n in shape):
        return f"{path}: {role} header claims shape {shape}; every dimension must be positive"
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    claimed = voxels * image.get_data_dtype().itemsize
    loaded = voxels * _loaded_itemsize(image)
    if loaded > max_bytes:
        return (
            f"{path}: {role} header claims shape {shape} of {image.get_data_dtype()}, {loaded / 2**30:.3g} GiB once "
            f"loaded, above the limit of {max_bytes / 2**30:.3g} GiB; raise max_bytes if the volume is real"
        )
    if voxels > max_voxels:
        return (
            f"{path}: {role} header claims shape {shape} ({voxels:.3g} voxels), above the limit of {max_voxels:.3g} "
            "voxels; raise max_voxels if the volume is real"
        )
    size = path.stat().st_size
    # nibabel keeps the file's data offset on the array proxy (the loaded header's own offset is reset to 0)
    offset = int(getattr(image.dataobj, "offset", 0))
    unreadable = f"{path}: {role} is not a readable NIfTI file (truncated or corrupt?): its header claims {claimed:,}"
    if path.name.endswith(".gz"):
        if claimed > size * MAX_DEFLATE_RATIO:
            return f"{unreadable} bytes of voxel data, more than a {size:,}-byte gzip file can hold"
    elif offset + claimed > size:
        return f"{unreadable} bytes of voxel data from byte {offset}, and the file has {size:,}"
    return None


def _load(
    path: Path, role: str, problems: list[str], max_voxels: int, max_bytes: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(data, affine)`` of a NIfTI file, or ``None`` after appending the reason it cannot be read."""
    if not path.is_file():
        problems.append(f"{path}: {role} file is missing")
        return None
    try:
        image = nib.load(path)  # reads the header only
        refused = _header_problem(image, path, role, max_voxels, max_bytes)
        if refused:
            problems.append(refused)
            return None
        data = np.asanyarray(image.dataobj)
    except MemoryError:
        problems.append(f"{path}: {role} does not fit in memory (header shape {tuple(image.shape)})")
        return None
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as err:
        reason = " ".join(str(err).split())  # nibabel's messages span lines; keep one problem per line
        problems.append(f"{path}: {role} is not a readable NIfTI file (truncated or corrupt?): {reason}")
        return None
    return data, np.asarray(image.affine)


def _check_values(data: np.ndarray, path: Path, role: str, problems: list[str]) -> bool:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        problems.append(
            f"{path}: {role} has {int(np.isnan(data).sum())} NaN and {int(np.isinf(data).sum())} Inf voxels"
        )
        return False
    return True


def find_problems(
    entry: Mapping,
    base_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    num_channels: int = 1,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> list[str]:
    """Return every problem of one datalist entry (an empty list when it is fine).

    Args:
        entry: a dict with an ``"image"`` path and an optional ``"label"`` path.
        base_dir: directory that relative paths resolve against; ``None`` leaves them relative to the cwd.
        num_classes: label values must lie in ``0 .. num_classes - 1``; ``None`` skips that check.
        num_channels: channels an image must have: a 3D volume for 1, else 4D with the channels last (MSD layout).
        max_voxels: a file whose header claims more voxels is refused before its data is read.
        max_bytes: likewise for the bytes of the loaded array (voxels times bytes per voxel after scaling).

    Returns:
        One message per problem, each starting with the file it concerns.
    """
    base = None if base_dir is None else Path(base_dir)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("image"), str | os.PathLike):
        return [f"datalist entry {entry!r}: expected a dict with an 'image' path string"]
    problems: list[str] = []
    image_path = _resolve(entry["image"], base)
    label_path = _resolve(entry["label"], base) if entry.get("label") is not None else None

    image = _load(image_path, "image", problems, max_voxels, max_bytes)
    if image is not None:
        data, _ = image
        expected = "3D volume" if num_channels == 1 else f"4D volume with {num_channels} channels last"
        if (
            data.ndim not in (3, 4)
            or (data.ndim == 4 and data.shape[3] != num_channels)
            or (data.ndim == 3 and num_channels != 1)
        ):
            problems.append(f"{image_path}: image has shape {data.shape}, expected a {expected}")
            image = None
        elif not _check_values(data, image_path, "image", problems):
            image = None
        del data
    if label_path is None:
        return problems

    label = _load(label_path, "label", problems, max_voxels, max_bytes)
    if label is None:
        return problems
    data, label_affine = label
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        problems.append(f"{label_path}: label has shape {data.shape}, expected a 3D volume")
        return problems
    if not _check_values(data, label_path, "label", problems):
        return problems
    if image is not None:
        image_shape, image_affine = image[0].shape[:3], image[1]
        if tuple(image_shape) != tuple(data.shape):
            problems.append(
                f"{label_path}: label shape {tuple(data.shape)} differs from image shape {tuple(image_shape)} "
                f"of {image_path}"
            )
        elif not np.allclose(image_affine, label_affine, atol=AFFINE_ATOL):
            problems.append(
                f"{label_path}: label affine differs from the affine of {image_path} "
                f"(largest difference {np.abs(image_affine - label_affine).max():.4g})"
            )
    if num_classes is not None:
        values = np.unique(data)
        bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
        if bad.size:
            problems.append(
                f"{label_path}: label values {bad[:10].tolist()} are outside the declared classes 0..{num_classes - 1}"
            )
    return problems


def checked_datalist(
    datalist: Sequence[Mapping],
    num_classes: int | None = None,
    skip_bad: bool = False,
    base_dir: str | os.PathLike | None = None,
    num_channels: int = 1,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> list[dict]:
    """Read every case once and return the datalist of good cases; call it from a bundle before training.

    Args:
        datalist: entries with an ``"image"`` and an optional ``"label"`` path.
        num_classes: number of declared classes (labels must lie in ``0 .. num_classes - 1``); ``None`` skips it.
        skip_bad: drop bad cases with a warning that lists them, instead of raising.
        base_dir: directory relative paths resolve against (``None``: the current directory).
        num_channels: image channels (a 3D volume for 1, else 4D with the channels last).
        max_voxels: a file whose header claims more voxels is refused before its data is read.
        max_bytes: likewise for the bytes of the loaded array.

    Returns:
        A new list of new dicts (the input is not modified): all entries, or with ``skip_bad`` the good ones.

    Raises:
        DataCheckError: the datalist is empty, or some case has problems and ``skip_bad`` is False, or no case is
            left after skipping. The message lists every problem, each naming its file.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if not datalist:
        raise DataCheckError("the datalist is empty: no case to train on")
    good: list[dict] = []
    problems: list[str] = []
    for entry in datalist:
        found = find_problems(entry, base_dir, num_classes, num_channels, max_voxels, max_bytes)
        if found:
            problems.extend(found)
        else:
            good.append(dict(entry))
    if problems:
        report = f"{len(datalist) - len(good)} of {len(datalist)} cases have problems:\n  " + "\n  ".join(problems)
        if not skip_bad or not good:
            raise DataCheckError(report)
        logger.warning("skipping bad cases, training on %d of %d; %s", len(good), len(datalist), report)
    return good


def _read_dataset_json(dataset_dir: Path) -> dict:
    path = dataset_dir / "dataset.json"
    if not path.is_file():
        raise DataCheckError(f"{path}: dataset.json is missing (expected Medical Segmentation Decathlon layout)")
    try:
        return read_dataset_json(path)
    except ValueError as err:
        raise DataCheckError(str(err)) from err


def check_dataset_dir(
    dataset_dir: str | os.PathLike,
    num_classes: int | None = None,
    skip_bad: bool = False,
    keys: Sequence[str] = ("training", "validation"),
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> list[dict]:
    """Check the datalists of a Medical Segmentation Decathlon directory (``dataset.json``, imagesTr/, labelsTr/).

    Args:
        dataset_dir: the directory holding ``dataset.json``; relative paths in it resolve against this directory.
        num_classes: overrides the number of classes declared by dataset.json's ``labels``.
        skip_bad: drop bad cases with a warning instead of raising.
        keys: the lists of dataset.json to check (missing lists are skipped; ``training`` must exist).
        max_voxels: a file whose header claims more voxels is refused before its data is read.
        max_bytes: likewise for the bytes of the loaded array.

    Returns:
        The good entries of all checked lists, with paths made absolute.

    Raises:
        DataCheckError: dataset.json is missing or malformed, or the data has problems (see :func:`checked_datalist`).
    """
    root = Path(dataset_dir).expanduser().resolve()
    description = _read_dataset_json(root)
    if num_classes is None and isinstance(description.get("labels"), Mapping):
        num_classes = len(description["labels"])
    num_channels = modality_channels(description)
    datalist = []
    for key in keys:
        for entry in description.get(key) or []:
            resolved = dict(entry) if isinstance(entry, Mapping) else {"image": entry}
            for field in ("image", "label"):
                if isinstance(resolved.get(field), str):
                    resolved[field] = str(_resolve(resolved[field], root))
            datalist.append(resolved)
    return checked_datalist(
        datalist,
        num_classes=num_classes,
        skip_bad=skip_bad,
        num_channels=num_channels,
        max_voxels=max_voxels,
        max_bytes=max_bytes,
    )


def check_data(
    dataset_dir: str,
    skip_bad: bool = False,
    num_classes: int | None = None,
    max_voxels: int = MAX_VOXELS,
    max_bytes: int = MAX_BYTES,
) -> str:
    """Check every case of an MSD-layout dataset directory once; print all problems and exit 1 if there are any.

    Also warns, naming the cases, when they differ in background (share of exact zeros) or intensity range.

    Args:
        dataset_dir: directory with dataset.json, imagesTr/ and labelsTr/.
        skip_bad: report bad cases as a warning and exit 0 if at least one good case is left.
        num_classes: overrides the number of classes declared in dataset.json's "labels".
        max_voxels: refuse, before reading it, any file whose header claims more voxels (default 2**31).
        max_bytes: refuse, before reading it, any file whose loaded array would take more bytes, after the header's
            scaling (default 2**33, 8 GiB).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        good = check_dataset_dir(
            dataset_dir, num_classes=num_classes, skip_bad=skip_bad, max_voxels=max_voxels, max_bytes=max_bytes
        )
    except DataCheckError as err:
        print(f"check_data: {dataset_dir}: {err}")
        raise SystemExit(1) from None
    for warning in case_differences(dataset_dir, good):
        print(f"check_data: WARNING: {warning}")
    return f"check_data: {dataset_dir}: {len(good)} cases OK"


def case_differences(dataset_dir: str | os.PathLike, cases: Sequence[Mapping]) -> list[str]:
    """How the images of ``cases`` differ in background and intensity range, naming the cases at both ends (see
    :mod:`monai_ext.bundle.planning.intensities`); one image in memory at a time."""
    root = Path(dataset_dir).expanduser().resolve()
    profiles = [file_profile(case["image"], root) for case in cases]
    channels = len(profiles[0].zero_fraction) if profiles else 0
    return intensity_warnings(profiles, channel_names(_read_dataset_json(root), channels))
