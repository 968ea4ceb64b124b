"""benchmarks/gpu_check.sh is for machines with a GPU: without one it stops before doing anything, so CI never
depends on it. benchmarks/memory_3d.py, which it calls, also runs on a CPU."""

import os
import subprocess
import sys

import pytest
import torch
from bundle_cli import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_check_stops_without_a_gpu_and_writes_nothing_else(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "memory"],
        env=os.environ | {"OUT": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "gpu_check: no CUDA GPU visible to torch" in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu.txt"]


def test_memory_table_runs_on_cpu():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "memory_3d.py"), "--device", "cpu", "--sizes", "16",
         "--models", "hybrid,unet", "--batch", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "ROI" not in line]
    assert [(model.strip(), size.strip()) for model, size, _, _ in rows] == [("hybrid", "16^3"), ("unet", "16^3")]
    assert all(float(seconds) > 0 and float(peak) > 0 for _, _, seconds, peak in rows)
