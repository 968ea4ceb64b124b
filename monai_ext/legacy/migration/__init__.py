"""Move a MONAI Generative Models bundle to MONAI core: ``python -m monai_ext migrate LEGACY NEW [--verify]``."""

from monai_ext.legacy.migration.command import migrate
from monai_ext.legacy.migration.configs import MigrationError

__all__ = ["MigrationError", "migrate"]
