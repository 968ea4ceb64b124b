"""Import MONAI Generative Models 0.2.3's schedulers and inferers beside MONAI 1.6.

MONAI moved ``IgniteInfo`` from ``monai.config`` to ``monai.utils``; the legacy package still imports it from the
old place, so ``generative.networks.schedulers`` and ``generative.inferers`` fail to import (its networks do not).
The moved name is made available at its old place, nothing else: the legacy code then runs as released.
"""

import monai.config
import monai.utils


def legacy_scheduler_and_inferer_modules():
    """Return the legacy ``generative.networks.schedulers`` and ``generative.inferers`` modules."""
    if not hasattr(monai.config, "IgniteInfo"):
        monai.config.IgniteInfo = monai.utils.IgniteInfo
    import generative.inferers
    import generative.networks.schedulers

    return generative.networks.schedulers, generative.inferers
