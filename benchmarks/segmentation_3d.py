"""3D segmentation on real anatomy at equal wall time: MONAI's UNet beside our networks, one process at a time.

Data: the MNI ICBM152 2009 (symmetric, 1 mm) T1 template with its grey- and white-matter probability maps, as
shipped in nilearn's wheel (``pip install --no-deps nilearn``; only its data files are read). Labels are the argmax of
(background = 1 - GM - WM, GM, WM). The template is left-right symmetric, so a hemisphere split would leak; the split
is axial instead: training patches come from the inferior 55% of the slices, and Dice is measured on the superior
40% (a 5% gap between), a held-out region of different anatomy (cortex and vertex against brainstem, cerebellum and
temporal lobes). One subject is little data: this ranks models on real tissue contrast and shapes, it is no
clinical validation.

Each model trains in its own process with the same pipeline (MONAI transforms, DiceCE, Adam 1e-3, batches of 2
patches of 64^3 sampled around foreground, random flips and intensity scaling), MONAI's ``SupervisedTrainer``
stopped by wall clock, then segments the whole held-out slab with MONAI's ``SlidingWindowInferer``. Reported per
model and budget: iterations, training voxels/s, peak RSS, Dice per class on the held-out slab, inference time.

    pip install --no-deps nilearn==0.14.1
    python benchmarks/segmentation_3d.py                          # UNet and HybridAxialUNet at 300 s and 900 s
    python benchmarks/segmentation_3d.py --models unet,hybrid,medt --budgets 300
    python benchmarks/segmentation_3d.py --models unet --budgets 20   # a quick check
    python benchmarks/segmentation_3d.py --budgets 300 --device cuda  # on a GPU, under bfloat16 autocast
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

TRAIN_FRACTION, TEST_FROM = 0.55, 0.60  # axial split: train below 55% of the slices, test above 60%
CLASSES = ("grey matter", "white matter")


def template_files() -> dict[str, Path]:
    """The T1, GM and WM files of nilearn's installed wheel (nilearn itself is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("needs nilearn's data files: pip install --no-deps nilearn==0.14.1")
    data = Path(spec.origin).parent / "datasets" / "data"
    return {name: data / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")}


def load_task() -> tuple[np.ndarray, np.ndarray]:
    """The T1 scaled to [0, 1] and its labels (0 background, 1 GM, 2 WM), both (197, 233, 189)."""
    files = template_files()
    t1, gm, wm = (nib.load(files[name]).get_fdata(dtype=np.float32) / 255.0 for name in ("t1", "gm", "wm"))
    labels = np.argmax(np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm]), axis=0).astype(np.uint8)
    return t1, labels


def build(model: str, num_classes: int, roi: int) -> torch.nn.Module:
    if model == "unet":  # the configuration labs use, as calibrated in the issue
        from monai.networks.nets import UNet

        return UNet(3, 1, num_classes, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)
    if model == "hybrid":  # medt_segmentation_3d's network: convolutions, gated axial attention at 8^3
        from monai_ext.networks.nets import HybridAxialUNet

        return HybridAxialUNet(3, 1, num_classes, roi)
    if model == "medt":  # medt_segmentation_3d's network until 0.3.0, at a 64^3 ROI
        from monai_ext.networks.nets import MedT

        return MedT(3, 1, num_classes, roi, width=0.125, patch_grid=2, global_layers=(1, 1), local_layers=(1,),
                    stem_channels=16, num_groups=4)  # fmt: skip
    raise SystemExit(f"unknown model {model!r}")


def worker(model_name: str, budget: float, roi: int, threads: int, device: str) -> dict:
    """Train ``model_name`` for ``budget`` seconds, then segment the held-out slab; one process per call.

    On CUDA both training and inference run under autocast (bfloat16), as the bundles' ``amp`` switch does.
    """
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer, SlidingWindowInferer
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t1, labels = load_task()
    split, test_from = int(t1.shape[2] * TRAIN_FRACTION), int(t1.shape[2] * TEST_FROM)
    train = {"image": t1[None, :, :, :split], "label": labels[None, :, :, :split]}
    sampling = Compose([
        RandCropByPosNegLabeld(["image", "label"], "label", (roi,) * 3, pos=2, neg=1, num_samples=2),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ])  # fmt: skip
    iterations_per_epoch = 10_000  # the budget, not an epoch count, ends training
    loader = DataLoader(Dataset([train] * iterations_per_epoch, sampling), batch_size=1, num_workers=0)
    network = build(model_name, len(CLASSES) + 1, roi).to(device)
    amp = torch.device(device).type == "cuda"
    trainer = SupervisedTrainer(
        device=torch.device(device), max_epochs=1, amp=amp, train_data_loader=loader, network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True), inferer=SimpleInferer(),
    )  # fmt: skip
    start = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def stop_at_budget(engine):
        if time.perf_counter() - start >= budget:
            engine.terminate()

    trainer.run()
    if amp:
        torch.cuda.synchronize()
    trained = time.perf_counter() - start
    network.eval()
    image = torch.from_numpy(t1[None, None, :, :, test_from:]).to(device)
    truth = torch.from_numpy(labels[None, None, :, :, test_from:].astype(np.int64))
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=amp):
        logits = SlidingWindowInferer((roi,) * 3, sw_batch_size=2, overlap=0.25)(image, network).float().cpu()
    inference = time.perf_counter() - start
    prediction = torch.nn.functional.one_hot(logits.argmax(1), len(CLASSES) + 1).permute(0, 4, 1, 2, 3)
    target = torch.nn.functional.one_hot(truth[:, 0], len(CLASSES) + 1).permute(0, 4, 1, 2, 3)
    dice = DiceMetric(include_background=False, reduction="none")(prediction, target)[0].tolist()
    iterations = trainer.state.iteration
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if amp else 0.0
    return {
        "model": model_name, "budget_s": budget, "iterations": iterations, "train_s": trained,
        "voxels_per_s": iterations * 2 * roi**3 / trained, "peak_rss_gb": peak_gb, "peak_gpu_gb": peak_gpu_gb,
        "dice": dice, "mean_dice": float(np.mean(dice)), "inference_s": inference, "test_shape": list(image.shape[2:]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="unet,hybrid", help="comma-separated: unet, hybrid, medt")
    parser.add_argument("--budgets", default="300,900", help="comma-separated training wall-clock budgets, seconds")
    parser.add_argument("--roi", type=int, default=64, help="patch and sliding-window size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (then with bfloat16 autocast)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]), args.roi, args.threads, args.device)))
        return
    template_files()  # fail early without the data
    rows = []
    for budget in [float(b) for b in args.budgets.split(",")]:
        for model in args.models.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--worker", model, str(budget), "--roi", str(args.roi),
                 "--threads", str(args.threads), "--device", args.device],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"done: {model} at {budget:.0f} s: {rows[-1]}", file=sys.stderr)
    print(f"MNI ICBM152 2009 T1, GM/WM labels, train z < {TRAIN_FRACTION:.0%}, test z >= {TEST_FROM:.0%}; "
          f"{args.roi}^3 patches, {args.threads} threads, {args.device}")  # fmt: skip
    memory, memory_key = (
        ("peak GPU GB", "peak_gpu_gb") if args.device.startswith("cuda") else ("peak RSS GB", "peak_rss_gb")
    )
    print(f"| model | budget s | iterations | voxels/s | / UNet | {memory} | Dice GM | Dice WM | mean Dice | "
          "inference s | / UNet |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for row in rows:
        unet = next((r for r in rows if r["model"] == "unet" and r["budget_s"] == row["budget_s"]), row)
        print(f"| {row['model']} | {row['budget_s']:.0f} | {row['iterations']} | {row['voxels_per_s'] / 1e6:.2f} M | "
              f"{row['voxels_per_s'] / unet['voxels_per_s']:.2f}x | {row[memory_key]:.2f} | {row['dice'][0]:.3f} | "
              f"{row['dice'][1]:.3f} | {row['mean_dice']:.3f} | {row['inference_s']:.1f} | "
              f"{row['inference_s'] / unet['inference_s']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
