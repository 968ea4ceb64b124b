"""Sharing bundles between labs safely: checkpoint integrity, the audit, the sandbox of ``monai_ext run``, pack/unpack
and signing. A bundle from another lab is hostile input: these tools allow what they can prove safe and refuse the
rest.

Each module is imported the first time it is named (``monai_ext.sharing.checkpoint.AtomicCheckpointSaver`` in a
config), so that commands that need no torch (``audit``, ``keygen``) never import it.
"""

from monai_ext.lazy import lazy_attributes

MODULES = (
    "allowlist", "audit", "checkpoint", "exchange", "expressions", "hashes", "packaging", "safe_run", "sandbox",
    "signing",
)  # fmt: skip

__all__ = list(MODULES)


__getattr__ = lazy_attributes(__name__, MODULES)
