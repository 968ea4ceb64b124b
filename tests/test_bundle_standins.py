"""medt_segmentation_3d on a stand-in of each Decathlon task, configured by its fingerprint, as a lab would run it.

Per task: ``python -m monai_ext fingerprint`` into the bundle; the Model Zoo's sequence (train one epoch, evaluate,
infer, then ``verify_net_in_out`` and ``ckpt_export`` without the dataset); predictions in each input's space; the
export run without monai_ext; then, for two of them, one epoch of DDP training under ``torchrun`` with two processes.
"""

import json
import re

import pytest
import torch
from bundle_cli import REPO_ROOT, check_prediction, config_files, copy_bundle, run_cli, run_export_without_monai_ext

from monai_ext.bundle import datalist, model_record, standins
from monai_ext.bundle.planning import fingerprint
from monai_ext.sharing.checkpoint import verify_sha256

pytestmark = pytest.mark.slow

NAME = "medt_segmentation_3d"
ONE_EPOCH = {"train#trainer#max_epochs": 1, "val_interval": 1, "iterations_per_epoch": 2}
# DDP under torchrun on the two stand-ins whose patches differ most (small and near-isotropic; anisotropic with two
# channels); the others would repeat it at about 25 s each. tests/test_hybrid_axial_unet.py covers DDP on more shapes.
DDP_TASKS = ("Hippocampus", "Prostate")


@pytest.mark.parametrize("task", list(standins.STANDINS))
def test_fingerprint_then_zoo_sequence_export_and_ddp_on_a_decathlon_standin(task, tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = standins.write_standin(task, tmp_path / task)
    fingerprint_file = bundle / "configs" / "fingerprint.json"
    run_cli(["fingerprint", data, "--output", fingerprint_file], tmp_path, module=("-m", "monai_ext"))
    chosen = json.loads(fingerprint_file.read_text())

    overrides = {**ONE_EPOCH, "dataset_dir": data, "bundle_root": str(bundle)}
    done = run_cli([bundle, json.dumps(overrides)], tmp_path, module=(str(REPO_ROOT / "tests" / "zoo_ci.py"),))
    results = dict(re.findall(r"^STEP ([\w_]+): (.*)$", done.stdout, re.M))
    assert results == {"train": "[]", "evaluate": "[]", "infer": "[]", "verify_net_in_out": "ok", "ckpt_export": "ok"}
    model_file = bundle / "models" / "model.pt"
    recorded = model_record.recorded_configuration(model_file)
    assert recorded.pop("dataset") == f"{task} stand-in"
    assert recorded == fingerprint.model_configuration(chosen)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["num_channels"] == chosen["in_channels"]
    assert meta["outputs"]["pred"]["num_channels"] == chosen["num_classes"]

    for case in datalist.inference_datalist(data):
        name = case["image"].rsplit("/", 1)[1].removesuffix(".nii.gz")
        check_prediction(case["image"], bundle / "outputs" / f"{name}_seg.nii.gz", chosen["num_classes"])
    x = torch.rand(1, chosen["in_channels"], *chosen["roi_size"])
    exported = run_export_without_monai_ext(bundle / "models" / "model.ts", x, tmp_path, b"HybridAxialUNet")
    assert tuple(exported.shape) == (1, chosen["num_classes"], *chosen["roi_size"])

    if task not in DDP_TASKS:
        return
    (bundle / "models").rename(tmp_path / "single_process_models")
    run_cli(
        ["--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "--config_file",
         config_files(bundle, ["train.json", "multi_gpu_train.json"]), "--dataset_dir", data,
         "--train#trainer#max_epochs", "1", "--val_interval", "1", "--batch_size", "1", "--iterations_per_epoch", "2"],
        tmp_path,
        module=("-m", "torch.distributed.run"),
    )  # fmt: skip
    verify_sha256(model_file)
    recorded = model_record.recorded_configuration(model_file)
    assert recorded.pop("dataset") == f"{task} stand-in"
    assert recorded == fingerprint.model_configuration(chosen)
