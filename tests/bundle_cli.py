"""Run the repository's bundles through the real ``python -m monai.bundle`` CLI on copies under a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_bundle(name: str, dest: Path) -> Path:
    """Copy ``bundles/NAME`` (configs only) and the shared ``configs/`` to ``dest`` in the repository's layout."""
    shutil.copytree(REPO_ROOT / "bundles" / name / "configs", dest / "bundles" / name / "configs")
    shutil.copytree(REPO_ROOT / "configs", dest / "configs", dirs_exist_ok=True)
    return dest / "bundles" / name


def config_files(bundle: Path, own: Sequence[str], shared: Sequence[str] = ("bundle_common.json",), cwd=None) -> str:
    """The ``--config_file`` list: the bundle's first config, the shared ones, then the bundle's other layers."""
    shared_dir = bundle.parents[1] / "configs"
    files = [bundle / "configs" / own[0], *(shared_dir / s for s in shared), *(bundle / "configs" / o for o in own[1:])]
    if cwd is not None:
        files = [Path(os.path.relpath(f, cwd)) for f in files]
    return repr([str(f) for f in files])


def run_cli(args: Sequence[str], cwd: Path, module: Sequence[str] = ("-m", "monai.bundle"), timeout: int = 600):
    """Run ``python MODULE ARGS`` in ``cwd``; fail with the output's tail when it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, *module, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit {done.returncode}: {args}\nSTDOUT:\n{done.stdout[-4000:]}\nSTDERR:\n{done.stderr[-6000:]}"
        )
    return done
