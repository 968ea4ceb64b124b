"""Test stand-in: see tests/legacy_stand_ins/lpips.py."""

__version__ = "0.0"
