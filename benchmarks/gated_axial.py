"""Gated axial attention and MedT: ours against the straightforward reference, side by side in one process.

Cases (CPU, float32):

- one gated layer, x(2, 16, 64, 64), 8 groups, K=64: eval forward, and train forward+backward;
- MedT at 128 x 128, 3 channels, batch 2: eval forward, and train forward+backward;
- 3D scaling: one GatedAxialAttention pass per axis against MONAI's SABlock (fused attention) on the same
  C=32 token grids, batch 1, eval forward;
- one train step of the 3D MedT on a 1 x 1 x 96^3 patch (time and peak RSS).

Times are medians of interleaved repetitions (ours, reference, ours, ...), so machine load hits both alike; compare
the ratios. Peak memory is measured in a fresh subprocess per case and implementation: the growth of the resident
set during one pass after set-up (peak RSS, reset after set-up, minus the RSS before the pass).

    python benchmarks/gated_axial.py            # full run
    python benchmarks/gated_axial.py --quick    # fewer repetitions and the small 3D grids only
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medt_reference import reference_copy  # noqa: E402

from monai_ext.networks.blocks import GatedAxialAttention  # noqa: E402
from monai_ext.networks.nets import MedT  # noqa: E402

PAIRED_CASES = ("layer_eval", "layer_train", "medt_eval", "medt_train")


def _pass(model: torch.nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    model.train(train)

    def run() -> None:
        if train:
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    return run


def paired_case(name: str) -> dict[str, Callable[[], None]]:
    """``{"ours": pass, "reference": pass}`` for one of ``PAIRED_CASES``; both share the same weights."""
    torch.manual_seed(0)
    if name.startswith("layer"):
        model = GatedAxialAttention(2, 16, 16, spatial_size=64, axis=0, num_groups=8)
        x = torch.randn(2, 16, 64, 64)
    else:
        model = MedT(2, 3, 2, img_size=128)
        x = torch.randn(2, 3, 128, 128)
    train = name.endswith("train")
    return {"ours": _pass(model, x, train), "reference": _pass(reference_copy(model), x, train)}


def scaling_case(impl: str, grid: int, channels: int = 32) -> Callable[[], None]:
    """One eval pass over a ``grid**3`` token grid: axial attention along each axis in turn, or full attention."""
    torch.manual_seed(0)
    if impl == "axial":
        model = torch.nn.Sequential(
            *[GatedAxialAttention(3, channels, channels, grid, axis, num_groups=8) for axis in range(3)]
        ).eval()
        x = torch.randn(1, channels, grid, grid, grid)
    else:
        from monai.networks.blocks import SABlock

        model = SABlock(hidden_size=channels, num_heads=4, use_flash_attention=True).eval()
        x = torch.randn(1, grid**3, channels)

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def medt3d_train_step(size: int = 96) -> Callable[[], None]:
    """One SGD step of a 3D MedT (default widths, 3 x 3 x 3 patch grid) on a 1 x 1 x size^3 patch."""
    torch.manual_seed(0)
    model = MedT(3, 1, 2, img_size=size, patch_grid=3).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(1, 1, size, size, size)
    target = torch.randint(0, 2, (1, size, size, size))

    def run() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimiser.step()

    return run


def build(spec: str) -> Callable[[], None]:
    """A pass from a spec string: ``CASE:ours|reference``, ``scaling:axial|sablock:GRID`` or ``medt3d:SIZE``."""
    kind, _, rest = spec.partition(":")
    if kind in PAIRED_CASES:
        return paired_case(kind)[rest]
    if kind == "scaling":
        impl, grid = rest.split(":")
        return scaling_case(impl, int(grid))
    if kind == "medt3d":
        return medt3d_train_step(int(rest))
    raise ValueError(f"unknown benchmark spec {spec!r}")


def medians(passes: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median milliseconds per pass, with the passes interleaved; one untimed warm-up each."""
    for run in passes.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(spec: str, threads: int) -> dict[str, float]:
    """Run one pass of ``spec`` in this process (call in a fresh one) and return its peak memory in MiB.

    The kernel's resident-set high-water mark is reset after set-up (``/proc/self/clear_refs``), so the growth
    counts only what the pass itself holds at its peak.
    """
    torch.set_num_threads(threads)
    run = build(spec)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_mb("VmRSS")
    run()
    peak = _status_mb("VmHWM")
    return {"peak_growth_mb": max(peak - before, 0.0), "peak_rss_mb": peak}


def memory_in_subprocess(spec: str, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory", spec, "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 3D grids 16^3 and 24^3 only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per case (default 7, quick 3)")
    parser.add_argument("--grids", type=int, nargs="+", default=None, help="3D grid sizes (default 16 24 32)")
    parser.add_argument("--skip-paired", action="store_true", help="skip the ours-vs-reference cases")
    parser.add_argument("--skip-3d", action="store_true", help="skip the 3D scaling table and the 3D MedT step")
    parser.add_argument("--skip-medt3d", action="store_true", help="skip the 3D MedT train step")
    parser.add_argument("--memory", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(measure_memory(args.memory, args.threads)))
        return

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"torch {torch.__version__}, {args.threads} threads, {repeats} repetitions, medians in ms")
    print(f"{'case':<14} {'ours':>10} {'reference':>10} {'ratio':>7} {'ours MiB':>9} {'ref MiB':>9}")
    for case in () if args.skip_paired else PAIRED_CASES:
        timing = medians(paired_case(case), repeats)
        memory = {impl: memory_in_subprocess(f"{case}:{impl}", args.threads) for impl in ("ours", "reference")}
        print(
            f"{case:<14} {timing['ours']:>10.1f} {timing['reference']:>10.1f} "
            f"{timing['ours'] / timing['reference']:>7.2f} {memory['ours']['peak_growth_mb']:>9.0f} "
            f"{memory['reference']['peak_growth_mb']:>9.0f}",
            flush=True,
        )
    if args.skip_3d:
        return

    print("\n3D scaling, C=32, batch 1, eval forward: axial = GatedAxialAttention along D, H and W in turn;")
    print("full = MONAI SABlock(use_flash_attention=True, 4 heads) on the same tokens")
    header = ("grid", "tokens", "axial ms", "full ms", "axial/full", "axial MiB", "full MiB")
    print(f"{header[0]:<6} {header[1]:>7} {header[2]:>9} {header[3]:>9} {header[4]:>10} {header[5]:>10} {header[6]:>9}")
    for grid in args.grids or ((16, 24) if args.quick else (16, 24, 32)):
        passes = {impl: scaling_case(impl, grid) for impl in ("axial", "sablock")}
        timing = medians(passes, max(repeats // 2, 1) if grid == 32 else repeats)
        memory = {impl: memory_in_subprocess(f"scaling:{impl}:{grid}", args.threads) for impl in passes}
        print(
            f"{grid:>2}^3   {grid**3:>7} {timing['axial']:>9.1f} {timing['sablock']:>9.1f} "
            f"{timing['axial'] / timing['sablock']:>10.2f} {memory['axial']['peak_growth_mb']:>10.0f} "
            f"{memory['sablock']['peak_growth_mb']:>9.0f}",
            flush=True,
        )

    if args.skip_medt3d:
        return
    size = 96
    step = medians({"step": medt3d_train_step(size)}, 1 if args.quick else 3)["step"]
    memory = memory_in_subprocess(f"medt3d:{size}", args.threads)
    print(
        f"\n3D MedT train step on 1x1x{size}^3 (patch grid 3x3x3): {step / 1000:.1f} s, "
        f"peak RSS {memory['peak_rss_mb'] / 1024:.2f} GiB"
    )


if __name__ == "__main__":
    main()
