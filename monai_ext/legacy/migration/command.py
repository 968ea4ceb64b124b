"""``python -m monai_ext migrate LEGACY_BUNDLE NEW_BUNDLE``: a MONAI Generative Models bundle, moved to MONAI core.

The legacy folder is copied whole, then the copy is changed: configs, weights, scripts and metadata, in that order.
The legacy folder is never written to. Every change and every item left for a person goes into the report, which
is printed and kept as ``docs/migration_report.md`` in the new bundle.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from monai_ext.legacy.migration.configs import BundleConfigs, MigrationError, write_config
from monai_ext.legacy.migration.metadata import migrate_metadata, read_metadata, record_parity
from monai_ext.legacy.migration.scripts import rewrite_scripts
from monai_ext.legacy.migration.versions import decide_legacy_version
from monai_ext.legacy.migration.weights import checkpoint_paths, convert_weights

__all__ = ["migrate"]

REPORT = "docs/migration_report.md"
# MONAI 1.6 networks that neither script nor trace with ckpt_export's single input
UNSCRIPTABLE = ("DiffusionModelUNet", "ControlNet", "SPADEDiffusionModelUNet")


def _copy_bundle(legacy: Path, new: Path) -> None:
    for path in legacy.rglob("*"):
        mode = path.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise MigrationError(f"{path} is a link or special file; a bundle holds only regular files and folders")
    shutil.copytree(legacy, new)


def _report(legacy: Path, new: Path, version, sections: dict[str, list], todo: list[str], parity) -> str:
    lines = [
        f"# Migration of {legacy.name} to MONAI core",
        "",
        f"- legacy bundle: {legacy}",
        f"- migrated bundle: {new}",
        f"- weights from monai-generative {version.version}: {version.rule}",
    ]
    if parity:
        lines.append(
            f"- parity (--verify, {parity['config']}, same noise): largest difference "
            f"{parity['max_abs_difference']:.3g} = {parity['max_relative_difference']:.3g} of the legacy output's "
            "largest value "
            f"({parity['files']} files compared)"
        )
    for title, entries in sections.items():
        lines += ["", f"## {title} ({len(entries)})", ""]
        lines += [f"- {entry}" for entry in entries] or ["- none"]
    lines += ["", f"## Left for a person ({len(todo)})", ""]
    lines += [f"- {item}" for item in todo] or ["- nothing"]
    return "\n".join(lines) + "\n"


def migrate(legacy_bundle: str, new_bundle: str, legacy_version: str | None = None, verify: bool = False) -> str:
    """Move a MONAI Generative Models bundle to MONAI core, with its weights converted and a report of every change.

    The legacy bundle is copied to NEW_BUNDLE and the copy is migrated:

    - configs (JSON and YAML): generative.* classes become MONAI core's, renamed arguments (num_channels ->
      channels, ...) follow, every weight load goes through monai_ext's exact converters, and DDIM/DDPM
      set_timesteps keeps the legacy timesteps. Config ids are kept, so overrides that worked still work (except
      ids of renamed arguments, which the report lists);
    - weights: every checkpoint a config loads is converted for the release that wrote it, written beside the
      original as NAME_monai.pt with its SHA-256, and the configs load it; the original stays as it was;
    - scripts/: generative.* and monai.config.IgniteInfo imports are rewritten; what cannot be rewritten safely is
      listed with file and line;
    - metadata.json: MONAI's current schema and versions, no monai-generative, a changelog entry, and a record of
      the migration (and of --verify's parity).

    Example:

        python -m monai_ext migrate brats_mri_generative_diffusion brats_core --verify

    Args:
        legacy_bundle: the legacy bundle folder; never modified.
        new_bundle: where to write the migrated bundle; must not exist.
        legacy_version: the monai-generative release that wrote the weights (0.1.0 and 0.2.x differ). Without it,
            it is decided from the checkpoints' keys, the configs' arguments and metadata.json, and the report says
            which rule decided.
        verify: run the legacy inference (needs monai-generative installed) and the migrated one on the same noise,
            and print and record the largest difference of their outputs.

    Returns:
        The report: every change as file : key (or line), old -> new, and what is left for a person.
    """
    try:
        return _migrate(Path(str(legacy_bundle)), Path(str(new_bundle)), legacy_version, verify)
    except MigrationError as err:
        raise SystemExit(f"error: {err}") from None


def _migrate(legacy: Path, new: Path, explicit_version: str | None, verify: bool) -> str:
    if not (legacy / "configs").is_dir():
        raise MigrationError(f"{legacy} is not a bundle folder (it has no configs/)")
    if new.exists():
        raise MigrationError(f"{new} exists; name a new folder for the migrated bundle")
    legacy_configs = BundleConfigs(legacy)
    legacy_metadata = read_metadata(legacy)
    found = BundleConfigs(legacy).rewrite(None).loads
    from monai_ext.legacy.checkpoint import LegacyCheckpointError, read_state_dict

    checkpoints = {}
    for relative, path in checkpoint_paths(legacy_configs, found).items():
        try:
            checkpoints[relative] = read_state_dict(path, relative)
        except LegacyCheckpointError as err:
            raise MigrationError(str(err)) from err
    try:
        version = decide_legacy_version(explicit_version, legacy_configs.files, legacy_metadata, checkpoints)
    except ValueError as err:
        raise MigrationError(str(err)) from err

    _copy_bundle(legacy, new)
    configs = BundleConfigs(new)
    rewrite = configs.rewrite(version.version if version.before_0_2 else None)
    weights = convert_weights(configs, rewrite.loads, version.version if version.before_0_2 else None)
    for file, content in configs.files.items():
        write_config(new / file, content)
    scripts = rewrite_scripts(new)
    record = {
        "legacy_version": version.version,
        "legacy_version_rule": version.rule,
        "checkpoints": {
            item.original: {
                "converted": item.converted,
                "sha256_original": item.sha256_original,
                "sha256_converted": item.sha256_converted,
            }
            for item in weights.checkpoints.values()
        },
    }
    metadata_changes, metadata_todo = migrate_metadata(new, legacy_metadata, record)
    todo = rewrite.problems + weights.problems + scripts.problems + metadata_todo
    if configs.class_of("network_def") in UNSCRIPTABLE:
        todo.append(
            f"ckpt_export cannot export network_def ({configs.class_of('network_def')}): MONAI's class does not "
            "compile with torch.jit.script and ckpt_export traces with one input, where it takes timesteps too; "
            "verify_net_in_out works with extra_forward_args"
        )
    if (legacy / "large_files.yml").is_file():
        todo.append("large_files.yml names the legacy checkpoints and their hashes; list the converted files instead")
    converted = [
        f"{item.original} (sha256 {item.sha256_original[:12]}...) -> {item.converted} "
        f"(sha256 {item.sha256_converted[:12]}...), {item.network}, loaded at {'; '.join(item.loads)}"
        for item in weights.checkpoints.values()
    ]
    sections: dict[str, list] = {
        "Configs": [str(c) for c in rewrite.changes],
        "Weights": converted + [str(c) for c in weights.changes],
        "Scripts": [str(c) for c in scripts.changes],
        "Metadata": [str(c) for c in metadata_changes],
    }
    (new / REPORT).parent.mkdir(exist_ok=True)
    (new / REPORT).write_text(_report(legacy, new, version, sections, todo, None))
    parity = None
    if verify and version.before_0_2:
        todo.append(
            f"--verify skipped: the installed monai-generative is 0.2.x, which does not compute what "
            f"{version.version} did"
        )
    elif verify:
        from monai_ext.legacy.migration.verify import verify_inference

        try:
            parity = verify_inference(legacy, new)
        except MigrationError as err:
            raise MigrationError(f"{err} (the migrated bundle is in {new}, its report in {new / REPORT})") from err
        record_parity(new, parity)
    report = _report(legacy, new, version, sections, todo, parity)
    (new / REPORT).write_text(report)
    return report
