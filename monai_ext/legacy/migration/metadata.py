"""A migrated bundle's ``metadata.json``: MONAI's current schema, current pins, a changelog entry, and the record.

The record (``monai_ext_migration``) keeps what the migration decided and converted, and the parity that
``--verify`` measured, so that a lab receiving the bundle can see how it was moved.
"""

from __future__ import annotations

import json
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from monai_ext.legacy.migration.configs import Change, MigrationError
from monai_ext.legacy.migration.rules import LEGACY_PACKAGE_NAMES

__all__ = ["CURRENT_SCHEMA", "migrate_metadata", "read_metadata", "record_parity"]

CURRENT_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
RECORD = "monai_ext_migration"


def read_metadata(bundle: Path) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json``, or {} where there is none.

    Raises:
        MigrationError: the file is there but is not a JSON object.
    """
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MigrationError(f"cannot read {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(content, dict):
        raise MigrationError(f"{path} must hold a JSON object")
    return content


def _installed(name: str) -> str:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return "unknown"


def _next_version(version: Any) -> str:
    parts = str(version).split(".")
    if len(parts) >= 2 and all(part.isdigit() for part in parts[:2]):
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return "0.1.0"


def migrate_metadata(bundle: Path, legacy: dict[str, Any], record: dict[str, Any]) -> tuple[list[Change], list[str]]:
    """Write the migrated ``configs/metadata.json`` of ``bundle`` from the legacy content.

    Args:
        bundle: the new bundle folder.
        legacy: the legacy metadata (not modified).
        record: what the migration decided, kept under ``monai_ext_migration``.

    Returns:
        The changes, and what a person must still do.
    """
    file = "configs/metadata.json"
    meta = json.loads(json.dumps(legacy))
    changes: list[Change] = []
    problems: list[str] = []

    def change(key: str, new: Any) -> None:
        old = meta.get(key, "(none)")
        if old != new:
            meta[key] = new
            changes.append(Change(file, key, json.dumps(old), json.dumps(new)))

    version = _next_version(meta.get("version", "0.0.0"))
    change("schema", CURRENT_SCHEMA)
    change("version", version)
    legacy_version = record["legacy_version"]
    entry = f"moved from monai-generative {legacy_version} to MONAI core {_installed('monai')} by monai_ext migrate"
    meta["changelog"] = {version: entry, **(meta.get("changelog") or {})}
    changes.append(Change(file, f"changelog#{version}", "(none)", entry))
    change("monai_version", _installed("monai"))
    change("pytorch_version", _installed("torch").split("+")[0])
    change("numpy_version", _installed("numpy"))
    packages = {**(meta.get("optional_packages_version") or {}), **(meta.get("required_packages_version") or {})}
    packages = {name: pin for name, pin in packages.items() if name not in LEGACY_PACKAGE_NAMES}
    packages["monai-ext"] = _installed("monai-ext")
    change("required_packages_version", packages)
    if "optional_packages_version" in meta:
        changes.append(Change(file, "optional_packages_version", "(listed)", "merged into required_packages_version"))
        del meta["optional_packages_version"]
    if "network_data_format" not in meta:
        formats = [key for key in meta if key.endswith("_data_format")]
        # the Model Zoo's latent diffusion bundles describe their network_def as the generator
        source = "generator_data_format" if "generator_data_format" in formats else None
        source = source or (formats[0] if len(formats) == 1 else None)
        if source:
            meta["network_data_format"] = meta.pop(source)
            changes.append(Change(file, source, "(this name)", "network_data_format (MONAI's schema requires it)"))
        else:
            problems.append(f"{file}: add network_data_format, which MONAI's current schema requires")
    meta[RECORD] = record
    (bundle / file).write_text(json.dumps(meta, indent=4) + "\n")
    return changes, problems


def record_parity(bundle: Path, parity: dict[str, Any]) -> None:
    """Add what ``--verify`` measured to the migration record of ``bundle``'s metadata."""
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.setdefault(RECORD, {})["parity"] = parity
    path.write_text(json.dumps(meta, indent=4) + "\n")
