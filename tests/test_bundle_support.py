"""Support code of the bundles (monai_ext.bundle): paths, synthetic data, datalists, previews, autoencoder loss."""

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator

from monai_ext.bundle import autoencoder, datalist, previews, standins, synthetic


def _bundle_reporting_its_root(folder, bundle_root):
    (folder / "configs").mkdir(parents=True)
    config = {"imports": ["$import monai_ext"], "bundle_root": bundle_root, "run": ["$print('ROOT', @bundle_root)"]}
    (folder / "configs" / "train.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("how", ["ConfigWorkflow", "monai.bundle.run"])
@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's notice on every config it runs; these are ours
def test_bundle_root_is_found_from_another_cwd_where_monais_dot_convention_is_the_cwd(
    how, tmp_path, monkeypatch, capsys
):
    from monai.bundle import ConfigWorkflow, run

    ours = _bundle_reporting_its_root(tmp_path / "ours", "$monai_ext.bundle.paths.bundle_root()")
    monais = _bundle_reporting_its_root(tmp_path / "monais", ".")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("sys.argv", ["python", "--config_file", "unrelated/configs/x.json"])  # never read
    for bundle in (ours, monais):
        config = os.path.relpath(bundle / "configs" / "train.json")
        if how == "ConfigWorkflow":
            workflow = ConfigWorkflow(config_file=config, workflow_type=None, logging_file=False)
            workflow.initialize()
            workflow.run()
        else:
            run(config_file=config, logging_file=False)
    printed = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("ROOT ")]
    assert printed == [str(ours), "."]  # MONAI's "." is the cwd: its outputs would land in elsewhere/


def test_bundle_root_override_still_wins(tmp_path):
    from monai.bundle import ConfigWorkflow

    bundle = _bundle_reporting_its_root(tmp_path / "b", "$monai_ext.bundle.paths.bundle_root()")
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), workflow_type=None, logging_file=False, bundle_root="/x"
    )
    workflow.initialize()
    assert workflow.parser.get_parsed_content("bundle_root") == "/x"


def test_bundle_root_outside_a_monai_workflow_names_the_key_to_set(tmp_path):
    from monai.bundle import ConfigParser

    bundle = _bundle_reporting_its_root(tmp_path / "b", "$monai_ext.bundle.paths.bundle_root()")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    with pytest.raises(RuntimeError, match="bundle_root") as raised:  # MONAI wraps errors of expressions
        parser.get_parsed_content("bundle_root")
    assert "set 'bundle_root' to the folder that holds configs/" in str(raised.value.__cause__)


def test_synthetic_dataset_is_deterministic_labelled_and_oblique(tmp_path):
    first = synthetic.write_synthetic_msd(tmp_path / "a", num_training=3, num_test=1, seed=3)
    second = synthetic.write_synthetic_msd(tmp_path / "b", num_training=3, num_test=1, seed=3)
    description = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert description["labels"] == synthetic.LABELS
    assert len(description["training"]) == 3 and len(description["test"]) == 1
    assert "validation" not in description
    for case in description["training"]:
        image_a = nib.load(f"{first}/{case['image']}")
        label_a = np.asarray(nib.load(f"{first}/{case['label']}").dataobj)
        np.testing.assert_array_equal(image_a.get_fdata(), nib.load(f"{second}/{case['image']}").get_fdata())
        assert set(np.unique(label_a)) == {0, 1, 2, 3}
        assert image_a.shape == (48, 40, 20)
        np.testing.assert_allclose(nib.affines.voxel_sizes(image_a.affine), synthetic.SPACING)
        assert nib.aff2axcodes(image_a.affine) != ("R", "A", "S")
        direction = image_a.affine[:3, :3] / np.asarray(synthetic.SPACING)
        assert np.abs(direction[:2, :2]).max() < 0.99  # rotated in plane, not just permuted


def test_ensure_synthetic_keeps_an_existing_dataset(tmp_path):
    synthetic.write_synthetic_msd(tmp_path / "d", num_training=2, num_test=0, shape=(8, 8, 8))
    before = (tmp_path / "d" / "dataset.json").read_text()
    assert synthetic.ensure_synthetic_msd(tmp_path / "d") == str(tmp_path / "d")
    assert (tmp_path / "d" / "dataset.json").read_text() == before
    synthetic.ensure_synthetic_msd(tmp_path / "new")
    assert len(json.loads((tmp_path / "new" / "dataset.json").read_text())["training"]) == 10


def _msd(tmp_path, n, validation=None, test=None, labels=None):
    entries = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(n)]
    content = {"labels": labels or {"0": "background", "1": "organ"}, "training": entries[::-1]}
    if validation is not None:
        content["validation"] = validation
    if test is not None:
        content["test"] = test
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    return tmp_path


@pytest.mark.parametrize("task", list(standins.STANDINS))
def test_monais_decathlon_dataset_reads_every_standin(task, tmp_path):
    """MONAI's DecathlonDataset (which the Model Zoo's bundles use) needs every property key of the Decathlon's
    dataset.json; a stand-in holding fewer stopped it with KeyError('key reference ...')."""
    from monai.apps import DecathlonDataset

    number = {"BrainTumour": 1, "Liver": 3, "Hippocampus": 4, "Prostate": 5, "Spleen": 9}[task]
    folder = f"Task{number:02d}_{task}"
    standins.write_standin(task, str(tmp_path / folder), num_training=5)
    dataset = DecathlonDataset(str(tmp_path), task=folder, section="validation", download=False, cache_rate=0.0)
    properties = dataset.get_properties(["reference", "licence", "numTraining"])
    assert properties["numTraining"] == 5 and properties["licence"] == "CC-BY-SA 4.0"
    assert len(dataset) == 1 and dataset.data[0]["image"].endswith(".nii.gz")


def test_split_holds_out_every_fifth_case_from_the_end(tmp_path):
    root = _msd(tmp_path, 10)
    names = [c["image"].rsplit("/", 1)[1] for c in datalist.validation_datalist(root)]
    assert names == ["c4.nii.gz", "c9.nii.gz"]
    training = datalist.training_datalist(root)
    assert len(training) == 8 and all(c["image"].startswith(str(root)) for c in training)
    assert [c["image"].rsplit("/", 1)[1] for c in datalist.validation_datalist(_msd(tmp_path / "two", 2))] == [
        "c1.nii.gz"
    ]


def test_validation_list_wins_over_the_split(tmp_path):
    root = _msd(tmp_path, 4, validation=[{"image": "./imagesTr/v.nii.gz", "label": "./labelsTr/v.nii.gz"}])
    assert [c["image"] for c in datalist.validation_datalist(root)] == [str(root / "imagesTr" / "v.nii.gz")]
    assert len(datalist.training_datalist(root)) == 4


def test_inference_datalist_prefers_test_then_validation_then_image_dir(tmp_path):
    with_test = _msd(tmp_path / "t", 3, test=["./imagesTs/a.nii.gz"])
    assert datalist.inference_datalist(with_test) == [{"image": str(with_test / "imagesTs" / "a.nii.gz")}]
    without = _msd(tmp_path / "v", 5)
    assert datalist.inference_datalist(without) == datalist.validation_datalist(without)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (images / name).write_text("")
    found = datalist.inference_datalist(without, image_dir=images)
    assert [c["image"].rsplit("/", 1)[1] for c in found] == ["a.nii", "b.nii.gz"]


def test_num_classes_from_labels_unless_overridden(tmp_path):
    root = _msd(tmp_path, 2, labels={"0": "bg", "1": "a", "2": "b"})
    assert datalist.num_classes(root) == 3
    assert datalist.num_classes(root, override=5) == 5
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        datalist.num_classes(root, override=1)


def test_datalist_errors_name_the_folder_and_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset.json in .*Decathlon"):
        datalist.training_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="'training' must be a non-empty list of image/label entries"):
        datalist.training_datalist(tmp_path)
    _msd(tmp_path, 1)
    with pytest.raises(ValueError, match="at least 2 training cases"):
        datalist.validation_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="image_dir: .* is not a folder"):
        datalist.image_folder_datalist(tmp_path / "missing")
    with pytest.raises(ValueError, match="image_dir: no .nii"):
        datalist.image_folder_datalist(tmp_path)


def test_slice_preview_writes_a_png_per_case(tmp_path):
    from monai.data import MetaTensor

    label = torch.zeros(1, 12, 10, 8)
    label[0, 2:6, 2:6, 5] = 2
    image = MetaTensor(torch.rand(1, 12, 10, 8), meta={"filename_or_obj": "/data/case_7.nii.gz"})
    prediction = torch.nn.functional.one_hot(label[0].long(), 3).permute(3, 0, 1, 2).float()
    item = {"image": image, "label": label, "pred": prediction}
    assert previews.case_name(item, ("image",)) == "case_7"
    previews.save_slice_preview(item, ("image", "label", "pred"), ("label", "pred"), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="differ in shape"):
        previews.save_slice_preview({"image": image, "label": label[:, :4]}, ("image", "label"), ("label",), "x.png")
    with pytest.raises(ValueError, match="none of the preview keys"):
        previews.save_slice_preview(item, ("recon",), (), "x.png")


def test_slice_preview_legend_names_every_foreground_class_from_dataset_json(tmp_path):
    synthetic.write_synthetic_msd(tmp_path / "data", num_training=2, num_test=0, seed=0)
    names = datalist.class_names(tmp_path / "data")
    assert names == [synthetic.LABELS[str(i)] for i in range(len(synthetic.LABELS))]
    label = torch.zeros(1, 12, 10, 8)
    label[0, 2:6, 2:6, 5] = 1
    item = {"image": torch.rand(1, 12, 10, 8), "label": label}
    drawn = previews.save_slice_preview(item, ("image", "label"), ("label",), tmp_path / "p.png", names)
    assert drawn == names[1:]  # every foreground class, also those absent from this slice
    assert previews.save_slice_preview(item, ("image", "label"), ("label",), tmp_path / "q.png") == ["class 1"]
    assert previews.save_slice_preview(item, ("image",), (), tmp_path / "r.png") == []
    # a network predicting more classes than dataset.json names (num_classes override)
    assert datalist.class_names(tmp_path / "data", count=5)[-1] == "class 4"


def test_kl_divergence_matches_torch_distributions():
    z_mu, z_sigma = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) + 0.1
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(z_mu, z_sigma), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(autoencoder.kl_divergence(z_mu, z_sigma), reference.flatten(1).sum(1).mean())


def test_autoencoder_loss_adds_weighted_terms():
    target, reconstruction = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    z_mu, z_sigma = torch.randn(2, 2, 4, 4, 4), torch.rand(2, 2, 4, 4, 4) + 0.5
    l1 = (reconstruction - target).abs().mean()
    kl = autoencoder.kl_divergence(z_mu, z_sigma)
    loss = autoencoder.AutoencoderKLLoss(kl_weight=0.01)
    torch.testing.assert_close(loss((reconstruction, z_mu, z_sigma), target), l1 + 0.01 * kl)

    discriminator = PatchDiscriminator(spatial_dims=3, num_layers_d=1, channels=4, in_channels=1, out_channels=1)
    adversarial = autoencoder.AutoencoderKLLoss(kl_weight=0.0, adversarial_weight=0.5, discriminator=discriminator)
    logits = discriminator(reconstruction)[-1]
    expected = l1 + 0.5 * PatchAdversarialLoss(criterion="least_squares")(logits, True, for_discriminator=False)
    torch.testing.assert_close(adversarial((reconstruction, z_mu, z_sigma), target), expected)
    assert not any(name.startswith("discriminator") for name, _ in adversarial.named_parameters())

    with pytest.raises(ValueError, match="needs a discriminator"):
        autoencoder.AutoencoderKLLoss(adversarial_weight=1.0)
    with pytest.raises(ValueError, match="reconstruction, z_mu, z_sigma"):
        loss(reconstruction, target)


def test_reconstruction_inferer_calls_reconstruct_of_the_unwrapped_module():
    from monai.inferers import SimpleInferer

    class Twice(torch.nn.Module):
        def reconstruct(self, x):
            return 2 * x

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = Twice()

    x = torch.ones(1, 1, 4, 4, 4)
    inferer = autoencoder.ReconstructionInferer(SimpleInferer())
    torch.testing.assert_close(inferer(x, Wrapper()), 2 * x)
    assert math.isclose(inferer(x, Twice()).sum().item(), 128.0)


def test_decathlon_entries_match_monais_loader_without_importing_torch(tmp_path):
    """MONAI's load_decathlon_datalist imports torch (2-20 s on a loaded machine) for what is a path join; ours gives
    the same entries, for segmentation lists, test lists of plain strings and lists of paths."""
    import subprocess
    import sys

    from monai.data import load_decathlon_datalist

    content = {
        "labels": {"0": "background", "1": "x"},
        "training": [{"image": "imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz", "age": 3},
                     {"image": ["imagesTr/b0.nii.gz", "imagesTr/b1.nii.gz"], "label": "labelsTr/b.nii.gz"}],
        "test": ["imagesTs/c.nii.gz", "../elsewhere/d.nii.gz"],
    }  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    for key, segmentation in (("training", True), ("test", False)):
        ours = datalist.decathlon_entries(content, key, tmp_path, is_segmentation=segmentation)
        assert ours == load_decathlon_datalist(tmp_path / "dataset.json", segmentation, key, base_dir=tmp_path), key
    content["training"][1]["image"] = "imagesTr/b.nii.gz"  # our description check wants one path per image
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    probe = (
        "import sys; from monai_ext.bundle import datalist, data_check; from monai_ext.bundle.planning import "
        f"fingerprint; datalist.training_datalist({str(tmp_path)!r}); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
