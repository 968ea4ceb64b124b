"""Command-line interface: ``python -m monai_ext COMMAND --help``.

Each command is a plain function named here as "module:function" and imported only when the command line starts, so
``import monai_ext`` never pays for the command modules.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

# command name -> ("module:function", what it does: the function's first docstring line, checked by the tests)
COMMANDS: dict[str, tuple[str, str]] = {
    "versions": (
        "monai_ext.cli:versions",
        "Print, as JSON, the versions of monai_ext and of the packages it runs on (paste these into bug reports).",
    ),
    "convert_legacy_autoencoderkl": (
        "monai_ext.legacy.commands:convert_legacy_autoencoderkl",
        "Convert a MONAI Generative Models AutoencoderKL checkpoint so that it reproduces the legacy outputs.",
    ),
    "convert_legacy_diffusion_unet": (
        "monai_ext.legacy.commands:convert_legacy_diffusion_unet",
        "Convert a MONAI Generative Models DiffusionModelUNet checkpoint so that it reproduces the legacy outputs.",
    ),
    "convert_legacy_controlnet": (
        "monai_ext.legacy.commands:convert_legacy_controlnet",
        "Convert a MONAI Generative Models ControlNet checkpoint so that it reproduces the legacy outputs.",
    ),
    "migrate": (
        "monai_ext.legacy.migration.command:migrate",
        "Move a MONAI Generative Models bundle to MONAI core, with its weights converted and a report of every change.",
    ),
    "check_data": (
        "monai_ext.bundle.data_check:check_data",
        "Check every case of an MSD-layout dataset directory once; print all problems and exit 1 if there are any.",
    ),
    "fingerprint": (
        "monai_ext.bundle.planning.fingerprint:fingerprint",
        "Fingerprint a Decathlon-layout dataset and print the training configuration derived from it.",
    ),
    "standin": (
        "monai_ext.bundle.standins:standin",
        "Write a small synthetic stand-in for a Decathlon task, to try a bundle on data shaped like the real task's.",
    ),
    "export": (
        "monai_ext.bundle.export:export",
        "Export a bundle's trained network to torch.export (.pt2), ONNX and TorchScript, each checked against eager.",
    ),
    "record_sha256": (
        "monai_ext.sharing.hashes:record_sha256",
        "Compute the SHA-256 of ``path`` and record it in the manifest next to it.",
    ),
    "audit": (
        "monai_ext.sharing.audit:audit",
        "Report what a bundle would do, for a reviewer, without running any of it.",
    ),
    "run": (
        "monai_ext.sharing.safe_run:run",
        "Run a bundle from another lab, confined by the kernel (Landlock and seccomp).",
    ),
    "keygen": (
        "monai_ext.sharing.signing:keygen",
        "Make an Ed25519 key pair for signing bundles: keep PRIVATE secret, give PUBLIC to the labs you share with.",
    ),
    "pack": (
        "monai_ext.sharing.exchange:pack",
        "Pack a bundle folder (configs, docs, license, models, scripts) into a zip with SHA-256 hashes and versions.",
    ),
    "unpack": (
        "monai_ext.sharing.exchange:unpack",
        "Verify a bundle zip (names, sizes, signature, hashes), audit it, print what to install; then extract it.",
    ),
}


def versions() -> str:
    """Print, as JSON, the versions of monai_ext and of the packages it runs on (paste these into bug reports)."""
    found = {}
    for name in ("monai-ext", "monai", "torch", "pytorch-ignite", "numpy"):
        try:
            found[name.replace("-", "_") if name == "monai-ext" else name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return json.dumps(found, indent=1)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def usage() -> str:
    """The command list that ``python -m monai_ext`` and ``--help`` print, without importing any command."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m monai_ext COMMAND [--help | ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`python -m monai_ext COMMAND --help` describes a command's arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``monai_ext`` command line: only the module of the command given is imported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"monai_ext: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    import fire

    fire.Fire(_resolve(COMMANDS[argv[0]][0]), command=argv[1:], name=f"monai_ext {argv[0]}")
