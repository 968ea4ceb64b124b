"""Which of MONAI's augmentations help the segmentation bundle on data from other sites: one at a time, by measurement.

Each candidate is added alone to the bundle's training augmentation (after the patch crop, so it costs patch voxels,
not volume voxels) and trained through the own-data commands of ``segmentation_own_data.py``: check_data,
fingerprint, ``python -m monai.bundle run`` with ``--dataset_dir`` and ``--train#augmentation`` set to the bundle's list
plus the candidate, then inference, Dice computed from the written segmentation. The baseline is the list without a
candidate, with ``--seeds`` runs so that the spread between seeds shows how large a difference must be to count.
The bundle's list now holds the two candidates this chose (bias field, rotation and scaling); ``--without`` takes
them out again, as they were when it was measured (docs/bundles.md, "Which augmentations, by measurement").

    pip install --no-deps nilearn==0.14.1
    python benchmarks/augmentation_choice.py --without bias,affine        # the measured table, 4 noisy distorted cases
    python benchmarks/augmentation_choice.py --without bias,affine --candidates "" --no-baseline --together bias,affine
    python benchmarks/augmentation_choice.py --candidates gamma,noise --background clean --no-distort
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from segmentation_own_data import BUNDLE, add_dataset_arguments, fresh_dataset, run_model  # noqa: E402

IMAGE = {"keys": "image"}
BOTH = {"keys": "@data_keys"}
CANDIDATES = {
    "gamma": {"_target_": "RandAdjustContrastd", **IMAGE, "prob": 0.3, "gamma": [0.7, 1.5]},
    "bias": {"_target_": "RandBiasFieldd", **IMAGE, "prob": 0.3, "coeff_range": [0.0, 0.3]},
    "scale": {"_target_": "RandScaleIntensityd", **IMAGE, "prob": 0.3, "factors": 0.25},
    "shift": {"_target_": "RandShiftIntensityd", **IMAGE, "prob": 0.3, "offsets": 0.2},
    "noise": {"_target_": "RandGaussianNoised", **IMAGE, "prob": 0.15, "std": 0.1},
    "smooth": {"_target_": "RandGaussianSmoothd", **IMAGE, "prob": 0.2, "sigma_x": [0.5, 1.0],
               "sigma_y": [0.5, 1.0], "sigma_z": [0.5, 1.0]},
    "lowres": {"_target_": "RandSimulateLowResolutiond", **IMAGE, "prob": 0.25, "zoom_range": [0.5, 1.0]},
    "affine": {"_target_": "RandAffined", **BOTH, "prob": 0.2, "rotate_range": [0.26, 0.26, 0.26],
               "scale_range": [0.15, 0.15, 0.15], "mode": "@interp_modes", "padding_mode": "zeros"},
}  # fmt: skip


def bundle_augmentation(without: list[str]) -> list:
    """The bundle's training augmentation less the transforms of the ``without`` candidates."""
    removed = {CANDIDATES[name]["_target_"] for name in without}
    augmentation = json.loads((BUNDLE / "configs" / "train.json").read_text())["train"]["augmentation"]
    return [transform for transform in augmentation if transform["_target_"] not in removed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--seeds", type=int, default=2, help="baseline (and --together) runs: seeds 0, 1, ...")
    parser.add_argument("--together", default="", help="candidates to add all at once, as one more row per seed")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--without", default="", help="candidates to take out of the bundle's list first")
    parser.add_argument("--budget", type=float, default=600.0, help="most training wall time per run, in seconds")
    add_dataset_arguments(parser, "/tmp/monai_ext_augmentation")
    args = parser.parse_args()
    work, data = fresh_dataset(args)
    base = bundle_augmentation([name for name in args.without.split(",") if name])
    runs = [(f"baseline, seed {seed}", base, seed) for seed in range(args.seeds) if args.baseline]
    runs += [(name, [*base, CANDIDATES[name]], 0) for name in args.candidates.split(",") if name]
    together = [name for name in args.together.split(",") if name]
    runs += [(f"{' + '.join(together)}, seed {seed}", [*base, *(CANDIDATES[name] for name in together)], seed)
             for seed in range(args.seeds) if together]  # fmt: skip
    print(f"HybridAxialUNet, the bundle's 10 epochs; {args.cases} cases, {args.background} background, "
          f"distorted: {args.distort}", flush=True)  # fmt: skip
    print("| augmentation | train s | Dice GM | Dice WM | mean |\n| --- | --- | --- | --- | --- |", flush=True)
    for i, (label, augmentation, seed) in enumerate(runs):
        overrides = ("--train#augmentation", json.dumps(augmentation), "--seed", str(seed))
        r = run_model("hybrid", data, work / f"run_{i}", args.budget, None, overrides)
        print(f"| {label} | {r['train_s']} | {r['dice_gm']} | {r['dice_wm']} | {r['mean_dice']} |", flush=True)


if __name__ == "__main__":
    main()
