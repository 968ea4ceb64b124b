"""What a confined run may read and write: the Python environment and system files it needs, the bundle, its output
folders and the folders named on the command line."""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ext.sharing.sandbox.layout import BUNDLE_OUTPUT_FOLDERS, OPTIONAL_OUTPUT_FOLDERS, WRITABLE_OVERRIDES

__all__ = ["ConfinementError", "sandbox_paths"]

_SYSTEM_READABLE = (
    "/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/timezone", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/proc", "/sys", "/dev/null", "/dev/zero",
    "/dev/urandom", "/dev/random",
)  # fmt: skip


class ConfinementError(RuntimeError):
    """The run cannot be confined as asked (a link out of the bundle, a missing folder); the message says which."""


def _python_paths() -> list[str]:
    """What the interpreter and the installed packages read: the environment's prefixes, its standard library and
    site-packages, the folders that installed packages put on ``sys.path``, and monai_ext's own package folder.

    Not every ``sys.path`` entry: not the working directory that ``python -m`` adds (it may be the home folder), not
    ``PYTHONPATH`` folders (the child runs with ``-I``, which ignores them), and not the checkout around an editable
    install of monai_ext, with its ``.git``.
    """
    import monai_ext

    package = Path(monai_ext.__file__).resolve().parent
    left_out = {os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(package)]
    paths += [sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    for entry in sys.path:
        if entry and os.path.isabs(entry) and entry not in left_out and not package.is_relative_to(entry):
            paths.append(entry)
    return list(dict.fromkeys(paths))


def sandbox_paths(
    bundle_root: str | os.PathLike,
    overrides: Mapping[str, Any],
    private_tmp: str | os.PathLike,
    output_folders: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The folders a confined run of ``bundle_root`` may read and may write, creating the writable ones.

    Args:
        bundle_root: the bundle folder.
        overrides: the run's ``--key value`` overrides; absolute paths among the values become readable, and those
            of :data:`WRITABLE_OVERRIDES` writable.
        private_tmp: the run's own temporary folder.
        output_folders: the top-level folders of the bundle that its configs write to; those among
            :data:`OPTIONAL_OUTPUT_FOLDERS` (the Model Zoo's ``output``) become writable besides
            :data:`BUNDLE_OUTPUT_FOLDERS`, and no other.

    Returns:
        ``(readable, writable)`` absolute paths.

    Raises:
        ConfinementError: an output folder of the bundle is a link that leads out of it.
        ValueError: an output folder of the bundle is a file.
    """
    root = Path(bundle_root).resolve()
    writable = [str(private_tmp), "/dev/shm"]
    for name in dict.fromkeys([*BUNDLE_OUTPUT_FOLDERS, *(f for f in output_folders if f in OPTIONAL_OUTPUT_FOLDERS)]):
        folder = root / name
        if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(root)):
            raise ConfinementError(f"{folder}: a link out of the bundle; remove it, the kernel would follow it")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: an output folder of the bundle is a file; move it away")
        folder.mkdir(exist_ok=True)
        writable.append(str(folder))
    writable += sorted(glob.glob("/dev/nvidia*"))  # CUDA opens and ioctls these; a rule on a file grants only that file
    readable = [*_SYSTEM_READABLE, *_python_paths(), str(root)]
    for key, value in overrides.items():
        if isinstance(value, str) and os.path.isabs(value):
            if key in WRITABLE_OVERRIDES:
                Path(value).mkdir(parents=True, exist_ok=True)
                writable.append(value)
            else:
                readable.append(value)
    return readable, writable
