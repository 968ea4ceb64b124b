"""Converters that load checkpoints written by other implementations into monai_ext networks."""

__all__: list[str] = []
