"""Locate the bundle that ``python -m monai.bundle`` is running, so bundle configs hold no absolute paths."""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bundle_root_from_argv"]


def _config_files_in(argv: Sequence[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        else:
            continue
        value = value.strip()
        if value[:1] in "[(":
            parsed = ast.literal_eval(value)
            return [str(p) for p in parsed]
        return [p.strip() for p in value.split(",") if p.strip()]
    return []


def bundle_root_from_argv(argv: Sequence[str] | None = None) -> str:
    """Return the root folder of the bundle whose config file was named first on the command line.

    ``monai.bundle`` gives configs no way to learn where they live, so ``"bundle_root"`` uses this expression: the
    first ``--config_file`` (a single path, a comma separated list or a Python list literal, as ``monai.bundle``
    accepts) is resolved against the current directory, and its bundle is the parent of the ``configs`` folder that
    holds it. Pass ``--bundle_root DIR`` to override this, which is required when a workflow is built from Python
    rather than the command line.

    Args:
        argv: command-line arguments to search; ``sys.argv`` when omitted.

    Returns:
        The absolute path of the bundle root.

    Raises:
        ValueError: when no ``--config_file`` is found in ``argv``.
    """
    files = _config_files_in(sys.argv if argv is None else argv)
    if not files:
        raise ValueError(
            "bundle_root: cannot find '--config_file' on the command line to locate the bundle; "
            "pass '--bundle_root DIR' (the folder holding configs/)."
        )
    config_dir = Path(os.path.abspath(files[0])).parent
    return str(config_dir.parent if config_dir.name == "configs" else config_dir)
