"""Peak memory and time of one 3D training step per network and ROI: what fits on a GPU, or on a CPU machine.

Each cell runs in its own process: build the network (as ``segmentation_3d.py`` does), take two warm-up steps and one
timed step (Adam, DiceCE) on a batch of random patches, under bfloat16 autocast on CUDA. Reported: seconds per step
and peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS). A cell that runs out of
memory is reported as such.

    python benchmarks/memory_3d.py --device cuda                           # 96^3 and 128^3, hybrid, MedT, UNet
    python benchmarks/memory_3d.py --device cpu --sizes 32 --models hybrid    # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def worker(model_name: str, size: int, batch: int, device: str) -> dict:
    from monai.losses import DiceCELoss
    from segmentation_3d import CLASSES, build

    cuda = device.startswith("cuda")
    network = build(model_name, len(CLASSES) + 1, size).to(device)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.rand(batch, 1, size, size, size, device=device)
    y = torch.randint(0, len(CLASSES) + 1, (batch, 1, size, size, size), device=device)
    seconds = 0.0
    try:
        for _ in range(3):  # two warm-up steps, the third timed
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.zero_grad()
            with torch.autocast(torch.device(device).type, enabled=cuda):
                loss = loss_function(network(x), y)
            loss.backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    except torch.OutOfMemoryError:
        return {"model": model_name, "size": size, "seconds": None, "peak_gb": None}
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"model": model_name, "size": size, "seconds": seconds, "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="hybrid,medt,unet", help="comma-separated: unet, hybrid, medt")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128], help="cubic ROI sizes")
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    parser.add_argument("--device", default="cuda", help="cuda (bfloat16 autocast) or cpu (float32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch, args.device)))
        return
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    memory = "peak GPU GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    print(f"one training step, batch {args.batch}, {name}\n| model | ROI | s per step | {memory} |\n|---|---|---|---|")
    for size in args.sizes:
        for model in args.models.split(","):
            done = subprocess.run(
                [sys.executable, __file__, "--worker", model, str(size), "--batch", str(args.batch),
                 "--device", args.device, "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if row["seconds"] is None:
                print(f"| {model} | {size}^3 | out of memory | |", flush=True)
            else:
                print(f"| {model} | {size}^3 | {row['seconds']:.3f} | {row['peak_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
