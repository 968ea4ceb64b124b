"""``migrate --verify``: the legacy bundle's inference and the migrated one, run by MONAI's own runner on one noise.

Each runs in a child process started in its bundle folder, as ``python -m monai.bundle run`` would run it:

- the legacy one with MONAI Generative Models installed and ``IgniteInfo`` put back into ``monai.config``, the one
  change a user makes to run a legacy bundle on MONAI 1.6;
- the migrated one with ``generative`` made unimportable, which shows that it needs no legacy package.

The legacy run draws the noise from the bundle's own ``noise`` id once, seeded, and both runs take that tensor
through an override of ``noise``; each writes into a folder of its own through an override of ``output_dir``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from monai_ext.legacy.migration.configs import BundleConfigs, MigrationError

__all__ = ["verify_inference"]

INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")

# Runs in the child: argv is mode, config file, noise file, output folder.
CHILD = """
import os, sys
import torch
mode, config, noise_path, output_dir = sys.argv[1:]
if mode == "legacy":
    import monai.config, monai.utils
    monai.config.IgniteInfo = monai.utils.IgniteInfo
else:
    sys.modules["generative"] = None
from monai.bundle import ConfigParser, run
parser = ConfigParser()
parser.read_config(config)
if not os.path.exists(noise_path):
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("noise").detach().cpu(), noise_path)
noise = "$torch.load(%r, weights_only=True)" % noise_path
overrides = {"noise": noise + (".to(@device)" if "device" in parser else ""), "output_dir": output_dir}
meta = "configs/metadata.json" if os.path.exists("configs/metadata.json") else None
run(config_file=config, meta_file=meta, **overrides)
"""


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _read(path: Path):
    import nibabel as nib
    import numpy as np

    if path.name.endswith((".nii", ".nii.gz")):
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    raise MigrationError(f"--verify compares NIfTI outputs; the inference wrote {path.name}")


def _run(mode: str, bundle: Path, config: str, noise: Path, output: Path, timeout: float) -> None:
    command = [sys.executable, "-c", CHILD, mode, config, str(noise), str(output)]
    try:
        done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=timeout, env=os.environ)
    except subprocess.TimeoutExpired as err:
        raise MigrationError(f"--verify: the {mode} inference of {bundle} ran past {timeout:.0f} s") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise MigrationError(f"--verify: the {mode} inference of {bundle} failed: {last}")


def verify_inference(legacy: Path, migrated: Path, timeout: float = 1800) -> dict[str, Any]:
    """Run both bundles' inference on the same noise and compare every image they write.

    Args:
        legacy: the legacy bundle folder (run with ``generative`` installed).
        migrated: the migrated bundle folder.
        timeout: seconds each inference may take.

    Returns:
        ``{"config", "files", "max_abs_difference", "max_abs_legacy", "max_relative_difference"}``, the relative
        difference being the largest absolute difference over the legacy output's largest absolute value.

    Raises:
        MigrationError: no inference config, no ``noise`` or ``output_dir`` id, a run failed, or the outputs differ
            in number or shape.
    """
    import numpy as np

    config = next((name for name in INFERENCE_CONFIGS if (legacy / name).is_file()), None)
    if config is None:
        raise MigrationError(f"--verify runs {legacy}/configs/inference.json (or .yaml), and there is none")
    configs = BundleConfigs(legacy)
    missing = [id_ for id_ in ("noise", "output_dir") if id_ not in configs.ids]
    if missing:
        raise MigrationError(f"--verify overrides the ids {missing} of {config}, which does not define them")
    with tempfile.TemporaryDirectory(prefix="monai_ext_verify_") as scratch:
        noise, outputs = Path(scratch) / "noise.pt", {}
        for mode, bundle in (("legacy", legacy), ("migrated", migrated)):
            outputs[mode] = Path(scratch) / mode
            _run(mode, bundle.resolve(), config, noise, outputs[mode], timeout)
        legacy_files, migrated_files = _images(outputs["legacy"]), _images(outputs["migrated"])
        if not legacy_files or len(legacy_files) != len(migrated_files):
            raise MigrationError(
                f"--verify: the legacy inference wrote {len(legacy_files)} files and the migrated one "
                f"{len(migrated_files)} under output_dir"
            )
        largest, reference = 0.0, 0.0
        for legacy_file, migrated_file in zip(legacy_files, migrated_files, strict=True):
            expected, found = _read(legacy_file), _read(migrated_file)
            if expected.shape != found.shape:
                raise MigrationError(f"--verify: {legacy_file.name} is {expected.shape}, migrated {found.shape}")
            largest = max(largest, float(np.abs(expected - found).max()))
            reference = max(reference, float(np.abs(expected).max()))
    return {
        "config": config,
        "files": len(legacy_files),
        "max_abs_difference": largest,
        "max_abs_legacy": reference,
        "max_relative_difference": largest / reference if reference else largest,
    }
