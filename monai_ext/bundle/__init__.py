"""Support code that the bundles under ``bundles/`` reach through ``$import monai_ext`` (data, handlers, safety)."""

from monai_ext.bundle import (
    audit,
    autoencoder,
    checkpoint,
    data_check,
    datalist,
    logs,
    packaging,
    paths,
    previews,
    resume,
    signing,
    synthetic,
)

__all__: list[str] = [
    "audit",
    "autoencoder",
    "checkpoint",
    "data_check",
    "datalist",
    "logs",
    "packaging",
    "paths",
    "previews",
    "resume",
    "signing",
    "synthetic",
]
