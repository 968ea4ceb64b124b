"""The safety tools inside a real MONAI bundle run by ``python -m monai.bundle run``.

The bundle below is a template for wiring them into a bundle: the data check builds the datalist, the best model is
saved atomically with its SHA-256, ``ResumableCheckpointer`` is attached in ``run`` (not listed in the trainer's
handlers, which would make the trainer refer to itself), and ``resume`` is the switch.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.sharing.audit import audit_bundle
from monai_ext.sharing.checkpoint import load_checkpoint
from monai_ext.sharing.packaging import pack_bundle, unpack_bundle

TRAIN = {
    "imports": ["$import os", "$import monai_ext"],
    "bundle_root": ".",
    "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
    "dataset_dir": "$os.path.join(@bundle_root, 'dataset')",
    "resume": False,
    "skip_bad": False,
    "num_classes": 2,
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1},
    "network": "$@network_def.to(@device)",
    "loss": {"_target_": "monai.losses.DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.5, "momentum": 0.9},
    "lr_scheduler": {
        "_target_": "torch.optim.lr_scheduler.StepLR",
        "optimizer": "@optimizer",
        "step_size": 1,
        "gamma": 0.5,
    },
    "datalist": "$monai_ext.bundle.data_check.check_dataset_dir(@dataset_dir, skip_bad=@skip_bad)",
    "preprocessing": {
        "_target_": "monai.transforms.Compose",
        "transforms": [
            {"_target_": "monai.transforms.LoadImaged", "keys": ["image", "label"], "image_only": True},
            {"_target_": "monai.transforms.EnsureChannelFirstd", "keys": ["image", "label"]},
        ],
    },
    "train": {
        "dataset": {"_target_": "monai.data.Dataset", "data": "$@datalist[:4]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@train#dataset", "batch_size": 2},
        "handlers": [
            {"_target_": "monai.handlers.LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
            {"_target_": "monai.handlers.ValidationHandler", "validator": "@validate#evaluator", "interval": 1},
        ],
        "trainer": {
            "_target_": "monai.engines.SupervisedTrainer",
            "max_epochs": 3,
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "train_handlers": "@train#handlers",
        },
    },
    "validate": {
        "dataset": {"_target_": "monai.data.Dataset", "data": "$@datalist[4:]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@validate#dataset", "batch_size": 1},
        "postprocessing": {
            "_target_": "monai.transforms.Compose",
            "transforms": [
                {"_target_": "monai.transforms.Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "monai.transforms.AsDiscreted",
                    "keys": ["pred", "label"],
                    "argmax": [True, False],
                    "to_onehot": 2,
                },
            ],
        },  # fmt: skip
        "handlers": [
            {
                "_target_": "monai_ext.sharing.checkpoint.AtomicCheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            }
        ],
        "evaluator": {
            "_target_": "monai.engines.SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": {
                "val_mean_dice": {
                    "_target_": "monai.handlers.MeanDice",
                    "include_background": False,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "val_handlers": "@validate#handlers",
        },
    },
    "checkpointer": {
        "_target_": "monai_ext.bundle.resume.ResumableCheckpointer",
        "save_dir": "@ckpt_dir",
        "resume": "@resume",
        "save_dict": {
            "network": "@network",
            "optimizer": "@optimizer",
            "lr_scheduler": "@lr_scheduler",
            "trainer": "@train#trainer",
            "best_model_saver": "@validate#handlers#0",
            "best_metric": {"_target_": "monai_ext.bundle.resume.BestMetricState", "engine": "@validate#evaluator"},
        },
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)", "$os.makedirs(@ckpt_dir, exist_ok=True)"],
    "run": ["$@checkpointer.attach(@train#trainer)", "$@train#trainer.run()"],
}


def _write_dataset(root):
    rng = np.random.default_rng(0)
    training = []
    for i in range(6):
        label = np.zeros((16, 16, 16), np.uint8)
        centre = rng.integers(5, 11, size=3)
        label[tuple(slice(c - 3, c + 3) for c in centre)] = 1
        image = (label + 0.3 * rng.normal(size=label.shape)).astype(np.float32)
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / folder / f"case{i}.nii.gz")
        training.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "blob"}, "training": training}))


LOGGING_CONF = """[loggers]
keys=root
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=console
[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)
[formatter_plain]
format=%(levelname)s %(message)s
"""


def _bundle(root):
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "logging.conf").write_text(LOGGING_CONF)
    (root / "configs" / "train.json").write_text(json.dumps(TRAIN, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "safe"}))
    (root / "LICENSE").write_text("Apache-2.0\n")
    return root


def _run(bundle, dataset_dir, *overrides):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json",
               "--bundle_root", str(bundle), "--dataset_dir", str(dataset_dir), *overrides]  # fmt: skip
    # torch's thread count changes float results; pin it so the runs compare bitwise.
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _weights(path):
    loaded = load_checkpoint(path)
    return loaded.get("network", loaded)


@pytest.mark.slow
def test_bundle_resumes_and_round_trips_to_identical_results(tmp_path):
    dataset = tmp_path / "dataset"
    _write_dataset(dataset)
    original = _bundle(tmp_path / "original")
    assert [item for item in audit_bundle(original) if item.flags] == []

    # Interrupted after 2 of 3 epochs, then continued with the resume switch.
    _run(original, dataset, "--train#trainer#max_epochs", "2")
    log = _run(original, dataset, "--resume", "True")
    assert "resume: restored" in log and "checkpoint_epoch=2.pt (epoch 2)" in log
    checkpoint = load_checkpoint(original / "models" / "checkpoint_epoch=3.pt")
    assert checkpoint["trainer"]["iteration"] == 3 * 2
    assert checkpoint["lr_scheduler"]["last_epoch"] == 3
    assert checkpoint["best_metric"]["best_metric_epoch"] >= 1

    # The packed and unpacked copy, trained uninterrupted, ends with the same weights and best metric.
    pack_bundle(original, tmp_path / "safe.zip")
    received = tmp_path / "received"
    unpack_bundle(tmp_path / "safe.zip", received)
    assert not (received / "models" / "checkpoint_epoch=3.pt").exists()
    (received / "models").joinpath("model.pt").unlink()  # train afresh, like the receiving lab
    _run(received, dataset)
    theirs = load_checkpoint(received / "models" / "checkpoint_epoch=3.pt")
    assert theirs["best_metric"] == checkpoint["best_metric"]
    for name in ("checkpoint_epoch=3.pt", "model.pt"):
        ours, received_weights = _weights(original / "models" / name), _weights(received / "models" / name)
        assert all(torch.equal(ours[key], received_weights[key]) for key in ours), name


@pytest.mark.slow
def test_bundle_stops_before_training_on_bad_data(tmp_path):
    dataset = tmp_path / "dataset"
    _write_dataset(dataset)
    raw = (dataset / "imagesTr" / "case1.nii.gz").read_bytes()
    (dataset / "imagesTr" / "case1.nii.gz").write_bytes(raw[: len(raw) // 2])
    bundle = _bundle(tmp_path / "b")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json",
               "--bundle_root", str(bundle), "--dataset_dir", str(dataset)]  # fmt: skip
    failed = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert f"{dataset / 'imagesTr' / 'case1.nii.gz'}: image is not a readable NIfTI file" in failed.stderr
    assert not list((bundle / "models").glob("*.pt"))
