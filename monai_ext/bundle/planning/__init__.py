"""Planning: from a dataset's fingerprint to the configuration a model trains with, kept apart from the engine's
handlers, as nnU-Net keeps experiment planning apart from training.

- :mod:`.fingerprint`: one pass over the training cases; spacing, ROI, batch size and normalisation, each with why;
- :mod:`.intensities`: how intensities differ between cases, the normalisation rule they call for, and warnings;
- :mod:`.schedule`: how long an epoch is, whatever the dataset's size.

The data decides; the bundle's configs follow what is planned here.
"""

from monai_ext.lazy import lazy_attributes

MODULES = ("fingerprint", "intensities", "schedule")

__all__ = list(MODULES)


__getattr__ = lazy_attributes(__name__, MODULES)
