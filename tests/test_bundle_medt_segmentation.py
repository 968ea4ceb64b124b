"""bundles/medt_segmentation_3d through the real ``python -m monai.bundle`` CLI, on copies under tmp_path."""

import csv
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import (
    check_prediction,
    config_files,
    copy_bundle,
    run_cli,
    run_export_without_monai_ext,
    run_pt2_and_onnx_without_monai_ext,
    tiny_msd,
    trained_network,
)

from monai_ext.bundle import datalist
from monai_ext.bundle.synthetic import write_synthetic_msd
from monai_ext.sharing.checkpoint import load_checkpoint, verify_sha256

pytestmark = pytest.mark.slow

NAME = "medt_segmentation_3d"
# 4 mm voxels make the synthetic volumes 18 x 15 x 15, smaller than the 16^3 ROI on two axes
TINY = ["--roi_size", "[16,16,16]", "--pixdim", "[4.0,4.0,4.0]"]
TINY_TRAIN = TINY + ["--train#trainer#max_epochs", "1", "--val_interval", "1", "--num_samples", "1",
                     "--iterations_per_epoch", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle copy trained for one epoch on its default (synthetic) data, run from an unrelated cwd."""
    root = tmp_path_factory.mktemp("medt")
    bundle = copy_bundle(NAME, root)
    elsewhere = root / "elsewhere"
    done = run_cli(
        ["run", "--config_file", config_files(bundle, ["train.json"], cwd=elsewhere), *TINY_TRAIN], elsewhere
    )
    return bundle, done


def test_train_from_another_cwd_fills_default_data_and_writes_model_previews_and_events(trained):
    bundle, done = trained
    assert not any((bundle.parent / "elsewhere").iterdir()), "nothing may be written to the cwd"
    assert (bundle / "dataset" / "dataset.json").is_file()
    validation = datalist.validation_datalist(bundle / "dataset")
    first_case = validation[0]["image"].rsplit("/", 1)[1].removesuffix(".nii.gz")
    assert (bundle / "eval" / "previews" / f"{first_case}_epoch001.png").read_bytes()[:4] == b"\x89PNG"
    assert list((bundle / "eval" / "runs").glob("events.out.tfevents.*"))
    assert re.search(r"val_mean_dice: \d", done.stdout)
    # the output is captured, not a terminal: one line per epoch with the loss instead of a progress bar
    assert re.search(r"Epoch \[1/1\]: \d+ iterations, loss \d+\.\d{4}", done.stdout) and "Iter:" not in done.stdout
    assert "Engine run starting: 1 epoch\n" in done.stdout and "resuming from iteration 0" not in done.stdout
    assert re.search(r"Key metric: val_mean_dice best value: \d\.\d{4} at epoch: 1\n", done.stdout)
    assert (
        "--- input summary of monai.bundle.scripts.run ---\n" in done.stdout
        and "> roi_size: [16, 16, 16]" in done.stdout
    )
    assert f"saved {bundle / 'models' / 'model.pt'}" in done.stdout, "the log says where the best model went"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state["head.conv.bias"].shape[0] == 4  # four labels in the synthetic dataset.json


def test_a_copy_takes_the_bundle_definition_and_leaves_what_runs_wrote(trained, tmp_path):
    # the README's first command trains in bundles/medt_segmentation_3d itself; the tests copy that folder
    bundle, _ = trained
    assert {"dataset", "models", "eval"} <= {p.name for p in bundle.iterdir()}
    copy = copy_bundle(NAME, tmp_path, bundles_dir=bundle.parent)
    assert sorted(p.name for p in copy.iterdir()) == ["LICENSE", "configs", "docs"]
    assert sorted(p.name for p in (copy / "configs").iterdir()) == sorted(
        p.name for p in (bundle / "configs").iterdir()
    )


def test_evaluate_without_a_model_stops_with_one_line(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    evaluate = ["run", "--config_file", config_files(bundle, ["train.json", "evaluate.json"])]
    done = run_cli(evaluate, tmp_path, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"No trained model at {bundle / 'models' / 'model.pt'}. Train one first: python -m monai.bundle run "
        f"--config_file {bundle / 'configs' / 'train.json'} (or pass --model_file PATH)."
    )
    assert "Traceback" not in done.stderr


def test_evaluate_writes_per_case_dice_and_prints_the_mean(trained):
    bundle, _ = trained
    done = run_cli(
        ["run", "--config_file", config_files(bundle, ["train.json", "evaluate.json"]), *TINY], bundle.parent
    )
    with open(bundle / "eval" / "val_mean_dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == [c["image"] for c in datalist.validation_datalist(bundle / "dataset")]
    per_case = [float(r["mean"]) for r in rows]
    assert all(0.0 <= d <= 1.0 for d in per_case)
    printed = float(re.search(r"Evaluation of 2 cases -- val_mean_dice: ([0-9.]+)", done.stdout).group(1))
    assert "best" not in (done.stdout + done.stderr).lower(), "one evaluation pass has no best metric to report"
    assert printed == pytest.approx(np.mean(per_case), abs=1e-3)


def test_inference_segments_the_test_list_in_the_input_space(trained):
    bundle, _ = trained
    run_cli(["run", "--config_file", config_files(bundle, ["inference.json"]), *TINY], bundle.parent)
    for case in datalist.inference_datalist(bundle / "dataset"):
        name = case["image"].rsplit("/", 1)[1].removesuffix(".nii.gz")
        check_prediction(case["image"], bundle / "outputs" / f"{name}_seg.nii.gz", 4)
        assert (bundle / "outputs" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_inference_on_any_folder_with_a_small_oblique_anisotropic_image(trained, tmp_path):
    bundle, _ = trained
    angle = np.deg2rad(30.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    ) @ np.diag([0.9, 3.5, 2.2])
    images = tmp_path / "my images"
    images.mkdir()
    volume = np.random.default_rng(0).normal(100, 20, (10, 9, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), images / "tiny_case.nii.gz")
    out = tmp_path / "predictions"
    run_cli(
        [
            "run",
            "--config_file",
            config_files(bundle, ["inference.json"]),
            *TINY,
            "--image_dir",
            images,
            "--output_dir",
            out,
        ],
        tmp_path,
    )
    check_prediction(images / "tiny_case.nii.gz", out / "tiny_case_seg.nii.gz", 4)
    assert (out / "tiny_case.png").is_file()


def test_torchscript_export_runs_without_monai_ext_and_matches_eager(trained, tmp_path):
    bundle, _ = trained
    ts_file = tmp_path / "model.ts"
    run_cli(
        [
            "ckpt_export",
            "network_def",
            "--filepath",
            ts_file,
            "--ckpt_file",
            bundle / "models" / "model.pt",
            "--meta_file",
            bundle / "configs" / "metadata.json",
            "--config_file",
            config_files(bundle, ["inference.json"]),
        ],
        tmp_path,
    )  # no --roi_size: the network is built from the configuration the model recorded
    x = torch.rand(1, 1, 16, 16, 16)
    exported = run_export_without_monai_ext(ts_file, x, tmp_path, b"HybridAxialUNet")
    with torch.no_grad():
        expected = trained_network(bundle, {"roi_size": [16, 16, 16]})(x)
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-5)


def test_export_to_pt2_and_onnx_runs_without_monai_ext_and_matches_eager(trained, tmp_path):
    bundle, _ = trained
    done = run_cli(
        [bundle, "--formats", "pt2,onnx", "--output_dir", tmp_path], tmp_path, module=("-m", "monai_ext", "export")
    )
    assert "HybridAxialUNet with input (batch, 1, 16, 16, 16)" in done.stdout
    x = torch.rand(3, 1, 16, 16, 16)  # a batch size the export was not traced with
    exported = run_pt2_and_onnx_without_monai_ext(tmp_path / "model.pt2", tmp_path / "model.onnx", x, tmp_path)
    with torch.no_grad():
        expected = trained_network(bundle, {"roi_size": [16, 16, 16]})(x)
    for fmt in ("pt2", "onnx"):
        [got] = exported[fmt]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_verify_net_in_out(trained):
    bundle, _ = trained
    done = run_cli(
        [
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            bundle / "configs" / "metadata.json",
            "--config_file",
            config_files(bundle, ["train.json"]),
            "--device",
            "cpu",
        ],
        bundle.parent,
    )
    assert "data shape of network is verified with no error" in done.stdout + done.stderr


def test_own_data_with_a_validation_list_sets_classes_from_labels(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = tiny_msd(tmp_path / "my data", with_validation=True)
    common = [*TINY, "--dataset_dir", data]
    run_cli(["run", "--config_file", config_files(bundle, ["train.json"]), *TINY_TRAIN[4:], *common], tmp_path)
    assert torch.load(bundle / "models" / "model.pt", weights_only=True)["head.conv.bias"].shape[0] == 3
    run_cli(["run", "--config_file", config_files(bundle, ["train.json", "evaluate.json"]), *common], tmp_path)
    with open(bundle / "eval" / "val_mean_dice_raw.csv") as f:
        assert [r["filename"] for r in csv.DictReader(f)] == [str(data / "imagesTr" / "lab_3.nii.gz")]
    assert not (bundle / "dataset").exists(), "the synthetic default must not be written when dataset_dir is set"

    # without --dataset_dir, a model trained on other data never meets the built-in synthetic data, in any command
    model_file, fingerprint_file = bundle / "models" / "model.pt", bundle / "configs" / "fingerprint.json"
    for configs in (["inference.json"], ["train.json", "evaluate.json"], ["train.json"]):
        refused = run_cli(["run", "--config_file", config_files(bundle, configs), *TINY], tmp_path, check=False)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
            f"SyntheticDataRefusedError: {model_file} was trained on my data, and no --dataset_dir was given: pass "
            "--dataset_dir DIR (an MSD folder) or, to segment any folder of images, --image_dir DIR. The built-in "
            "synthetic data only serves a bundle without such a model."
        ), configs
    run_cli(["export", bundle, "--formats", "ts"], tmp_path, module=("-m", "monai_ext"))
    assert not (bundle / "dataset").exists(), "export and inference never write the synthetic data"

    # the model alone: inference on the bundle's (4-class) synthetic data uses the 3 classes the model was trained with
    synthetic = write_synthetic_msd(tmp_path / "synthetic")
    done = run_cli(["run", "--config_file", config_files(bundle, ["inference.json"]), "--dataset_dir", synthetic],
                   tmp_path)  # fmt: skip
    assert (
        f"num_classes: {model_file} was trained with 3 (recorded in {bundle / 'models' / 'sha256_manifest.json'}), "
        f"{fingerprint_file} gives 4 for {synthetic}; the model's value is used"
    ) in done.stdout + done.stderr
    for case in datalist.inference_datalist(synthetic):
        name = case["image"].rsplit("/", 1)[1].removesuffix(".nii.gz")
        check_prediction(case["image"], bundle / "outputs" / f"{name}_seg.nii.gz", 3)
    refused = run_cli(
        [
            "run",
            "--config_file",
            config_files(bundle, ["inference.json"]),
            "--num_classes",
            "5",
            "--dataset_dir",
            synthetic,
        ],
        tmp_path,
        check=False,  # fmt: skip
    )
    assert refused.returncode != 0
    assert f"{model_file} was trained with num_classes=3, in_channels=1, roi_size=[16, 16, 16]" in refused.stderr
    assert "The model's recorded values win" in refused.stderr


def test_multi_gpu_train_under_torchrun_on_cpu_with_a_class_override(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = tiny_msd(tmp_path / "data", with_validation=False)
    files = config_files(bundle, ["train.json", "multi_gpu_train.json"])
    done = run_cli(
        [
            "--standalone",  # a free rendezvous port: two runs in a row never wait for the same one
            "--nproc_per_node",
            "2",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            files,
            *TINY_TRAIN,
            "--dataset_dir",
            data,
            "--num_classes",
            "5",
        ],
        tmp_path,
        module=("-m", "torch.distributed.run"),
    )
    assert torch.load(bundle / "models" / "model.pt", weights_only=True)["head.conv.bias"].shape[0] == 5
    writers = {p.name.split(".")[4] for p in (bundle / "eval" / "runs").glob("events.out.tfevents.*")}
    assert len(writers) == 1, "only rank 0 writes TensorBoard events"
    assert done.stdout.count("val_mean_dice best value") == 1, "only rank 0 logs validation"
    # one writer: the best model and the resumable state, each recorded once, no temporary leftovers
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [
        "checkpoint_epoch=1.pt",
        "model.pt",
        "sha256_manifest.json",
    ]
    verify_sha256(bundle / "models" / "model.pt")
    assert load_checkpoint(bundle / "models" / "checkpoint_epoch=1.pt")["trainer"]["max_epochs"] == 1


def test_an_epoch_is_the_same_number_of_iterations_on_any_number_of_cases(tmp_path):
    """An epoch used to be one pass over the cases: 2 iterations on 4 cases, 8 on 16. Now max_epochs means the same
    training on any dataset, the fingerprint's iterations per epoch (3 here), with patches drawn again and again."""
    seen = {}
    for cases in (5, 20):  # 4 and 16 training cases after the split
        bundle = copy_bundle(NAME, tmp_path / str(cases))
        data = write_synthetic_msd(tmp_path / f"data{cases}", num_training=cases, num_test=0)
        done = run_cli(["run", "--config_file", config_files(bundle, ["train.json"]), *TINY, "--dataset_dir", data,
                        "--train#trainer#max_epochs", "2", "--val_interval", "2", "--iterations_per_epoch", "3"],
                       tmp_path)  # fmt: skip
        seen[cases] = re.findall(r"Epoch \[(\d)/2\]: (\d+) iterations", done.stdout + done.stderr)
        trainer = load_checkpoint(bundle / "models" / "checkpoint_epoch=2.pt")["trainer"]
        assert (trainer["iteration"], trainer["epoch_length"]) == (6, 3)
    assert seen == {5: [("1", "3"), ("2", "3")], 20: [("1", "3"), ("2", "3")]}
