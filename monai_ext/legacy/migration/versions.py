"""Which MONAI Generative Models release wrote a bundle's weights, decided from evidence, with the rule that decided.

Releases 0.1.0 and 0.2.x compute different things from the same weights (:mod:`monai_ext.legacy.release_0_1`), so
the version matters. The evidence, strongest first:

1. ``--legacy_version`` given by the user;
2. a checkpoint whose keys only 0.1.0 wrote (``query/key/value`` attention, ``ff.net.0.proj``);
3. a config argument that exists only from 0.2.0 on (``use_flash_attention``, ...), even where the metadata says 0.1;
4. the ``monai-generative`` version that ``metadata.json`` lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monai_ext.legacy.migration.configs import MigrationError, walk_ids
from monai_ext.legacy.migration.rules import ARGUMENTS_SINCE_0_2, LEGACY_PACKAGE_NAMES
from monai_ext.legacy.release_0_1 import is_release_0_1, is_release_0_1_checkpoint

__all__ = ["LegacyVersion", "decide_legacy_version"]


@dataclass(frozen=True)
class LegacyVersion:
    """The release whose semantics the weights have, and the sentence that says why."""

    version: str
    rule: str

    @property
    def before_0_2(self) -> bool:
        return is_release_0_1(self.version)


def _metadata_version(metadata: Mapping[str, Any]) -> str | None:
    for section in ("required_packages_version", "optional_packages_version"):
        packages = metadata.get(section)
        if isinstance(packages, Mapping):
            for name in LEGACY_PACKAGE_NAMES:
                if isinstance(packages.get(name), str):
                    return packages[name]
    return None


def _arguments_since_0_2(configs: Mapping[str, Any]) -> list[str]:
    found = []
    for file, content in configs.items():
        for where, value in walk_ids(content, ""):
            target = value.get("_target_") if isinstance(value, dict) else None
            if isinstance(target, str) and target.startswith("generative."):
                found += [f"{file} : {where}#{arg}" for arg in ARGUMENTS_SINCE_0_2 if arg in value]
    return found


def decide_legacy_version(
    explicit: str | None,
    configs: Mapping[str, Any],
    metadata: Mapping[str, Any],
    checkpoints: Mapping[str, Mapping[str, Any]],
) -> LegacyVersion:
    """Decide the legacy release of a bundle's weights.

    Args:
        explicit: the version the user gave, or None.
        configs: the legacy configs, relative path -> content.
        metadata: the legacy ``metadata.json`` content (may be empty).
        checkpoints: relative path -> state dict of every checkpoint the configs load that the bundle holds.

    Raises:
        MigrationError: nothing tells, or the evidence contradicts itself; the message says what to pass.
    """
    if explicit is not None:
        is_release_0_1(str(explicit))  # a ValueError for anything but a version number
        return LegacyVersion(str(explicit), "given with --legacy_version")
    listed = _metadata_version(metadata)
    since_0_2 = _arguments_since_0_2(configs)
    keys_0_1 = [path for path, state in checkpoints.items() if is_release_0_1_checkpoint(state)]
    if keys_0_1 and since_0_2:
        raise MigrationError(
            f"{keys_0_1[0]} has keys only monai-generative 0.1.0 wrote, but {since_0_2[0]} exists only from 0.2.0 "
            "on: pass --legacy_version with the release that trained the weights"
        )
    if keys_0_1:
        return LegacyVersion("0.1.0", f"{keys_0_1[0]} has attention keys that only monai-generative 0.1.0 wrote")
    if since_0_2 and (listed is None or is_release_0_1(listed)):
        argument = since_0_2[0].rsplit("#", 1)[1]
        contradicts = f", although metadata.json lists monai-generative {listed}" if listed else ""
        return LegacyVersion(
            "0.2.0", f"{since_0_2[0]}: {argument} exists only from monai-generative 0.2.0 on{contradicts}"
        )
    if listed is not None:
        return LegacyVersion(listed, f"metadata.json lists monai-generative {listed}")
    raise MigrationError(
        "cannot tell which monai-generative release wrote the weights (metadata.json lists none, and neither the "
        "configs nor the checkpoints show it); 0.1.0 and 0.2.x compute different things from the same weights: "
        "pass --legacy_version, e.g. --legacy_version 0.2.3"
    )
