"""Encode+decode time and peak memory of AutoencoderKL: legacy (MONAI Generative), MONAI core and monai_ext.

Every model runs in its own subprocess, so that its peak resident set size (the child's ru_maxrss) is its own, on
the same weights: a seeded MONAI Generative Models AutoencoderKL, converted for the others with
monai_ext.legacy.convert_autoencoderkl_state_dict. Each child does one warm-up pass of ``decode(encode(x)[0])`` under
``torch.inference_mode()`` on one 1-channel cube, then one timed pass whenever the parent asks. The parent asks the
models in turn (order rotated every round), so machine noise hits all of them alike, and reports medians. Finally it
compares every model's outputs with the legacy model's.

The network is the legacy default with three levels: channels (32, 64, 64), attention at the last two levels
(False, True, True), 2 residual blocks per level, 3 latent channels, 32 norm groups, non-local attention in encoder
and decoder. At 64^3 the second level attends over 32^3 = 32768 positions, where an unfused attention matrix takes
4 GiB.

    python benchmarks/autoencoderkl.py                      # 64^3, the size of the targets (several minutes)
    python benchmarks/autoencoderkl.py --size 32 --repeats 3  # a quick check
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("legacy", "monai", "monai_flash", "ours")
LABELS = {
    "legacy": "legacy (MONAI Generative 0.2.3)",
    "monai": "MONAI core, default",
    "monai_flash": "MONAI core, use_flash_attention=True",
    "ours": "monai_ext, default",
}
ARCHITECTURE = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "num_res_blocks": 2,
    "attention_levels": (False, True, True),
    "latent_channels": 3,
    "norm_num_groups": 32,
    "with_encoder_nonlocal_attn": True,
    "with_decoder_nonlocal_attn": True,
}
CHANNELS = (32, 64, 64)
# ours <= 0.35x legacy time and <= 1.05x MONAI flash time; peak RSS <= 1 GB; outputs within 1e-5 of legacy
TARGETS = {"time_vs_legacy": 0.35, "time_vs_monai_flash": 1.05, "peak_gb": 1.0, "relative_difference": 1e-5}


def build(variant: str) -> torch.nn.Module:
    """The model under test, with default arguments apart from MONAI's attention switch."""
    if variant == "legacy":
        from generative.networks.nets import AutoencoderKL as LegacyAutoencoderKL

        return LegacyAutoencoderKL(num_channels=CHANNELS, **ARCHITECTURE)
    if variant in ("monai", "monai_flash"):
        from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL

        return MonaiAutoencoderKL(channels=CHANNELS, use_flash_attention=variant == "monai_flash", **ARCHITECTURE)
    from monai_ext.networks.nets.autoencoderkl import AutoencoderKL

    return AutoencoderKL(channels=CHANNELS, **ARCHITECTURE)


def run_child(variant: str, workdir: Path) -> None:
    """Serve timed passes of ``variant`` to the parent: one per "run" line on stdin, then outputs and peak RSS."""
    model = build(variant).eval()
    legacy_weights = workdir / "legacy.pt"
    if variant == "legacy":
        model.load_state_dict(torch.load(legacy_weights, weights_only=True))
    else:
        from monai_ext.legacy.autoencoderkl import convert_autoencoderkl_state_dict

        model.load_state_dict(convert_autoencoderkl_state_dict(legacy_weights, model))
    x = torch.load(workdir / "input.pt", weights_only=True)

    def encode_decode() -> tuple[float, dict[str, torch.Tensor]]:
        start = time.perf_counter()
        with torch.inference_mode():
            z_mu, _ = model.encode(x)
            reconstruction = model.decode(z_mu)
        return time.perf_counter() - start, {"z_mu": z_mu, "reconstruction": reconstruction}

    _, outputs = encode_decode()  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        seconds, outputs = encode_decode()
        print(json.dumps({"seconds": seconds}), flush=True)
    torch.save(outputs, workdir / f"{variant}.out.pt")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_gb": peak_kib * 1024 / 1e9}), flush=True)


class Child:
    """One model in its own process, driven line by line so that the timed passes of all models interleave."""

    def __init__(self, variant: str, workdir: Path, threads: int) -> None:
        self.variant = variant
        self.stderr = open(workdir / f"{variant}.stderr", "w+")  # closed in finish()
        command = [sys.executable, os.path.abspath(__file__), "--child", variant, "--workdir", str(workdir)]
        command += ["--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self._expect("ready")

    def _expect(self, prefix: str) -> str:
        line = self.process.stdout.readline()
        if not line.startswith(prefix):
            self.process.kill()
            self.stderr.seek(0)
            raise RuntimeError(f"{self.variant} failed:\n{self.stderr.read()[-4000:]}")
        return line

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return json.loads(self._expect("{"))["seconds"]

    def finish(self) -> float:
        """Stop the child; return its peak resident set size in GB."""
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        peak_gb = json.loads(self._expect("{"))["peak_gb"]
        self.process.wait()
        self.stderr.close()
        return peak_gb


def relative_difference(workdir: Path, variant: str) -> float:
    """Largest abs difference of ``variant``'s z_mu and reconstruction from legacy's, over legacy's largest value."""
    ours = torch.load(workdir / f"{variant}.out.pt", weights_only=True)
    legacy = torch.load(workdir / "legacy.out.pt", weights_only=True)
    return max(((ours[key] - legacy[key]).abs().max() / legacy[key].abs().max()).item() for key in legacy)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Targets at 64^3: ours <= 0.35x legacy time and <= 1.05x MONAI flash time, ours' peak RSS <= 1.0 GB, "
        "and ours' outputs within 1e-5 (relative) of legacy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=64, help="edge of the input cube (a multiple of 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed encode+decode passes per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (also OMP_NUM_THREADS)")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="models to run (legacy is always run)"
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size < 4 or args.size % 4 or args.repeats < 1 or args.threads < 1:
        parser.error("--size must be a positive multiple of 4, --repeats and --threads positive")
    if "legacy" not in args.variants:
        args.variants.insert(0, "legacy")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        run_child(args.child, args.workdir)
        return

    import generative
    import monai

    with tempfile.TemporaryDirectory(prefix="autoencoderkl-benchmark-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        legacy = build("legacy")
        for module in legacy.modules():
            if isinstance(module, torch.nn.GroupNorm):  # random affine norms, so that every layer matters
                torch.nn.init.normal_(module.weight, 1.0, 0.2)
                torch.nn.init.normal_(module.bias, 0.0, 0.2)
        torch.save(legacy.state_dict(), workdir / "legacy.pt")
        torch.save(torch.randn(1, 1, *[args.size] * 3), workdir / "input.pt")
        del legacy

        # start one at a time, so that two warm-up passes never hold their peak memory together
        children = [Child(variant, workdir, args.threads) for variant in args.variants]
        times: dict[str, list[float]] = {child.variant: [] for child in children}
        for round_index in range(args.repeats):
            shift = round_index % len(children)
            for child in children[shift:] + children[:shift]:
                times[child.variant].append(child.run())
        results = {}
        for child in children:
            results[child.variant] = {
                "median": statistics.median(times[child.variant]),
                "peak_gb": child.finish(),
                "difference": relative_difference(workdir, child.variant),
            }

    print(
        f"AutoencoderKL encode+decode, 1x1x{args.size}^3, float32, inference mode, {args.threads} threads, "
        f"median of {args.repeats} interleaved passes (after 1 warm-up), each model in its own process; "
        f"torch {torch.__version__}, monai {monai.__version__}, monai-generative {generative.__version__}\n"
        f"network: channels {CHANNELS}, attention_levels {ARCHITECTURE['attention_levels']}, num_res_blocks "
        f"{ARCHITECTURE['num_res_blocks']}, latent_channels {ARCHITECTURE['latent_channels']}, norm_num_groups "
        f"{ARCHITECTURE['norm_num_groups']}, non-local attention in encoder and decoder\n"
    )
    legacy_time = results["legacy"]["median"]
    flash_time = results.get("monai_flash", {}).get("median")
    print("| model | median s | / legacy | / MONAI flash | peak RSS GB | max rel. difference vs legacy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, result in results.items():
        versus_flash = f"{result['median'] / flash_time:.2f}x" if flash_time else "-"
        print(
            f"| {LABELS[variant]} | {result['median']:.2f} | {result['median'] / legacy_time:.2f}x | {versus_flash} "
            f"| {result['peak_gb']:.2f} | {result['difference']:.1e} |"
        )
    if "ours" in results:
        ours = results["ours"]
        checks = [
            (f"time <= {TARGETS['time_vs_legacy']}x legacy", ours["median"] <= TARGETS["time_vs_legacy"] * legacy_time),
            (f"peak RSS <= {TARGETS['peak_gb']} GB", ours["peak_gb"] <= TARGETS["peak_gb"]),
            (f"outputs within {TARGETS['relative_difference']:.0e} of legacy", ours["difference"] <= 1e-5),
        ]
        if flash_time:
            checks.insert(
                1, ("time <= 1.05x MONAI flash", ours["median"] <= TARGETS["time_vs_monai_flash"] * flash_time)
            )
        print("\nours: " + ", ".join(f"{name}: {'met' if met else 'NOT met'}" for name, met in checks))
        if args.size != 64:
            print("(the targets are defined at --size 64)")


if __name__ == "__main__":
    main()
