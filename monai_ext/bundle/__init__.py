"""Workflow support code that the bundles under ``bundles/`` reach through ``$import monai_ext`` (data, handlers, logs).

The tools for sharing bundles safely (checkpoint integrity, audit, pack/unpack, signing) live in
:mod:`monai_ext.sharing`.
"""

from monai_ext.bundle import (
    autoencoder,
    data_check,
    datalist,
    fingerprint,
    intensity,
    logs,
    model_record,
    paths,
    previews,
    resume,
    standins,
    synthetic,
)

__all__: list[str] = [
    "autoencoder",
    "data_check",
    "datalist",
    "fingerprint",
    "intensity",
    "logs",
    "model_record",
    "paths",
    "previews",
    "resume",
    "standins",
    "synthetic",
]
