"""Run the repository's bundles through the real ``python -m monai.bundle`` CLI on copies of their folders alone."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_ext.sharing.packaging import INCLUDED_ROOT_FILES
from monai_ext.sharing.sandbox.layout import DEFINITION_FOLDERS

REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_bundle(name: str, dest: Path, bundles_dir: Path = REPO_ROOT / "bundles") -> Path:
    """Copy the definition of ``bundles_dir/NAME`` (configs, docs, scripts, license, readme) to ``dest/NAME``, as a
    lab receives it; return the copy. Whatever runs left beside it (``dataset/``, ``models/``, ``eval/``) stays."""
    source, copy = bundles_dir / name, dest / name
    copy.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_dir() and entry.name in DEFINITION_FOLDERS:
            shutil.copytree(entry, copy / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif entry.is_file() and any(fnmatch.fnmatch(entry.name, pattern) for pattern in INCLUDED_ROOT_FILES):
            shutil.copy2(entry, copy / entry.name)
    return copy


def config_files(bundle: Path, names: Sequence[str], cwd=None) -> str:
    """The ``--config_file`` list of the bundle's ``configs/NAMES``, relative to ``cwd`` when it is given."""
    files = [bundle / "configs" / name for name in names]
    if cwd is not None:
        files = [Path(os.path.relpath(f, cwd)) for f in files]
    return repr([str(f) for f in files])


def run_cli(
    args: Sequence[str],
    cwd: Path,
    module: Sequence[str] = ("-m", "monai.bundle"),
    timeout: int = 600,
    check: bool = True,
):
    """Run ``python MODULE ARGS`` in ``cwd``; with ``check``, fail with the output's tail when it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, *module, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"exit {done.returncode}: {args}\nSTDOUT:\n{done.stdout[-4000:]}\nSTDERR:\n{done.stderr[-6000:]}"
        )
    return done


def tiny_msd(root, with_validation):
    """Two cubes (labels 1, 2) in anisotropic volumes; dataset.json declares three classes.

    With a validation list: 3 training cases and 1 validation case. Without: 6 training cases, which the split turns
    into 4 + 2, so both DDP ranks get a validation case.
    """
    rng = np.random.default_rng(1)
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    cases = []
    for i in range(4 if with_validation else 6):
        label = np.zeros((20, 18, 12), np.uint8)
        label[2 + i : 9 + i, 3:10, 2:7] = 1
        label[11:17, 9 - i : 15 - i, 5:10] = 2
        image = (label * 300.0 + rng.normal(0, 30, label.shape)).astype(np.float32)
        for sub, data in (("imagesTr", image), ("labelsTr", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), root / sub / f"lab_{i}.nii.gz")
        cases.append({"image": f"./imagesTr/lab_{i}.nii.gz", "label": f"./labelsTr/lab_{i}.nii.gz"})
    content = {"labels": {"0": "background", "1": "cube a", "2": "cube b"}, "training": cases[:3]}
    if with_validation:
        content["validation"] = cases[3:]
    else:
        content["training"] = cases
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def train_config(bundle: Path, overrides: dict | None = None):
    """The bundle's train.json, parsed by MONAI's ``ConfigParser``, with ``bundle_root`` and ``overrides`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "train.json")
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    return parser


def trained_network(bundle: Path, overrides: dict | None = None) -> torch.nn.Module:
    """The bundle's ``network_def`` (train.json plus ``overrides``) holding models/model.pt."""
    network = train_config(bundle, overrides).get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return network.eval()


def run_export_without_monai_ext(ts_file: Path, x: torch.Tensor, cwd: Path, metadata_marker: bytes):
    """Load a TorchScript export in a fresh ``python -I`` where monai_ext cannot be imported; return its output on x.

    Also checks that the export carries the bundle's metadata.json, recognised by ``metadata_marker``.
    """
    torch.save(x, cwd / "x.pt")
    script = (
        "import sys, torch\n"
        "sys.modules['monai_ext'] = None\n"
        "try:\n    import monai_ext\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('monai_ext importable')\n"
        "extra = {'metadata.json': ''}\n"
        f"model = torch.jit.load({str(ts_file)!r}, _extra_files=extra)\n"
        f"assert {metadata_marker!r} in extra['metadata.json'], 'metadata missing from the export'\n"
        f"torch.save(model(torch.load({str(cwd / 'x.pt')!r})), {str(cwd / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=cwd, timeout=300)
    return torch.load(cwd / "y.pt")


def run_pt2_and_onnx_without_monai_ext(pt2_file: Path, onnx_file: Path, x: torch.Tensor, cwd: Path):
    """Run a ``torch.export`` program and an ONNX file in a fresh ``python -I`` where monai_ext cannot be imported;
    return each one's outputs on x, as lists of tensors."""
    torch.save(x, cwd / "x.pt")
    script = (
        "import sys, numpy, torch, onnxruntime\n"
        "sys.modules['monai_ext'] = None\n"
        f"x = torch.load({str(cwd / 'x.pt')!r})\n"
        f"program = torch.export.load({str(pt2_file)!r}).module()\n"
        "out = program(x)\n"
        "pt2 = [out] if isinstance(out, torch.Tensor) else list(out)\n"
        f"session = onnxruntime.InferenceSession({str(onnx_file)!r}, providers=['CPUExecutionProvider'])\n"
        "onnx = [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]\n"
        f"torch.save({{'pt2': pt2, 'onnx': onnx}}, {str(cwd / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=cwd, timeout=300)
    return torch.load(cwd / "y.pt")


def check_prediction(source, prediction, num_classes):
    """A segmentation saved in its input's space: same grid and affine, labels below ``num_classes``."""
    image, seg = nib.load(source), nib.load(prediction)
    assert seg.shape == image.shape[:3]
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(num_classes))
