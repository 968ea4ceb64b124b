"""Sharing bundles between labs safely: checkpoint integrity, the audit, the sandbox of ``monai_ext run``, pack/unpack
and signing. A bundle from another lab is hostile input: these tools allow what they can prove safe and refuse the
rest.

Each module is imported the first time it is named (``monai_ext.sharing.checkpoint.AtomicCheckpointSaver`` in a
config), so that commands that need no torch (``audit``, ``keygen``) never import it.
"""

import importlib

MODULES = (
    "allowlist", "audit", "checkpoint", "exchange", "expressions", "packaging", "safe_run", "sandbox", "signing",
)  # fmt: skip

__all__ = list(MODULES)


def __getattr__(name: str) -> object:
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
