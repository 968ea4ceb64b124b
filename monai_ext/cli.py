"""Command-line interface: ``python -m monai_ext COMMAND --help``.

Each command is a plain function named here as "module:function" and imported only when the command line starts, so
``import monai_ext`` never pays for the command modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# command name -> "module:function"
COMMANDS: dict[str, str] = {
    "versions": "monai_ext.cli:versions",
    "convert_legacy_autoencoderkl": "monai_ext.legacy.commands:convert_legacy_autoencoderkl",
    "convert_legacy_diffusion_unet": "monai_ext.legacy.commands:convert_legacy_diffusion_unet",
    "convert_legacy_controlnet": "monai_ext.legacy.commands:convert_legacy_controlnet",
    "check_data": "monai_ext.bundle.data_check:check_data",
    "fingerprint": "monai_ext.bundle.fingerprint:fingerprint",
    "standin": "monai_ext.bundle.standins:standin",
    "record_sha256": "monai_ext.sharing.checkpoint:record_sha256",
    "audit": "monai_ext.sharing.audit:audit",
    "run": "monai_ext.sharing.safe_run:run",
    "keygen": "monai_ext.sharing.signing:keygen",
    "pack": "monai_ext.sharing.packaging:pack",
    "unpack": "monai_ext.sharing.packaging:unpack",
}


def versions() -> str:
    """Print, as JSON, the versions of monai_ext and of the packages it runs on (paste these into bug reports)."""
    import json

    import ignite
    import monai
    import numpy
    import torch

    import monai_ext

    found = {
        "monai_ext": monai_ext.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "pytorch-ignite": ignite.__version__,
        "numpy": numpy.__version__,
    }
    return json.dumps(found, indent=1)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main() -> None:
    """Run the ``monai_ext`` command line."""
    import fire

    fire.Fire({name: _resolve(target) for name, target in COMMANDS.items()}, name="monai_ext")
