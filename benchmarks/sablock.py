"""Forward+backward time and peak memory of MONAI's SABlock (unfused and fused) and monai_ext's SABlock.

Time: the three variants run interleaved in this process (same weights, same input, order rotated every round) and
the table reports medians, so machine noise hits all of them alike. Memory: each variant runs in a fresh subprocess,
after one warm-up step, as the rise of the peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs)
over the resident size just before one more forward+backward step. glibc is told to serve every allocation of
128 KiB or more with mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the process and cannot hide the next step's
peak in cached heap. Throughput is counted as 3x the forward matmul FLOPs (projections and the two attention
products) and compared with a torch.mm peak measured at the start of the run.

    python benchmarks/sablock.py            # the full table (a few minutes)
    python benchmarks/sablock.py --quick    # a smoke run in well under a minute
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from monai.networks.blocks import SABlock as MonaiSABlock

from monai_ext.networks.blocks import SABlock

VARIANTS = ("monai_unfused", "monai_fused", "ours")
LABELS = {"monai_unfused": "MONAI unfused", "monai_fused": "MONAI fused", "ours": "ours"}
MMAP_THRESHOLD = str(128 * 1024)
# run-to-run spread of the memory measurement for the same block (page granularity, allocator bookkeeping)
MEMORY_NOISE_MIB = 1.0


def build(variant: str, hidden: int, heads: int) -> torch.nn.Module:
    """The block under test, with MONAI's default arguments apart from the attention path."""
    if variant == "monai_unfused":
        return MonaiSABlock(hidden, heads)
    if variant == "monai_fused":
        return MonaiSABlock(hidden, heads, use_flash_attention=True)
    return SABlock(hidden, heads)


def step(block: torch.nn.Module, x: torch.Tensor) -> None:
    """One training step's worth of work: forward, backward to the weights and the input."""
    block.zero_grad(set_to_none=True)
    x.grad = None
    block(x).sum().backward()


def model_gflop(batch: int, length: int, hidden: int) -> float:
    """Forward+backward FLOPs as 3x the forward matmuls: qkv and output projections, q @ k^T and attention @ v."""
    forward = 2 * batch * length * hidden * 4 * hidden + 2 * 2 * batch * length * length * hidden
    return 3 * forward / 1e9


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Median float32 torch.mm throughput on size x size matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def time_variants(args: argparse.Namespace, length: int) -> dict[str, float]:
    """Median seconds per forward+backward step of every variant, interleaved in this process."""
    blocks = {variant: build(variant, args.hidden, args.heads).train() for variant in args.variants}
    reference = next(iter(blocks.values())).state_dict()
    for block in blocks.values():
        block.load_state_dict(reference)
    x = torch.randn(args.batch, length, args.hidden, requires_grad=True)
    for block in blocks.values():
        for _ in range(args.warmup):
            step(block, x)
    times: dict[str, list[float]] = {variant: [] for variant in blocks}
    order = list(blocks)
    for round_index in range(args.repeats):
        shift = round_index % len(order)
        for variant in order[shift:] + order[:shift]:
            start = time.perf_counter()
            step(blocks[variant], x)
            times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(values) for variant, values in times.items()}


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_memory_here(args: argparse.Namespace) -> float:
    """Peak RSS rise in MiB of one forward+backward step, in this (fresh) process."""
    block = build(args.memory_variant, args.hidden, args.heads).train()
    x = torch.randn(args.batch, args.memory_length, args.hidden, requires_grad=True)
    step(block, x)
    block.zero_grad(set_to_none=True)
    x.grad = None
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before = _read_status_kib("VmRSS")
    step(block, x)
    return (_read_status_kib("VmHWM") - before) / 1024


def measure_memory(args: argparse.Namespace, variant: str, length: int) -> float:
    """Run :func:`measure_memory_here` in a subprocess so that no variant inherits another's allocations."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-variant",
        variant,
        "--memory-length",
        str(length),
        "--hidden",
        str(args.hidden),
        "--heads",
        str(args.heads),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, OMP_NUM_THREADS=str(args.threads))
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory run of {variant} at N={length} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Targets (MONAI's default arguments): ours <= 0.65x MONAI unfused time at N >= 1024, ours <= 1.05x "
        "MONAI fused time at every N, and ours' peak memory no higher than MONAI fused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[216, 512, 1024, 4096], help="sequence lengths N")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward+backward steps per variant and N")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and N before timing")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size")
    parser.add_argument("--heads", type=int, default=12, help="number of heads")
    parser.add_argument("--batch", type=int, default=2, help="batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (also OMP_NUM_THREADS)")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="blocks to compare (ratios need all)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="smoke run: N in {216, 512}, 3 repeats, 1 warm-up step")
    parser.add_argument("--memory-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--memory-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.warmup = [216, 512], 3, 1
    if min(args.sizes) < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--sizes, --repeats and --threads must be positive and --warmup non-negative")
    return args


def _ratio(results: dict[str, float], numerator: str, denominator: str) -> str:
    if numerator in results and denominator in results:
        return f"{results[numerator] / results[denominator]:.2f}x"
    return "-"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_variant is not None:
        print(json.dumps({"peak_mib": measure_memory_here(args)}))
        return

    import monai

    peak = matmul_peak_gflops()
    print(
        f"SABlock forward+backward, hidden {args.hidden}, {args.heads} heads, batch {args.batch}, float32, "
        f"{args.threads} threads, median of {args.repeats}; torch {torch.__version__}, monai {monai.__version__}; "
        f"torch.mm peak {peak:.0f} GFLOP/s\n"
    )
    header = (
        "| N | "
        + " | ".join(f"{LABELS[v]} ms (GFLOP/s)" for v in args.variants)
        + " | ours / MONAI unfused | ours / MONAI fused |"
    )
    mem_header = "| N | " + " | ".join(f"{LABELS[v]} peak MiB" for v in args.variants) + " | ours / MONAI fused |"
    time_rows, mem_rows, verdicts = [], [], []
    for length in args.sizes:
        seconds = time_variants(args, length)
        gflop = model_gflop(args.batch, length, args.hidden)
        cells = [
            f"{seconds[v] * 1e3:.1f} ({gflop / seconds[v]:.0f}, {100 * gflop / seconds[v] / peak:.0f}%)"
            for v in seconds
        ]
        time_rows.append(
            f"| {length} | "
            + " | ".join(cells)
            + f" | {_ratio(seconds, 'ours', 'monai_unfused')} | {_ratio(seconds, 'ours', 'monai_fused')} |"
        )
        if "ours" in seconds and "monai_unfused" in seconds and length >= 1024:
            verdicts.append(
                ("time vs MONAI unfused <= 0.65x", length, seconds["ours"] / seconds["monai_unfused"] <= 0.65)
            )
        if "ours" in seconds and "monai_fused" in seconds:
            verdicts.append(("time vs MONAI fused <= 1.05x", length, seconds["ours"] / seconds["monai_fused"] <= 1.05))
        if not args.no_memory:
            peaks = {v: measure_memory(args, v, length) for v in args.variants}
            mem_rows.append(
                f"| {length} | "
                + " | ".join(f"{peaks[v]:.1f}" for v in peaks)
                + f" | {_ratio(peaks, 'ours', 'monai_fused')} |"
            )
            if "ours" in peaks and "monai_fused" in peaks:
                verdicts.append(
                    (
                        f"peak memory <= MONAI fused (+{MEMORY_NOISE_MIB:.0f} MiB measurement noise)",
                        length,
                        peaks["ours"] <= peaks["monai_fused"] + MEMORY_NOISE_MIB,
                    )
                )
        print(f"N={length} done", file=sys.stderr, flush=True)

    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(time_rows))
    if mem_rows:
        print()
        print(mem_header)
        print("|" + "---|" * (mem_header.count("|") - 1))
        print("\n".join(mem_rows))
    print()
    for target, length, met in verdicts:
        print(f"- N={length}: {target}: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
