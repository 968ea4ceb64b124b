"""Convert every checkpoint a bundle's configs load, once, with the converter and release its network needs.

The converted file is written beside the original as ``<name>_monai<suffix>`` with its SHA-256 in
``sha256_manifest.json``; the original is left as it is. The config constant that names the file is pointed at the
converted one, and so is every ``CheckpointSaver`` that writes it, so that training and inference keep meeting on
one file. Because each load goes through a converter that takes MONAI-format checkpoints unchanged, a config still
loads the original if it is put back.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from monai_ext.legacy.migration.configs import BundleConfigs, Change, FoundLoad, UnresolvedError, walk_ids

__all__ = ["ConvertedCheckpoint", "WeightsReport", "checkpoint_paths", "convert_weights"]


@dataclass
class ConvertedCheckpoint:
    """One converted checkpoint: where it came from and went, its hashes, and which loads use it."""

    original: str
    converted: str
    network: str
    sha256_original: str
    sha256_converted: str
    loads: list[str] = field(default_factory=list)


@dataclass
class WeightsReport:
    checkpoints: dict[str, ConvertedCheckpoint] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _relative(path: Path, bundle: Path) -> str:
    try:
        return str(path.resolve().relative_to(bundle.resolve()))
    except ValueError:
        return str(path)


def checkpoint_paths(configs: BundleConfigs, loads: list[FoundLoad]) -> dict[str, Path]:
    """Relative path -> file of every checkpoint the loads name that the bundle holds and that resolves statically."""
    found = {}
    for found_load in loads:
        try:
            path, _ = configs.path(found_load.load.path, found_load.file)
        except UnresolvedError:
            continue
        if path.is_file():
            found[_relative(path, configs.bundle)] = path
    return found


def _build_network(configs: BundleConfigs, network: str, file: str):
    component_file, definition = configs.component(network, file)
    arguments = configs.literal(definition, component_file)
    module_name, class_name = definition["_target_"].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**arguments)


def convert_weights(configs: BundleConfigs, loads: list[FoundLoad], legacy_version: str | None) -> WeightsReport:
    """Convert the checkpoints of the (already rewritten) ``configs`` in their bundle folder, and repoint the configs.

    Args:
        configs: the new bundle's configs, rewritten to MONAI core names; edited in place.
        loads: the weight loads the rewrite found.
        legacy_version: the release that wrote the weights, passed to the converters for 0.1.x (None for 0.2.x).

    Returns:
        What was converted, the config changes, and what is left for a person (files missing, paths computed at
        run time, checkpoints that do not fit their network).
    """
    from monai_ext.legacy.checkpoint import LegacyCheckpointError
    from monai_ext.sharing.checkpoint import file_sha256, save_checkpoint

    report = WeightsReport()
    renamed: dict[str, str] = {}
    for found_load in loads:
        load, where = found_load.load, f"{found_load.file} : {found_load.where}"
        try:
            path, constants = configs.path(load.path, found_load.file)
        except UnresolvedError as err:
            report.problems.append(f"{where}: the checkpoint path is not static ({err}); convert it by hand")
            continue
        relative = _relative(path, configs.bundle)
        if not path.is_file():
            report.problems.append(
                f"{where}: {relative} is not in the bundle (large_files.yml may name where to download it). The "
                f"migrated config converts it when it loads it; run migrate again with it in place to convert it now"
            )
            continue
        record = report.checkpoints.get(relative)
        if record is None:
            try:
                network = _build_network(configs, load.network, found_load.file)
                converter = getattr(importlib.import_module("monai_ext.legacy"), load.converter.rsplit(".", 1)[1])
                state = converter(str(path), network, legacy_version=legacy_version, name=relative)
                network.load_state_dict(state)
            except UnresolvedError as err:
                report.problems.append(f"{where}: cannot build @{load.network} without running the bundle ({err})")
                continue
            except (LegacyCheckpointError, TypeError, ValueError, RuntimeError) as err:
                report.problems.append(f"{where}: {relative} was not converted: {err}")
                continue
            target = path.with_name(f"{path.stem}_monai{path.suffix}")
            digest = save_checkpoint(state, target)
            record = ConvertedCheckpoint(
                relative, _relative(target, configs.bundle), type(network).__name__, file_sha256(path), digest
            )
            report.checkpoints[relative] = record
            renamed[path.name] = target.name
        record.loads.append(where)
        naming = [(file, id_) for file, id_, text in constants if text.count(path.name) == 1]
        if len(naming) != 1:
            report.problems.append(
                f"{where}: no single config string names {path.name}; point the load at {record.converted} by hand"
            )
            continue
        file, id_ = naming[0]
        file, id_ = (file, id_) if id_ else (found_load.file, found_load.where)
        new_name = Path(record.converted).name
        previous = configs.replace_text(file, id_, path.name, new_name)
        report.changes.append(Change(file, id_, previous, previous.replace(path.name, new_name)))
    report.changes += _repoint_savers(configs, renamed)
    return report


def _repoint_savers(configs: BundleConfigs, renamed: dict[str, str]) -> list[Change]:
    changes = []
    for file, content in configs.files.items():
        for where, value in list(walk_ids(content, "")):
            target = value.get("_target_") if isinstance(value, dict) else None
            if not (isinstance(target, str) and target.endswith("CheckpointSaver")):
                continue
            for key in ("final_filename", "key_metric_filename"):
                if value.get(key) in renamed:
                    old = value[key]
                    value[key] = renamed[old]
                    changes.append(Change(file, f"{where}#{key}", old, renamed[old]))
    return changes
