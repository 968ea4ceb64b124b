"""The Model Zoo's legacy latent diffusion bundle, its hand migration and ``monai_ext migrate``, run side by side.

    python benchmarks/legacy_bundle_migration.py [--latent 16 16 16] [--small] [--steps 50]

Takes the Zoo's brats_mri_generative_diffusion 1.0.9 (tests/data/model_zoo), gives it seeded weights written by
monai-generative 0.2.3 (every tensor perturbed), and runs ``configs/inference.json`` of three bundles, four ways,
through ``python -m monai.bundle run`` on the same noise:

- legacy: the bundle as it is, with monai-generative installed and ``IgniteInfo`` put back into ``monai.config``;
- Zoo by hand: the edits the Zoo made by hand for version 1.1.0 (model-zoo #625: MONAI core classes, ``channels``,
  ``include_fc: false``, ``use_combined_linear: false``, ``load_old_state_dict``), with the migrated scripts;
- Zoo by hand, legacy timesteps: the same with ``monai_ext.legacy.set_legacy_timesteps``, to tell the causes apart;
- monai_ext migrate: ``python -m monai_ext migrate`` on the legacy bundle.

Prints each one's sampling wall time (process start included) and the largest difference of its sample from the
legacy one, absolute and over the legacy sample's largest value. By default the networks are the Zoo's own and the
latent is 16^3 (the Zoo's is 36 x 44 x 28: ``--latent 36 44 28``, about 16 min a bundle on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from legacy_bundles import sample_inference, zoo_bundle  # noqa: E402

# model-zoo #625, configs/inference.json: what the Zoo changed by hand (ids as in 1.0.9)
ZOO_BY_HAND = {
    "autoencoder_def#_target_": "monai.networks.nets.autoencoderkl.AutoencoderKL",
    "autoencoder_def#include_fc": False,
    "network_def#_target_": "monai.networks.nets.diffusion_model_unet.DiffusionModelUNet",
    "network_def#include_fc": False,
    "network_def#use_combined_linear": False,
    "load_autoencoder": "$@autoencoder_def.load_old_state_dict(torch.load(@load_autoencoder_path))",
    "load_diffusion": "$@network_def.load_old_state_dict(torch.load(@load_diffusion_path))",
    "noise_scheduler#_target_": "monai.networks.schedulers.ddim.DDIMScheduler",
}


def _zoo_by_hand(legacy: Path, migrated: Path, folder: Path) -> Path:
    bundle = folder / "zoo_by_hand"
    shutil.copytree(migrated, bundle)
    for name in ("model.pt", "model_autoencoder.pt"):
        (bundle / "models" / name).write_bytes((legacy / "models" / name).read_bytes())
    config = json.loads((legacy / "configs" / "inference.json").read_text())
    for network in ("autoencoder_def", "network_def"):
        config[network]["channels"] = config[network].pop("num_channels")
    config["imports"].append("$import monai_ext")  # only for the row with the legacy timesteps
    for key, value in ZOO_BY_HAND.items():
        node = config
        *parents, last = key.split("#")
        for part in parents:
            node = node[part]
        node[last] = value
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, nargs=3, default=[16, 16, 16], help="latent spatial shape")
    parser.add_argument("--small", action="store_true", help="the tests' reduced networks instead of the Zoo's")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the Zoo's inference uses 50)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="legacy_bundle_migration_") as scratch:
        folder = Path(scratch)
        legacy = zoo_bundle(folder, small=args.small, latent=tuple(args.latent))
        migrated = folder / "migrated"
        done = subprocess.run(
            [sys.executable, "-m", "monai_ext", "migrate", str(legacy), str(migrated)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        by_hand = _zoo_by_hand(legacy, migrated, folder)
        channels = json.loads((legacy / "configs" / "inference.json").read_text())["latent_shape"][0]
        torch.manual_seed(0)
        torch.save(torch.randn(1, channels, *args.latent), folder / "noise.pt")
        rows = []
        monai_spacing = "$@noise_scheduler.set_timesteps(num_inference_steps={})"
        legacy_spacing = "$monai_ext.legacy.set_legacy_timesteps(@noise_scheduler, num_inference_steps={})"
        for index, (name, kind, bundle, timesteps) in enumerate((
            ("legacy (monai-generative 0.2.3)", "legacy", legacy, monai_spacing),
            ("Zoo by hand (1.1.0 edits)", "core", by_hand, monai_spacing),
            ("Zoo by hand, legacy timesteps", "core", by_hand, legacy_spacing),
            ("monai_ext migrate", "core", migrated, legacy_spacing),
        )):  # fmt: skip
            overrides = ("--set_timesteps", timesteps.format(args.steps))
            output = folder / f"sample_{index}"
            sample, seconds = sample_inference(kind, bundle, folder / "noise.pt", output, *overrides)
            rows.append((name, sample, seconds))
    reference = rows[0][1]
    scale = np.abs(reference).max()
    print(f"latent {channels} x {' x '.join(map(str, args.latent))}, {'reduced' if args.small else 'Zoo'} networks, "
          f"{args.steps} DDIM steps, torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| bundle | s | max abs difference from legacy | / legacy max |")
    print("| --- | --- | --- | --- |")
    for name, sample, seconds in rows:
        difference = np.abs(sample - reference).max()
        print(f"| {name} | {seconds:.1f} | {difference:.3g} | {difference / scale:.3g} |")


if __name__ == "__main__":
    main()
