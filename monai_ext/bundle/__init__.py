"""Support code that the bundles under ``bundles/`` reach through ``$import monai_ext`` (data, handlers, safety)."""

from monai_ext.bundle import audit, checkpoint, data_check, packaging, resume

__all__: list[str] = ["audit", "checkpoint", "data_check", "packaging", "resume"]
