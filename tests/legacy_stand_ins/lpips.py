"""Stand-ins for lpips and torchvision, for running legacy bundles' inference in the tests.

MONAI Generative Models' ``generative.losses`` imports both at module level, and the Model Zoo's legacy
``scripts/__init__.py`` imports its losses, so a legacy bundle's inference cannot start without them. PyPI's
torchvision (which lpips needs too) does not import beside the CPU build of torch these machines use. Inference never
computes a perceptual loss; anything that tries gets this error. ``torchvision.__version__`` is 0.0, so MONAI's
version-checked optional imports still treat torchvision as missing.
"""


class LPIPS:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("lpips is a test stand-in here (see tests/legacy_stand_ins/lpips.py)")
