"""Real anatomy through the README's own-data commands: medt_segmentation_3d against MONAI's UNet and DynUNet.

Each model runs exactly as a lab runs the bundle on its own data, and nothing else: a copy of the bundle's
definition, ``python -m monai_ext check_data``, ``python -m monai_ext fingerprint --output configs/fingerprint.json``,
``python -m monai.bundle run --config_file configs/train.json --dataset_dir DATA`` with its default epochs (or
``--epochs N``), stopped with Ctrl-C (SIGINT) if it runs past the wall-clock ``--budget`` (the best model so far is
kept), then ``--config_file configs/inference.json``. UNet and DynUNet are the same commands with ``--network_def``
replaced, so the three share the data pipeline and differ in the network alone. Dice is computed here, from the
written segmentations and the true labels, not by the bundle.

Data: the MNI ICBM152 2009 T1 template (nilearn's wheel: ``pip install --no-deps nilearn==0.14.1``), grey and white
matter from its probability maps, resampled to 2 mm. Training cases come from the inferior 55% of the slices, each
with an intensity distortion of its own, as between scanners and sites (a gamma, a smooth multiplicative bias field,
a scale) and, by default, background noise so that no voxel is exactly zero. The validation case is the superior
40%, undistorted, with a background of exact zeros: another region and another kind of background.

    pip install --no-deps nilearn==0.14.1
    python benchmarks/segmentation_own_data.py                                  # 4 noisy cases, the bundle's 10 epochs
    python benchmarks/segmentation_own_data.py --epochs 8 --budget 120 --seeds 2   # about 100 s, as in docs/bundles.md
    python benchmarks/segmentation_own_data.py --epochs 25 --budget 300            # about 300 s
    python benchmarks/segmentation_own_data.py --epochs 8 --budget 120 --background clean --models hybrid,unet
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from segmentation_3d import load_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "medt_segmentation_3d"
TRAIN_FRACTION, TEST_FROM = 0.55, 0.60
NETWORKS = {
    "hybrid": None,  # the bundle's own network_def
    "unet": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": "@in_channels",
             "out_channels": "@num_classes", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2},
    "dynunet": {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": 3, "in_channels": "@in_channels",
                "out_channels": "@num_classes", "kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2],
                "upsample_kernel_size": [2, 2, 2], "filters": [16, 32, 64, 128], "norm_name": "instance"},
}  # fmt: skip


def _downsampled(t1: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2 mm: T1 averaged over 2^3 blocks, labels by majority over the same blocks."""
    shape = [s // 2 * 2 for s in t1.shape]
    t1 = t1[: shape[0], : shape[1], : shape[2]].reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2)
    one_hot = np.stack([labels[: shape[0], : shape[1], : shape[2]] == c for c in range(3)]).astype(np.float32)
    votes = one_hot.reshape(3, shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).sum((2, 4, 6))
    return t1.mean((1, 3, 5)), votes.argmax(0).astype(np.uint8)


def _distorted(image: np.ndarray, rng: np.random.Generator, background: str, distort: bool) -> np.ndarray:
    head = image > 0.02
    out = image.copy()
    if distort:
        gamma, scale = rng.uniform(0.6, 1.6), rng.uniform(0.5, 2.0)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij"))
        bias = np.exp(
            sum(rng.uniform(-0.4, 0.4) * grid[a] for a in range(3)) + rng.uniform(-0.2, 0.2) * grid[0] * grid[1]
        )
        out = scale * bias * np.clip(out, 0, None) ** gamma
    if background == "noisy":
        out = out + np.abs(rng.normal(0, 0.03 * out[head].mean(), out.shape)) + 1e-4
    else:
        out = np.where(head, out, 0.0)
    return out.astype(np.float32)


def write_dataset(root: Path, cases: int, background: str, distort: bool, seed: int = 0) -> Path:
    """The MSD folder: ``cases`` training volumes and one clean validation (and test) volume."""
    t1, labels = _downsampled(*load_task())
    split, test_from = int(t1.shape[2] * TRAIN_FRACTION), int(t1.shape[2] * TEST_FROM)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(seed)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(cases):
        image = _distorted(t1[:, :, :split], rng, background, distort)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"train_{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels[:, :, :split], affine), root / "labelsTr" / f"train_{i}.nii.gz")
        training.append({"image": f"./imagesTr/train_{i}.nii.gz", "label": f"./labelsTr/train_{i}.nii.gz"})
    clean = np.where(t1[:, :, test_from:] > 0.02, t1[:, :, test_from:], 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(clean, affine), root / "imagesTr" / "val_0.nii.gz")
    nib.save(nib.Nifti1Image(labels[:, :, test_from:], affine), root / "labelsTr" / "val_0.nii.gz")
    description = {
        "name": "MNI152 T1 regions", "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"}, "training": training,
        "validation": [{"image": "./imagesTr/val_0.nii.gz", "label": "./labelsTr/val_0.nii.gz"}],
        "test": ["./imagesTr/val_0.nii.gz"],
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def add_dataset_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The options that choose the dataset (``--cases``, ``--background``, ``--no-distort``) and the work folder."""
    parser.add_argument("--cases", type=int, default=4, help="training cases")
    parser.add_argument("--background", choices=("noisy", "clean"), default="noisy")
    parser.add_argument("--no-distort", dest="distort", action="store_false")
    parser.add_argument("--work", default=work, help="emptied, then holds the data and each run's bundle and logs")


def fresh_dataset(args: argparse.Namespace) -> tuple[Path, Path]:
    """Empty the work folder and write the dataset the arguments choose; return both folders."""
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    return work, write_dataset(work / "data", args.cases, args.background, args.distort)


def _run(command: list[str], cwd: Path, budget: float | None = None) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a shell's background job ignores SIGINT and its children inherit that: give them a terminal's Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the bundle keeps its best model and says how to resume
        output, _ = process.communicate()
    return output, time.perf_counter() - start


def dice(segmentation: Path, label: Path) -> list[float]:
    predicted, truth = np.asarray(nib.load(segmentation).dataobj), np.asarray(nib.load(label).dataobj)
    predicted = predicted.reshape(truth.shape)
    return [float(2 * ((predicted == c) & (truth == c)).sum() / ((predicted == c).sum() + (truth == c).sum()))
            for c in (1, 2)]  # fmt: skip


def run_model(
    name: str, data: Path, work: Path, budget: float, epochs_for: int | None, overrides: tuple[str, ...] = ()
) -> dict:
    """Copy the bundle's definition, run the documented commands with ``overrides`` added to training, score it."""
    bundle = work / name
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    for part in ("configs", "docs", "LICENSE"):
        (shutil.copytree if (BUNDLE / part).is_dir() else shutil.copy)(BUNDLE / part, bundle / part)
    python = [sys.executable, "-m"]
    _run([*python, "monai_ext", "check_data", "--dataset_dir", str(data)], bundle)
    _run([*python, "monai_ext", "fingerprint", str(data), "--output", "configs/fingerprint.json"], bundle)
    network = [] if NETWORKS[name] is None else ["--network_def", json.dumps(NETWORKS[name])]
    epochs = [] if epochs_for is None else ["--train#trainer#max_epochs", str(epochs_for)]
    train = [*python, "monai.bundle", "run", "--config_file", "configs/train.json", "--dataset_dir", str(data),
             *epochs, *network, *overrides]  # fmt: skip
    train_log, seconds = _run(train, bundle, budget)
    (work / f"{name}_train.log").write_text(train_log)
    epochs = train_log.count("iterations, loss")
    infer = [*python, "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data),
             *network]  # fmt: skip
    inference_log, _ = _run(infer, bundle)
    (work / f"{name}_inference.log").write_text(inference_log)
    written = list((bundle / "outputs").glob("val_0*_seg.nii.gz"))
    if not written:  # no epoch finished within the budget, so there is no model to segment with
        return {"model": name, "train_s": round(seconds), "epochs": epochs, "dice_gm": "-", "dice_wm": "-",
                "mean_dice": "no model"}  # fmt: skip
    scores = dice(written[0], data / "labelsTr" / "val_0.nii.gz")
    return {"model": name, "train_s": round(seconds), "epochs": epochs, "dice_gm": round(scores[0], 3),
            "dice_wm": round(scores[1], 3), "mean_dice": round(sum(scores) / 2, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="hybrid,unet,dynunet")
    parser.add_argument("--budget", type=float, default=150.0, help="most training wall time per model, in seconds")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="--train#trainer#max_epochs for every model; default the bundle's own (10)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per model, with --seed 0, 1, ...")
    add_dataset_arguments(parser, "/tmp/monai_ext_own_data")
    args = parser.parse_args()
    work, data = fresh_dataset(args)
    print(f"{args.cases} training cases, {args.background} background, distorted: {args.distort}, "
          f"epochs: {args.epochs or 'the bundle default'}, at most {args.budget:g} s each", flush=True)  # fmt: skip
    print("| model | seed | train s | epochs | Dice GM | Dice WM | mean |\n|" + " --- |" * 7, flush=True)
    for name in args.models.split(","):
        for seed in range(args.seeds):
            r = run_model(name, data, work / f"seed_{seed}", args.budget, args.epochs, ("--seed", str(seed)))
            print(f"| {r['model']} | {seed} | {r['train_s']} | {r['epochs']} | {r['dice_gm']} | {r['dice_wm']} | "
                  f"{r['mean_dice']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
