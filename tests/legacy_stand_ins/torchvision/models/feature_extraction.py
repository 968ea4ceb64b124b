"""Test stand-in: see tests/legacy_stand_ins/lpips.py."""


def create_feature_extractor(*args, **kwargs):
    raise RuntimeError("torchvision is a test stand-in here (see tests/legacy_stand_ins/lpips.py)")
