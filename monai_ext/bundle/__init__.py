"""Workflow support code that the bundles under ``bundles/`` reach through ``$import monai_ext`` (data, handlers, logs),
and the planning that configures them from the data (:mod:`.planning`).

Each module is imported the first time it is named (``monai_ext.bundle.datalist.training_datalist`` in a config), so
that commands that need no torch (``check_data``, ``fingerprint``) never import it. The tools for sharing bundles
safely live in :mod:`monai_ext.sharing`.
"""

from monai_ext.lazy import lazy_attributes

MODULES = (
    "autoencoder", "data_check", "datalist", "errors", "export", "intensity", "logs", "model_record", "overrides",
    "paths", "planning", "previews", "resume", "standins", "synthetic", "validation",
)  # fmt: skip

__all__ = list(MODULES)


__getattr__ = lazy_attributes(__name__, MODULES)
