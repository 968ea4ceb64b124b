"""Command-line overrides that name no config id stop the run, with what was probably meant.

MONAI adds an unknown ``--key value`` as a new, unused id: ``--dataset_dri /data/x`` trained on the built-in
synthetic data and exited 0. :func:`check_command_line` runs in a bundle's ``initialize`` under
``python -m monai.bundle run`` (it reads ``sys.argv``, as MONAI's runner does), and ``monai_ext run`` calls
:func:`check_overrides` before it starts the run.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from monai_ext.bundle.errors import BundleError

__all__ = ["UnknownOverrideError", "check_command_line", "check_overrides", "config_ids"]

# the arguments of MONAI's ``run`` itself, not config ids
RUNNER_ARGUMENTS = frozenset(
    {"config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
     "workflow_type", "workflow_name", "properties_path"}
)  # fmt: skip


class UnknownOverrideError(BundleError, KeyError):
    """An override names no id of the bundle's configs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def config_ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a config, nested ones as MONAI writes them (``train#trainer#max_epochs``)."""
    ids = {prefix} if prefix else set()
    if isinstance(config, dict):
        for key, value in config.items():
            ids |= config_ids(value, f"{prefix}#{key}" if prefix else str(key))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            ids |= config_ids(value, f"{prefix}#{index}" if prefix else str(index))
    return ids


def check_overrides(config_files: Sequence[str | os.PathLike], keys: Iterable[str]) -> None:
    """Raise :class:`UnknownOverrideError` naming every key that is no id of the merged ``config_files``.

    Raises:
        UnknownOverrideError: with a "did you mean" for each unknown key that is close to an id.
    """
    from monai.bundle import ConfigParser

    ids = config_ids(ConfigParser.load_config_files([os.fspath(f) for f in config_files]))
    unknown = [str(key) for key in keys if str(key).replace("::", "#") not in ids and key not in RUNNER_ARGUMENTS]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(ids), n=1, cutoff=0.75)
        lines.append(f"--{key}" + (f" (did you mean --{close[0]}?)" if close else ""))
    raise UnknownOverrideError(
        f"{', '.join(lines)}: no such id in {', '.join(map(os.fspath, config_files))}; the run would ignore it, so it "
        "stops here"
    )


def _config_files(value: str) -> list[str]:
    if value.startswith("["):
        return [str(f) for f in ast.literal_eval(value)]
    return [f for f in value.split(",") if f]


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Check the overrides of ``python -m monai.bundle run ...`` (``sys.argv`` by default) against its config files;
    any other command line (Python, a test, ``monai_ext run``'s child) is left alone.

    Raises:
        UnknownOverrideError: see :func:`check_overrides`.
    """
    argv = list(sys.argv if argv is None else argv)
    if "run" not in argv[1:2] or not argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return
    options: dict[str, str] = {}
    arguments = argv[2:]
    for index, argument in enumerate(arguments):
        if argument.startswith("--"):
            key, _, value = argument[2:].partition("=")
            options[key] = value or (arguments[index + 1] if index + 1 < len(arguments) else "")
    if "config_file" in options:
        check_overrides(_config_files(options["config_file"]), options)
