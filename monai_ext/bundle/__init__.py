"""Support code that the bundles under ``bundles/`` reach through ``$import monai_ext`` (data, handlers, safety)."""

__all__: list[str] = []
