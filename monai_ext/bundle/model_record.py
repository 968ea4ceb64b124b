"""A trained model's own configuration, kept in its SHA-256 record, so it runs without the dataset it was trained on.

Training records, with the best model's hash in ``models/sha256_manifest.json``, what the network and its inputs
were: class count and names, input channels and their names, voxel spacing, ROI and intensity normalisation.
Evaluation, inference and ``ckpt_export`` build the network and the transforms from that record; values derived
from whatever dataset the command sees only fill in what the record lacks (a bundle that has not been trained yet).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from monai_ext.bundle.errors import BundleError
from monai_ext.bundle.planning.fingerprint import load_fingerprint, model_configuration, saved_fingerprint
from monai_ext.sharing.hashes import SHA256_MANIFEST, atomic_write, read_manifest

__all__ = [
    "CONFIGURATION_FIELDS",
    "MetadataUpdater",
    "ModelExistsError",
    "describe_in_metadata",
    "describe_model",
    "keep_trained_model",
    "recorded_configuration",
    "require_model",
    "settled_configuration",
]

logger = logging.getLogger(__name__)

CONFIGURATION_FIELDS = (
    "num_classes",
    "class_names",
    "in_channels",
    "channel_names",
    "pixdim",
    "roi_size",
    "normalization",
)


def _plain(value: Any) -> Any:
    """JSON-comparable form of a config value (tuples and numpy scalars become lists and numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


class ModelExistsError(BundleError, FileExistsError):
    """Training would replace a trained model that this run did not start from; the message names it and the ways
    out."""


def describe_model(model_file: str | os.PathLike) -> str:
    """What the record says of a saved model: its score and when it was saved (the file's time without a record)."""
    path = Path(model_file)
    record = read_manifest(path.parent).get(path.name, {})
    parts = []
    if "score" in record:
        parts.append(f"{record['score']['name'].replace('_', ' ')} {record['score']['value']:.4f}")
    saved = record.get("saved") or datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).isoformat(
        timespec="seconds"
    )
    parts.append(f"saved {saved.replace('T', ' ').replace('+00:00', ' UTC')}")
    return ", ".join(parts)


def _differences(recorded: dict[str, Any], configuration: dict[str, Any]) -> list[str]:
    return [
        f"{field} {recorded[field]} there, {_plain(value)} here"
        for field, value in configuration.items()
        if field in recorded and _plain(value) != recorded[field]
    ]


def keep_trained_model(
    model_file: str | os.PathLike,
    overwrite: bool = False,
    resume: bool = False,
    configuration: dict[str, Any] | None = None,
) -> None:
    """Refuse to start training when ``model_file`` already holds a model this run would replace.

    A received bundle's model, or the model of an earlier run, is never replaced silently: the run stops before its
    first epoch, naming the model's score and date. ``overwrite`` replaces it (the log says what is replaced);
    ``resume`` continues the run that wrote it, and is offered only when the model was trained with this run's
    ``configuration`` (another dataset's classes or ROI would not load into this run's network).

    Args:
        model_file: the best-model file the training saves (``models/model.pt``).
        overwrite: replace it (``--overwrite True``).
        resume: this run resumes the training that wrote it (``--resume True``).
        configuration: what this run trains with (its ``model_configuration``), compared with the model's record.

    Raises:
        ModelExistsError: the file exists and neither ``overwrite`` nor ``resume`` is set, or ``resume`` is set and
            the model was trained with another configuration.
    """
    path = Path(model_file)
    if not path.is_file():
        return
    differences = _differences(recorded_configuration(path), configuration or {})
    if resume and differences:
        raise ModelExistsError(
            f"{path} was trained with another configuration ({'; '.join(differences)}), so this run cannot resume "
            "it. Pass --ckpt_dir OTHER_FOLDER to train anew beside it, or --overwrite True without --resume to replace "
            "it."
        )
    if resume:
        return
    described = describe_model(path)
    if overwrite:
        logger.warning(f"{path} ({described}) will be replaced by this run's best model, as --overwrite asks")
        return
    resumable = "" if differences else ", or --resume True to continue the run that wrote it"
    trained = f" It was trained with another configuration ({'; '.join(differences)})." if differences else ""
    raise ModelExistsError(
        f"{path} already holds a trained model ({described}), and this training would replace it.{trained} Pass "
        f"--overwrite True to replace it or --ckpt_dir OTHER_FOLDER to keep it and save this run's models there"
        f"{resumable}."
    )


def require_model(model_file: str | os.PathLike, train_config: str | os.PathLike) -> None:
    """Stop an evaluation or inference that has no model to load with one line naming the file and the command that
    trains it (instead of a traceback from the checkpoint loader).

    Raises:
        SystemExit: ``model_file`` does not exist.
    """
    if not Path(model_file).is_file():
        raise SystemExit(
            f"No trained model at {model_file}. Train one first: python -m monai.bundle run --config_file "
            f"{train_config} (or pass --model_file PATH)."
        )


def recorded_configuration(model_file: str | os.PathLike) -> dict[str, Any]:
    """The configuration recorded with ``model_file``, or ``{}`` when there is no model or no record."""
    path = Path(model_file)
    if not path.is_file():
        return {}
    return dict(read_manifest(path.parent).get(path.name, {}).get("configuration", {}))


def settled_configuration(
    model_file: str | os.PathLike, fingerprint_file: str | os.PathLike, dataset_dir: str | os.PathLike
) -> dict[str, Any]:
    """The configuration to build a trained model's network and transforms with: the model's record wins.

    Without a record (a bundle not trained yet) the values come from the dataset's fingerprint (``fingerprint_file``
    when it describes ``dataset_dir``, else computed). With one, the dataset is not read; a saved fingerprint of it
    that disagrees is logged, naming both sources.

    Args:
        model_file: the trained model (``models/model.pt``).
        fingerprint_file: the bundle's ``configs/fingerprint.json`` (may be missing).
        dataset_dir: the dataset the command was pointed at.

    Returns:
        One value for each of :data:`CONFIGURATION_FIELDS`.
    """
    record = recorded_configuration(model_file)
    if not all(field in record for field in CONFIGURATION_FIELDS):
        derived = model_configuration(load_fingerprint(fingerprint_file, dataset_dir))
        return {field: record.get(field, derived[field]) for field in CONFIGURATION_FIELDS}
    saved = saved_fingerprint(fingerprint_file, dataset_dir) if (Path(dataset_dir) / "dataset.json").is_file() else None
    if saved is not None:
        for field, value in model_configuration(saved).items():
            if _plain(value) != record[field]:
                logger.warning(
                    f"{field}: {model_file} was trained with {record[field]} (recorded in "
                    f"{Path(model_file).parent / SHA256_MANIFEST}), {fingerprint_file} gives {value} for "
                    f"{dataset_dir}; the model's value is used"
                )
    return {field: record[field] for field in CONFIGURATION_FIELDS}


def describe_in_metadata(meta_file: str | os.PathLike, model_file: str | os.PathLike) -> bool:
    """Make metadata.json's ``network_data_format`` describe the trained model (channels, classes, ROI).

    MONAI's ``verify_net_in_out`` and the Model Zoo's checks compare the network with metadata.json, so after
    training on another dataset the metadata has to follow the model. Only the rank-0 process of a distributed run
    writes, and only when something changed.

    Returns:
        Whether metadata.json was rewritten.
    """
    import torch.distributed as dist

    record = recorded_configuration(model_file)
    if not record or (dist.is_initialized() and dist.get_rank() != 0):
        return False
    path = Path(meta_file)
    meta = json.loads(path.read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    updated = {
        "image": {
            "num_channels": record["in_channels"],
            "spatial_shape": record["roi_size"],
            "channel_def": {str(i): name for i, name in enumerate(record["channel_names"])},
        },
        "pred": {
            "num_channels": record["num_classes"],
            "spatial_shape": record["roi_size"],
            "channel_def": {str(i): name for i, name in enumerate(record["class_names"])},
        },
    }
    if all(image[k] == v for k, v in updated["image"].items()) and all(
        pred[k] == v for k, v in updated["pred"].items()
    ):
        return False
    image.update(updated["image"])
    pred.update(updated["pred"])
    text = (json.dumps(meta, indent=4) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))
    logger.info(f"{path}: network_data_format now describes {model_file}")
    return True


class MetadataUpdater:
    """Ignite handler: after each validation, :func:`describe_in_metadata` for the model the run saved.

    Put it after the best-model saver in the validation handlers, so metadata.json follows models/model.pt even when
    the run stops early. Where metadata.json may not be written (a run confined by ``monai_ext run``) it warns once and
    training goes on.

    Args:
        meta_file: the bundle's ``configs/metadata.json``.
        model_file: the best model (``models/model.pt``).
    """

    def __init__(self, meta_file: str | os.PathLike, model_file: str | os.PathLike) -> None:
        self.meta_file = meta_file
        self.model_file = model_file
        self.read_only = False

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if self.read_only:
            return
        try:
            describe_in_metadata(self.meta_file, self.model_file)
        except PermissionError:
            # a confined run (monai_ext run) may not rewrite the received bundle's definition; training goes on
            self.read_only = True
            logger.warning(
                f"{self.meta_file} is read-only in this run, so its network_data_format still describes the shipped "
                "model; verify_net_in_out compares against it"
            )
