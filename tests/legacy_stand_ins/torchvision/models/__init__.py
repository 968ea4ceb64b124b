"""Test stand-in: see tests/legacy_stand_ins/lpips.py."""


class ResNet50_Weights:  # noqa: N801 (torchvision's name)
    DEFAULT = None


def resnet50(*args, **kwargs):
    raise RuntimeError("torchvision is a test stand-in here (see tests/legacy_stand_ins/lpips.py)")
