"""bundles/autoencoderkl_3d through the real ``python -m monai.bundle`` CLI, on copies under tmp_path."""

import csv
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import (
    config_files,
    copy_bundle,
    run_cli,
    run_export_without_monai_ext,
    run_pt2_and_onnx_without_monai_ext,
    tiny_msd,
    trained_network,
)

from monai_ext.bundle import datalist, synthetic
from monai_ext.sharing.checkpoint import load_checkpoint, verify_sha256

pytestmark = pytest.mark.slow

NAME = "autoencoderkl_3d"
TINY = ["--roi_size", "[16,16,16]", "--pixdim", "[4.0,4.0,4.0]", "--network_def#channels", "[8,8]"]
# a legacy-style architecture with attention, so the conversion has keys to rename
ATTENTION = ["--network_def#attention_levels", "[False,True]", "--network_def#with_decoder_nonlocal_attn", "True"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle copy trained for one epoch with the adversarial term on, on its default (synthetic) data."""
    root = tmp_path_factory.mktemp("aekl")
    bundle = copy_bundle(NAME, root)
    args = ["--train#trainer#max_epochs", "1", "--val_interval", "1", "--adversarial_weight", "0.1"]
    done = run_cli(["run", "--config_file", config_files(bundle, ["train.json"]), *TINY, *args], root)
    return bundle, done


def test_train_with_the_adversarial_term_logs_and_saves(trained):
    bundle, done = trained
    assert (bundle / "models" / "model.pt").is_file()
    assert re.search(r"discriminator_loss: \d", done.stdout) and re.search(r"val_psnr: \d", done.stdout)
    assert re.search(r"Epoch \[1/1\]: \d+ iterations, loss \d+\.\d{4}", done.stdout), (
        "one line per epoch, with the loss"
    )
    assert "non-scalar" not in done.stderr, "TensorBoard receives the training loss"
    assert len(list((bundle / "eval" / "previews").glob("*_epoch001.png"))) == 1
    assert list((bundle / "eval" / "runs").glob("events.out.tfevents.*"))
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any("discriminator" in key for key in state)
    verify_sha256(bundle / "models" / "model.pt")
    # the resumable training state carries the discriminator and its optimizer besides the shared entries
    resumable = load_checkpoint(bundle / "models" / "checkpoint_epoch=1.pt")
    assert {"discriminator", "discriminator_optimizer", "network", "optimizer", "best_metric"} <= set(resumable)


def test_inference_writes_reconstructions_in_input_space_and_per_case_error(trained):
    bundle, _ = trained
    done = run_cli(["run", "--config_file", config_files(bundle, ["inference.json"]), *TINY], bundle.parent)
    cases = datalist.inference_datalist(bundle / "dataset")
    for case in cases:
        name = case["image"].rsplit("/", 1)[1].removesuffix(".nii.gz")
        image, recon = nib.load(case["image"]), nib.load(bundle / "outputs" / f"{name}_recon.nii.gz")
        assert recon.shape == image.shape
        np.testing.assert_allclose(recon.affine, image.affine, atol=1e-5)
        assert (bundle / "outputs" / f"{name}.png").is_file()
    with open(bundle / "outputs" / "recon_mae_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == [c["image"] for c in cases]
    errors = [float(r["mean"]) for r in rows]
    assert all(0.0 < e < 1.0 for e in errors)
    printed = float(re.search(r"recon_mae: ([0-9.]+)", done.stdout).group(1))
    assert printed == pytest.approx(np.mean(errors), abs=1e-3)


def test_torchscript_export_runs_without_monai_ext_and_matches_eager(trained, tmp_path):
    bundle, _ = trained
    ts_file = tmp_path / "model.ts"
    files = config_files(bundle, ["train.json"])
    run_cli(
        ["ckpt_export", "export_network_def", "--filepath", ts_file, "--ckpt_file", bundle / "models" / "model.pt",
         "--meta_file", bundle / "configs" / "metadata.json", "--config_file", files, *TINY],
        tmp_path,
    )  # fmt: skip
    x = torch.rand(1, 1, 16, 16, 16)
    exported = run_export_without_monai_ext(ts_file, x, tmp_path, b"AutoencoderKL")
    with torch.no_grad():
        expected = trained_network(bundle, {"roi_size": [16, 16, 16], "network_def#channels": [8, 8]})(x)
    assert [tuple(t.shape) for t in exported] == [(1, 1, 16, 16, 16), (1, 3, 8, 8, 8), (1, 3, 8, 8, 8)]
    for got, want in zip(exported, expected, strict=True):  # reconstruction, z_mu, z_sigma
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_export_to_pt2_and_onnx_runs_without_monai_ext_and_matches_eager(trained, tmp_path):
    bundle, _ = trained
    small = ["--roi_size", "[16,16,16]", "--network_def#channels", "[8,8]"]
    run_cli([bundle, "--formats", "pt2,onnx", "--output_dir", tmp_path, *small], tmp_path,
            module=("-m", "monai_ext", "export"))  # fmt: skip
    x = torch.rand(3, 1, 16, 16, 16)
    exported = run_pt2_and_onnx_without_monai_ext(tmp_path / "model.pt2", tmp_path / "model.onnx", x, tmp_path)
    with torch.no_grad():
        expected = trained_network(bundle, {"roi_size": [16, 16, 16], "network_def#channels": [8, 8]})(x)
    for fmt in ("pt2", "onnx"):  # reconstruction, z_mu, z_sigma
        assert [tuple(t.shape) for t in exported[fmt]] == [(3, 1, 16, 16, 16), (3, 3, 8, 8, 8), (3, 3, 8, 8, 8)]
        for got, want in zip(exported[fmt], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_multi_gpu_train_under_torchrun_on_cpu_with_the_adversarial_term(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = tiny_msd(tmp_path / "data", with_validation=False)
    files = config_files(bundle, ["train.json", "multi_gpu_train.json"])
    args = ["--train#trainer#max_epochs", "1", "--val_interval", "1", "--adversarial_weight", "0.1"]
    done = run_cli(
        ["--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "--config_file", files, *TINY, *args,
         "--dataset_dir", data],
        tmp_path,
        module=("-m", "torch.distributed.run"),
    )  # fmt: skip
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [
        "checkpoint_epoch=1.pt",
        "model.pt",
        "sha256_manifest.json",
    ]
    verify_sha256(bundle / "models" / "model.pt")
    trained_network(bundle, {"network_def#channels": [8, 8]})  # strict load: no DDP "module." prefixes
    resumable = load_checkpoint(bundle / "models" / "checkpoint_epoch=1.pt")
    for part in ("network", "discriminator"):
        assert resumable[part] and not any(key.startswith("module.") for key in resumable[part]), part
    assert resumable["trainer"]["max_epochs"] == 1
    writers = {p.name.split(".")[4] for p in (bundle / "eval" / "runs").glob("events.out.tfevents.*")}
    assert len(writers) == 1, "only rank 0 writes TensorBoard events"
    assert done.stdout.count("val_psnr best value") == 1, "only rank 0 logs validation"
    assert done.stdout.count("discriminator_loss:") == 1, "only rank 0 logs the discriminator loss"


def test_legacy_checkpoint_converts_and_runs_through_inference(tmp_path):
    from generative.networks.nets import AutoencoderKL as LegacyAutoencoderKL
    from monai.bundle import ConfigParser

    bundle = copy_bundle(NAME, tmp_path)
    legacy = LegacyAutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        num_res_blocks=1,
        num_channels=(8, 8),
        attention_levels=(False, True),
        latent_channels=3,
        norm_num_groups=8,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=True,
    ).eval()
    (bundle / "models").mkdir()
    torch.save(legacy.state_dict(), bundle / "models" / "legacy_autoencoderkl.pt")
    saved_before = (bundle / "models" / "legacy_autoencoderkl.pt").read_bytes()

    files = config_files(bundle, ["inference.json", "convert_legacy.json"])
    run_cli(["run", "--config_file", files, *TINY, *ATTENTION], tmp_path)
    assert (bundle / "models" / "legacy_autoencoderkl.pt").read_bytes() == saved_before
    verify_sha256(bundle / "models" / "model.pt")  # so that inference's checked loader accepts it

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser.update({"bundle_root": str(bundle), "network_def#channels": [8, 8]})
    parser.update({"network_def#attention_levels": [False, True]})
    parser.update({"network_def#with_decoder_nonlocal_attn": True})
    ours = parser.get_parsed_content("network_def")
    ours.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().reconstruct(x), legacy.reconstruct(x), rtol=1e-4, atol=1e-5)

    # a converted model names no dataset it was trained on: it runs on a dataset given, never on the synthetic default
    refused = run_cli(["run", "--config_file", config_files(bundle, ["inference.json"]), *TINY, *ATTENTION], tmp_path,
                      check=False)  # fmt: skip
    assert refused.stderr.strip().splitlines()[-1].startswith("SyntheticDataRefusedError: ")
    data = synthetic.write_synthetic_msd(tmp_path / "data")
    run_cli(["run", "--config_file", config_files(bundle, ["inference.json"]), *TINY, *ATTENTION, "--dataset_dir",
             data], tmp_path)  # fmt: skip
    expected = len(datalist.inference_datalist(data))
    assert len(list((bundle / "outputs").glob("*_recon.nii.gz"))) == expected
