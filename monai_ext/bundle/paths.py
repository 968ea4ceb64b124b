"""Locate the bundle whose configs MONAI is evaluating, so bundle configs hold no absolute paths."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bundle_root"]

# monai.bundle.scripts functions that read configs with a bare ConfigParser hold the file list in this local.
_SCRIPT_MODULE = "monai.bundle.scripts"
_SCRIPT_CONFIG_LOCAL = "config_file_"


def _first_file(config_file: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    if isinstance(config_file, (str, os.PathLike)):
        return Path(config_file)
    if isinstance(config_file, Sequence) and config_file:
        return Path(config_file[0])
    return None


def _root_of(config_dir: Path) -> str:
    config_dir = Path(os.path.abspath(config_dir))
    return str(config_dir.parent if config_dir.name == "configs" else config_dir)


def bundle_root() -> str:
    """Return the root of the bundle whose config files MONAI is evaluating right now.

    MONAI gives a config no way to learn where its file lives, but the object that reads the files knows: a
    ``ConfigWorkflow`` (``python -m monai.bundle run``, ``monai.bundle.run(...)``, ``torchrun``) keeps the folder of
    its first config file, and ``ckpt_export``, ``onnx_export``, ``trt_export`` and ``verify_net_in_out`` keep their
    ``config_file`` argument. This looks up the nearest such caller on the stack and returns the parent of that
    ``configs`` folder (the folder itself when it is not called ``configs``). A bundle config uses it as
    ``"bundle_root": "$monai_ext.bundle.paths.bundle_root()"``, so the bundle runs from any working directory and
    from Python; ``--bundle_root DIR`` (or ``bundle_root=DIR``) still overrides it.

    Returns:
        The absolute path of the bundle root.

    Raises:
        ValueError: when no MONAI workflow or bundle script is evaluating configs (for example a bare
            ``ConfigParser`` built by hand); set ``bundle_root`` explicitly then.
    """
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, ConfigWorkflow):
                return _root_of(owner.config_root_path)
            if frame.f_globals.get("__name__") == _SCRIPT_MODULE and _SCRIPT_CONFIG_LOCAL in frame.f_locals:
                first = _first_file(frame.f_locals[_SCRIPT_CONFIG_LOCAL])
                if first is not None:
                    return _root_of(first.parent)
            frame = frame.f_back
    finally:
        del frame
    raise ValueError(
        "bundle_root: no MONAI bundle workflow is reading these configs, so the bundle folder is unknown; "
        "set 'bundle_root' to the folder that holds configs/ (for example parser['bundle_root'] = '/path/to/bundle')."
    )
