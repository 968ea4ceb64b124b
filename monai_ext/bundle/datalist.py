"""Datalists for the bundles, read from a folder in Medical Segmentation Decathlon layout.

``DATASET_DIR/dataset.json`` lists ``training`` cases (``{"image": ..., "label": ...}``) and optionally
``validation`` cases (same form) and ``test`` images (paths), all relative to ``DATASET_DIR``.

- Validation: the ``validation`` list when present. Otherwise the training cases are sorted by image path and every
  ``round(1 / val_fraction)``-th case, starting with the last one, is held out (at least one case); the rest train.
- Classes: ``len(labels)`` of dataset.json (background included), unless ``num_classes`` is given; their names,
  for legends, are the ``labels`` values. Image channels: one per ``modality`` entry (4D NIfTI, channels last).
- Inference: the ``test`` list, else the validation cases; or every ``*.nii``/``*.nii.gz`` file of any folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "channel_names",
    "class_names",
    "dataset_name",
    "decathlon_entries",
    "image_folder_datalist",
    "inference_datalist",
    "modality_channels",
    "num_channels",
    "num_classes",
    "read_dataset_json",
    "split_training",
    "training_datalist",
    "validate_dataset_description",
    "validation_datalist",
]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def validate_dataset_description(content: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Check the structure of a parsed dataset.json and return it; every error names the offending key.

    ``training`` must be a non-empty list of ``{"image": path, "label": path}``; ``validation`` (optional) likewise;
    ``test`` (optional) a list of paths or ``{"image": path}``; ``labels`` (optional) a non-empty mapping of class
    index to name.

    Raises:
        ValueError: naming the file and the key that is wrong, and what was expected.
    """
    if not isinstance(content, dict):
        raise ValueError(f"'{path}': expected a JSON object, got {type(content).__name__}.")
    if not isinstance(content.get("training"), list) or not content["training"]:
        raise ValueError(f"'{path}': 'training' must be a non-empty list of image/label entries.")
    for key, fields in (("training", ("image", "label")), ("validation", ("image", "label")), ("test", ("image",))):
        entries = content.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ValueError(f"'{path}': '{key}' must be a list, got {type(entries).__name__}.")
        for i, entry in enumerate(entries):
            if key == "test" and isinstance(entry, str):
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"'{path}': '{key}'[{i}] must be an object with {list(fields)}, got {entry!r:.80}.")
            for field_name in fields:
                value = entry.get(field_name)
                if not isinstance(value, str) or not value:
                    raise ValueError(
                        f"'{path}': '{key}'[{i}]['{field_name}'] must be a path string, got {value!r:.80}."
                    )
    labels = content.get("labels")
    if labels is not None and (not isinstance(labels, dict) or not labels):
        raise ValueError(f"'{path}': 'labels' must be a non-empty object of class index to name, got {labels!r:.80}.")
    return content


def read_dataset_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a dataset.json (see :func:`validate_dataset_description`).

    Raises:
        ValueError: the file is not valid JSON, is nested too deeply to parse, or has the wrong structure.
    """
    try:
        content = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"'{path}' is not valid JSON: {err}") from err
    except RecursionError:
        raise ValueError(f"'{path}' is nested too deeply to be a dataset description.") from None
    return validate_dataset_description(content, path)


def _dataset_json(dataset_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset_dir: no dataset.json in '{dataset_dir}'; expected a Medical Segmentation Decathlon folder "
            "(dataset.json, imagesTr/, labelsTr/)."
        )
    try:
        return path, read_dataset_json(path)
    except ValueError as err:
        raise ValueError(f"dataset_dir: {err}") from err


def split_training(cases: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Split cases deterministically into training and validation (see the module docstring).

    Args:
        cases: datalist entries with an ``image`` key; at least two.
        val_fraction: share of cases to hold out, in (0, 1).

    Returns:
        ``(training, validation)``, each sorted by image path.

    Raises:
        ValueError: for fewer than two cases or ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if len(cases) < 2:
        raise ValueError(f"need at least 2 training cases to hold one out for validation, got {len(cases)}.")
    ordered = sorted(cases, key=lambda case: str(case["image"]))
    step = max(1, round(1.0 / val_fraction))
    held_out = set(range(len(ordered) - 1, -1, -step))
    if len(held_out) == len(ordered):
        held_out = {len(ordered) - 1}
    training = [c for i, c in enumerate(ordered) if i not in held_out]
    validation = [c for i, c in enumerate(ordered) if i in held_out]
    return training, validation


def decathlon_entries(
    content: dict[str, Any], key: str, base_dir: str | os.PathLike, is_segmentation: bool = True
) -> list[dict]:
    """The entries of list ``key`` of a dataset description with their paths joined to ``base_dir``, as MONAI's
    ``load_decathlon_datalist`` gives them, without importing torch: ``check_data`` and ``fingerprint`` start in a
    fraction of the time.

    Raises:
        ValueError: ``key`` is not in the description.
    """
    if key not in content:
        raise ValueError(f"Data list {key} not specified in the dataset description.")
    keys = ("image", "label") if is_segmentation else ("image",)

    def joined(value: Any) -> Any:
        if isinstance(value, str | os.PathLike):
            return os.path.normpath(os.path.join(base_dir, value))
        return [joined(v) for v in value] if isinstance(value, list) else value

    entries = [item if isinstance(item, dict) else {"image": item} for item in content[key]]
    return [{k: joined(v) if k in keys else v for k, v in entry.items()} for entry in entries]


def _split(dataset_dir: str | os.PathLike, val_fraction: float) -> tuple[list[dict], list[dict]]:
    _, content = _dataset_json(dataset_dir)
    training = decathlon_entries(content, "training", dataset_dir)
    if content.get("validation"):
        return training, decathlon_entries(content, "validation", dataset_dir)
    return split_training(training, val_fraction)


def training_datalist(dataset_dir: str | os.PathLike, val_fraction: float = 0.2) -> list[dict]:
    """Return the training cases of ``dataset_dir`` as ``{"image": path, "label": path}`` dicts.

    Args:
        dataset_dir: Decathlon-layout folder.
        val_fraction: held-out share when dataset.json has no ``validation`` list.

    Returns:
        Datalist entries with absolute paths.

    Raises:
        FileNotFoundError: when ``dataset_dir`` has no dataset.json.
        ValueError: when dataset.json is malformed or too small to split.
    """
    return _split(dataset_dir, val_fraction)[0]


def validation_datalist(dataset_dir: str | os.PathLike, val_fraction: float = 0.2) -> list[dict]:
    """Return the validation cases of ``dataset_dir`` (see :func:`training_datalist`)."""
    return _split(dataset_dir, val_fraction)[1]


def image_folder_datalist(image_dir: str | os.PathLike) -> list[dict]:
    """Return ``{"image": path}`` for every NIfTI file directly in ``image_dir``, sorted by name.

    Raises:
        FileNotFoundError: when ``image_dir`` is not a folder.
        ValueError: when it holds no ``.nii``/``.nii.gz`` file.
    """
    folder = Path(image_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"image_dir: '{image_dir}' is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))
    if not files:
        raise ValueError(f"image_dir: no .nii or .nii.gz files in '{image_dir}'.")
    return [{"image": str(p.resolve())} for p in files]


def inference_datalist(
    dataset_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None, val_fraction: float = 0.2
) -> list[dict]:
    """Return the images to segment or reconstruct.

    Args:
        dataset_dir: Decathlon-layout folder, used when ``image_dir`` is empty.
        image_dir: any folder of NIfTI images; takes precedence when given.
        val_fraction: held-out share when falling back to the validation split.

    Returns:
        ``{"image": path}`` entries (validation entries keep their ``label``).
    """
    if image_dir:
        return image_folder_datalist(image_dir)
    _, content = _dataset_json(dataset_dir)
    if content.get("test"):
        return decathlon_entries(content, "test", dataset_dir, is_segmentation=False)
    return validation_datalist(dataset_dir, val_fraction)


def _labels(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    path, content = _dataset_json(dataset_dir)
    labels = content.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise ValueError(f"'{path}' has no 'labels' mapping with background and a structure; set num_classes.")
    return labels


def num_classes(dataset_dir: str | os.PathLike, override: int | None = None) -> int:
    """Return the number of output classes, background included.

    Args:
        dataset_dir: Decathlon-layout folder whose dataset.json has a ``labels`` mapping.
        override: when given, returned as is (after validation) without reading ``labels``.

    Raises:
        ValueError: when ``override`` is below 2, or dataset.json has no usable ``labels`` and no override is given.
    """
    if override is not None:
        if int(override) < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one structure), got {override}.")
        return int(override)
    return len(_labels(dataset_dir))


def modality_channels(content: dict[str, Any]) -> int:
    """The image channel count a parsed dataset.json declares: one per ``modality`` entry, 1 without any."""
    modality = content.get("modality")
    return len(modality) if isinstance(modality, dict) and modality else 1


def dataset_name(dataset_dir: str | os.PathLike) -> str:
    """The dataset's ``name`` in dataset.json, else its folder's name: what a trained model records it came from."""
    _, content = _dataset_json(dataset_dir)
    return str(content.get("name") or Path(dataset_dir).resolve().name)


def channel_names(content: dict[str, Any], channels: int) -> list[str]:
    """The name of each image channel a parsed dataset.json gives in ``modality`` ("channel N" where it gives none)."""
    names = content.get("modality") or {}
    return [str(names.get(str(c), f"channel {c}")) for c in range(channels)]


def num_channels(dataset_dir: str | os.PathLike) -> int:
    """Return the image channel count of a Decathlon-layout folder (see :func:`modality_channels`).

    Raises:
        FileNotFoundError, ValueError: when dataset.json is missing or malformed.
    """
    return modality_channels(_dataset_json(dataset_dir)[1])


def class_names(dataset_dir: str | os.PathLike, count: int | None = None) -> list[str]:
    """Return the name of each class index, background first, for preview legends.

    Args:
        dataset_dir: Decathlon-layout folder whose dataset.json has a ``labels`` mapping (index -> name).
        count: the number of classes the network predicts (``num_classes``); indices that ``labels`` does not name
            are called ``class N``, and names beyond ``count`` are dropped.

    Raises:
        ValueError: when dataset.json has no usable ``labels`` mapping.
    """
    labels = {str(k): str(v) for k, v in _labels(dataset_dir).items()}
    total = len(labels) if count is None else int(count)
    return [labels.get(str(i), f"class {i}") for i in range(total)]
